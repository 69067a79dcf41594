"""SSD's box-aware augmentation and the final resize/normalise, as ops on example dicts.

Each op is built by a factory from config values and maps an example dict to an example dict,
updating image and boxes together; all randomness is stateless, drawn from ``example["seed"]``
(int64 [2], derived upstream from (seed, example index, epoch)) folded with a per-op constant, so
an op gives the same result eagerly and inside tf.data, and a resumed run sees the same stream.

The reference order (Caffe ``ssd_pascal.py``, ssd.pytorch) is: photometric distortion, zoom-out,
sampled patch, flip, resize. Here the geometric ops are lazy: they move a ``window`` (xyxy, in
units of the original image; x_min > x_max means mirrored) and the boxes, and ``resize`` samples the
window from the original image in one pass (bilinear, or in training one of Caffe's interpolation
methods drawn at random), filling what lies outside the image with the mean pixel. The zoomed-out canvas (up to 4x4 the image) is never built. Photometric distortion is
per pixel, so it commutes with cropping, flipping and placing; it runs after ``resize`` on S x S
pixels, leaving the mean-filled border undistorted as in the reference, where the fill comes later.
"""

from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
import tensorflow as tf

Example = dict[str, tf.Tensor]
Op = Callable[[Example], Example]

# Per-op constants folded into the example seed, so ops draw independent numbers.
_EXPAND, _PATCH, _FLIP, _PHOTOMETRIC, _RESIZE = 1, 2, 3, 4, 5
_UNIT_WINDOW = (0.0, 0.0, 1.0, 1.0)


def _seed(example: Example, op: int) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(example["seed"], op)


def _window(example: Example) -> tf.Tensor:
  return example.get("window", tf.constant(_UNIT_WINDOW))


def _compose(window: tf.Tensor, view: tf.Tensor) -> tf.Tensor:
  """The sub-rectangle ``view`` [4] of ``window`` [4] (view in window units) in window's units."""
  low, extent = window[:2], window[2:] - window[:2]
  return tf.concat([low + view[:2] * extent, low + view[2:] * extent], axis=0)


def _into_view(boxes: tf.Tensor, view: tf.Tensor) -> tf.Tensor:
  """[N, 4] xyxy boxes in the current image's units -> units of its sub-rectangle ``view`` [4]."""
  low, extent = tf.tile(view[:2], [2]), tf.tile(view[2:] - view[:2], [2])
  return (boxes - low) / extent


def expand(prob: float, max_ratio: float) -> Op:
  """Zoom out with probability ``prob``: the image goes to a random place on a mean-filled canvas
  ``ratio`` times its size, ratio uniform in [1, max_ratio] (the fill is drawn by ``resize``)."""

  def op(example: Example) -> Example:
    u = tf.random.stateless_uniform([4], _seed(example, _EXPAND))
    ratio = tf.where(u[0] < prob, 1.0 + u[1] * (max_ratio - 1.0), 1.0)
    offset = u[2:] * (ratio - 1.0)  # the image's top-left corner on the canvas, in image units
    view = tf.concat([-offset, ratio - offset], axis=0)
    return {**example, "window": _compose(_window(example), view),
            "boxes": _into_view(example["boxes"], view)}

  return op


def _iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
  """Pairwise IoU of [K, 4] and [N, 4] xyxy boxes -> [K, N]."""
  low = tf.maximum(a[:, None, :2], b[None, :, :2])
  high = tf.minimum(a[:, None, 2:], b[None, :, 2:])
  overlap = tf.reduce_prod(tf.maximum(high - low, 0.0), axis=-1)
  area_a = tf.reduce_prod(a[:, 2:] - a[:, :2], axis=-1)
  area_b = tf.reduce_prod(b[:, 2:] - b[:, :2], axis=-1)
  return overlap / tf.maximum(area_a[:, None] + area_b[None, :] - overlap, 1e-12)


def _centres_inside(boxes: tf.Tensor, patches: tf.Tensor) -> tf.Tensor:
  """[K, N] bool: whether the centre of each of [N, 4] boxes lies strictly inside each of [K, 4]."""
  centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2]
  return tf.reduce_all((centres[None] > patches[:, None, :2]) &
                       (centres[None] < patches[:, None, 2:]), axis=-1)


def sample_patch_box(boxes: tf.Tensor, seed: tf.Tensor, whole_image: bool,
                     min_ious: Sequence[float], scale_range: Sequence[float],
                     aspect_range: Sequence[float], max_trials: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Caffe's batch sampler: [N, 4] xyxy boxes -> (patch [4] xyxy, sampler index; -1 = whole image).

  Sampler k tries up to ``max_trials`` patches of scale s uniform in ``scale_range`` and aspect
  ratio a uniform in ``aspect_range``, then clamped to [s^2, 1 / s^2] so that the patch fits
  (Caffe's SampleBBox: the clamped ends are drawn more often than the rest), of width s * sqrt(a)
  and height s / sqrt(a), and keeps the
  first whose IoU with some box is >= ``min_ious[k]`` (0 = unconstrained) and that holds at least
  one box centre (as ssd.pytorch; Caffe may return a patch without objects). One of the samplers
  that found a patch, and the whole image if ``whole_image``, is chosen uniformly; when none
  did, the whole image.
  """
  k, t = len(min_ious), max_trials
  u = tf.random.stateless_uniform([4, k, t], seed)
  scale = scale_range[0] + u[0] * (scale_range[1] - scale_range[0])
  aspect = tf.clip_by_value(_between(u[1], aspect_range), scale ** 2, 1 / scale ** 2)
  width = tf.minimum(scale * tf.sqrt(aspect), 1.0)
  height = tf.minimum(scale / tf.sqrt(aspect), 1.0)
  x0, y0 = u[2] * (1 - width), u[3] * (1 - height)
  patches = tf.stack([x0, y0, x0 + width, y0 + height], axis=-1)  # [K, T, 4]
  flat = tf.reshape(patches, [k * t, 4])
  best_iou = tf.reduce_max(_iou(flat, boxes), axis=1)  # [K * T]; -inf without boxes
  has_centre = tf.reduce_any(_centres_inside(boxes, flat), axis=1)
  ok = tf.reshape((best_iou >= tf.repeat(tf.constant(min_ious, tf.float32), t)) & has_centre,
                  [k, t])
  first = tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)  # [K]
  candidates = tf.concat([tf.constant([_UNIT_WINDOW]),
                          tf.gather(patches, first, axis=1, batch_dims=1)], axis=0)
  found = tf.concat([[whole_image], tf.reduce_any(ok, axis=1)], axis=0)  # [K + 1]
  found = tf.where(tf.reduce_any(found), found, tf.range(k + 1) == 0)
  pick = tf.random.stateless_uniform([k + 1], tf.random.experimental.stateless_fold_in(seed, 1))
  choice = tf.argmax(tf.where(found, pick, -1.0), output_type=tf.int32)
  return candidates[choice], choice - 1


def sample_patch(whole_image: bool, min_ious: Sequence[float], scale_range: Sequence[float],
                 aspect_range: Sequence[float], max_trials: int) -> Op:
  """Crops to a patch from ``sample_patch_box``; keeps the boxes whose centre lies inside it,
  clipped to it (with their labels and difficult flags)."""

  def op(example: Example) -> Example:
    boxes = example["boxes"]
    patch, _ = sample_patch_box(boxes, _seed(example, _PATCH), whole_image, min_ious,
                                scale_range, aspect_range, max_trials)
    keep = _centres_inside(boxes, patch[None])[0]
    kept = tf.boolean_mask(boxes, keep)
    clipped = tf.concat([tf.maximum(kept[:, :2], patch[:2]), tf.minimum(kept[:, 2:], patch[2:])], 1)
    return {**example, "window": _compose(_window(example), patch),
            "boxes": tf.clip_by_value(_into_view(clipped, patch), 0.0, 1.0),
            "labels": tf.boolean_mask(example["labels"], keep),
            "difficult": tf.boolean_mask(example["difficult"], keep)}

  return op


def horizontal_flip(prob: float) -> Op:
  """Mirrors image (through the window) and boxes left-right with probability ``prob``."""

  def op(example: Example) -> Example:
    flip = tf.random.stateless_uniform([], _seed(example, _FLIP)) < prob
    boxes, window = example["boxes"], _window(example)
    mirrored = tf.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], axis=1)
    return {**example, "boxes": tf.where(flip, mirrored, boxes),
            "window": tf.where(flip, tf.gather(window, [2, 1, 0, 3]), window)}

  return op


# Resize methods of tf.image.resize -> how the window is sampled: crop_and_resize (bilinear,
# nearest) or scale_and_translate with its kernel and antialiasing (tf.image.resize's own route for
# these kernels). Only "area" filters (a box over the source pixels); like OpenCV's resize in Caffe,
# the others do not antialias when shrinking.
_CROP_AND_RESIZE = ("bilinear", "nearest")
_SCALE_AND_TRANSLATE = {"area": ("box", True), "bicubic": ("keyscubic", False),
                        "lanczos3": ("lanczos3", False), "lanczos5": ("lanczos5", False)}
RESIZE_METHODS = _CROP_AND_RESIZE + tuple(_SCALE_AND_TRANSLATE)  # config.augment.resize_methods


def _crop_and_resize(image: tf.Tensor, window: tf.Tensor, size: int,
                     method: str) -> tuple[tf.Tensor, tf.Tensor]:
  """Samples ``window`` of float [H, W, 3] -> (pixels [size, size, 3], outside: 1 off the image).

  Output pixel j lies at (j + 0.5) / size across the window, and the image is sampled in
  crop_and_resize's convention (pixel i's centre at i / (H - 1)), within half an original pixel of
  the half-pixel one.
  """
  margin = 0.5 / size
  low = window[:2] + margin * (window[2:] - window[:2])  # centres of the first and last pixels
  high = window[2:] - margin * (window[2:] - window[:2])
  # Pixels are >= 0, so the -1 that crop_and_resize puts outside the image marks the fill exactly.
  sampled = tf.image.crop_and_resize(
      image[None], tf.stack([[low[1], low[0], high[1], high[0]]]), [0], [size, size],
      method=method, extrapolation_value=-1.0)[0]
  return tf.maximum(sampled, 0.0), tf.cast(sampled < 0, tf.float32)


def _scale_and_translate(image: tf.Tensor, window: tf.Tensor, size: int, kernel: str,
                         antialias: bool) -> tuple[tf.Tensor, tf.Tensor]:
  """Like ``_crop_and_resize`` with a scale_and_translate kernel, in the half-pixel convention
  (output pixel j samples the image at (j + 0.5) / size across the window). Overshooting kernels
  are clipped to 0..255, as OpenCV saturates 8-bit pixels."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)  # (H, W)
  mirrored = window[2] < window[0]
  low = tf.stack([window[1], tf.minimum(window[0], window[2])])  # (y, x) in image units
  extent = tf.stack([window[3] - window[1], tf.abs(window[2] - window[0])])
  scale = size / (extent * shape)
  sampled = tf.raw_ops.ScaleAndTranslate(
      images=image[None], size=[size, size], scale=scale, translation=-low * shape * scale,
      kernel_type=kernel, antialias=antialias)[0]
  centres = (tf.range(size, dtype=tf.float32) + 0.5) / size
  on_image = lambda axis: tf.abs(low[axis] + centres * extent[axis] - 0.5) <= 0.5  # [size]
  inside = tf.cast(on_image(0)[:, None, None] & on_image(1)[None, :, None], tf.float32)
  inside = tf.broadcast_to(inside, [size, size, 3])
  sampled, inside = (tf.where(mirrored, tf.reverse(x, [1]), x) for x in (sampled, inside))
  return _clip(sampled) * inside, 1.0 - inside


def _sample_window(image: tf.Tensor, window: tf.Tensor, size: int,
                   method: str) -> tuple[tf.Tensor, tf.Tensor]:
  if method in _CROP_AND_RESIZE:
    return _crop_and_resize(image, window, size, method)
  return _scale_and_translate(image, window, size, *_SCALE_AND_TRANSLATE[method])


def resize(size: int, fill: Sequence[float], methods: Sequence[str] = ("bilinear",)) -> Op:
  """Samples the window (whole image if none) to float32 [size, size, 3], 0..255.

  ``methods`` (names of tf.image.resize methods, ``RESIZE_METHODS``): one is drawn uniformly per
  example, as Caffe's ``interp_mode`` list does (linear, area, nearest, cubic, Lanczos). What lies
  outside the original image is filled with ``fill`` (the mean pixel). Adds ``inside`` float32
  [size, size, 3], 1 where the pixel comes from the image.
  """
  unknown = sorted(set(methods) - set(RESIZE_METHODS))
  if unknown or not methods:
    raise ValueError(f"augment.resize_methods: expected a non-empty tuple of {RESIZE_METHODS}, "
                     f"got {tuple(methods)}")
  methods = tuple(methods)

  def op(example: Example) -> Example:
    image, window = tf.cast(example["image"], tf.float32), _window(example)
    if len(methods) == 1:
      sampled, outside = _sample_window(image, window, size, methods[0])
    else:
      u = tf.random.stateless_uniform([], _seed(example, _RESIZE))
      choice = tf.minimum(tf.cast(u * len(methods), tf.int32), len(methods) - 1)
      sampled, outside = tf.switch_case(choice, [
          (lambda m=m: _sample_window(image, window, size, m)) for m in methods])
    example = {**example, "image": sampled + outside * _per_channel(fill, size),
               "inside": 1.0 - outside}
    example.pop("window", None)
    return example

  return op


def _per_channel(values: Sequence[float], size: int) -> tf.Tensor:
  """Constant [size, size, 3] of the 3 per-channel ``values``. Arithmetic with it is much faster
  than broadcasting a [3] vector or tf.where (slow Eigen paths: here 0.1 ms against 1 ms)."""
  return tf.constant(np.broadcast_to(np.asarray(values, np.float32), (size, size, 3)).copy())


_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def photometric_distort(brightness_prob: float, brightness_delta: float, contrast_prob: float,
                        contrast_range: Sequence[float], saturation_prob: float,
                        saturation_range: Sequence[float], hue_prob: float, hue_delta: float,
                        contrast_first_prob: float, channel_swap_prob: float,
                        hue_clamp_below_zero: bool = False) -> Op:
  """Caffe's DistortImage on a float 0..255 image: brightness (+-delta), then contrast (x factor)
  either before or after saturation (x factor) and hue (+-delta degrees), each applied with its
  probability and clipped to [0, 255]; then a random channel permutation. Pixels outside the
  original image (``inside`` == 0) keep their value.

  Hue: Caffe's ``hue_delta`` is in OpenCV's 8-bit hue units (0..180), so its 18 is 36 degrees
  here. With ``hue_clamp_below_zero``, a shift below hue 0 stops at 0 (red) instead of wrapping, as
  Caffe's 8-bit ``convertTo`` saturates there (a shift past 180 does wrap, in HSV2BGR).
  """

  def op(example: Example) -> Example:
    u = tf.random.stateless_uniform([12], _seed(example, _PHOTOMETRIC))
    original = image = example["image"]
    image = _clip(image + tf.where(u[0] < brightness_prob, (2 * u[1] - 1) * brightness_delta, 0.0))
    contrast = tf.where(u[2] < contrast_prob, _between(u[3], contrast_range), 1.0)
    contrast_first = u[4] < contrast_first_prob
    image = _clip(image * tf.where(contrast_first, contrast, 1.0))
    saturation = tf.where(u[5] < saturation_prob, _between(u[6], saturation_range), 1.0)
    hue = tf.where(u[7] < hue_prob, (2 * u[8] - 1) * hue_delta / 360.0, 0.0)
    image = tf.cond((saturation != 1.0) | (hue != 0.0),
                    lambda: _saturation_hue(image, saturation, hue, hue_clamp_below_zero),
                    lambda: image)
    image = _clip(image * tf.where(contrast_first, 1.0, contrast))
    if channel_swap_prob > 0:
      permutation = tf.gather(_PERMUTATIONS, tf.cast(u[10] * 6, tf.int32) % 6)
      image = tf.cond(u[9] < channel_swap_prob, lambda: tf.gather(image, permutation, axis=-1),
                      lambda: image)
    if "inside" in example:
      image = original + example["inside"] * (image - original)
    return {**example, "image": image}

  return op


def _clip(image: tf.Tensor) -> tf.Tensor:
  return tf.clip_by_value(image, 0.0, 255.0)


def _between(u: tf.Tensor, bounds: Sequence[float]) -> tf.Tensor:
  return bounds[0] + u * (bounds[1] - bounds[0])


def _saturation_hue(image: tf.Tensor, saturation: tf.Tensor, hue: tf.Tensor,
                    clamp_below_zero: bool) -> tf.Tensor:
  """Scales saturation and rotates hue (in turns) of a float 0..255 RGB image."""
  h, s, v = tf.unstack(tf.image.rgb_to_hsv(image / 255.0), axis=-1)
  shifted = tf.maximum(h + hue, 0.0) if clamp_below_zero else h + hue
  hsv = tf.stack([tf.math.floormod(shifted, 1.0), tf.clip_by_value(s * saturation, 0.0, 1.0), v],
                 axis=-1)
  return _clip(tf.image.hsv_to_rgb(hsv) * 255.0)


def normalize(mean: Sequence[float], std: Sequence[float]) -> Op:
  """float 0..255 RGB image [S, S, 3] -> (image / 255 - mean) / std, the model's input."""
  scale = [1.0 / (255.0 * s) for s in std]
  offset = [-m / s for m, s in zip(mean, std)]

  def op(example: Example) -> Example:
    size = example["image"].shape[0]  # static: normalize follows resize
    example = {**example, "image": example["image"] * _per_channel(scale, size) +
               _per_channel(offset, size)}
    example.pop("inside", None)
    return example

  return op


def _mean_pixel(config: ml_collections.ConfigDict) -> tuple[float, ...]:
  """The fill colour of zoom-out, 0..255: the model's input mean."""
  return tuple(255.0 * m for m in config.model.input_mean)


def train_ops(config: ml_collections.ConfigDict) -> list[Op]:
  """The training augmentation of ``config.augment``, in order, ending normalised at model size."""
  a = config.augment
  return [expand(a.expand_prob, a.expand_max_ratio),
          sample_patch(a.patch_whole_image, tuple(a.patch_min_ious), tuple(a.patch_scale_range),
                       tuple(a.patch_aspect_range), a.patch_max_trials),
          horizontal_flip(a.flip_prob),
          resize(config.model.image_size, _mean_pixel(config), tuple(a.resize_methods)),
          photometric_distort(a.brightness_prob, a.brightness_delta, a.contrast_prob,
                              tuple(a.contrast_range), a.saturation_prob,
                              tuple(a.saturation_range), a.hue_prob, a.hue_delta,
                              a.contrast_first_prob, a.channel_swap_prob,
                              a.hue_clamp_below_zero),
          normalize(tuple(config.model.input_mean), tuple(config.model.input_std))]


def eval_ops(config: ml_collections.ConfigDict) -> list[Op]:
  """Evaluation preprocessing: bilinear resize to model size (Caffe's test LINEAR), normalise."""
  return [resize(config.model.image_size, _mean_pixel(config)),
          normalize(tuple(config.model.input_mean), tuple(config.model.input_std))]


def apply(ops: Sequence[Op], example: Example) -> Example:
  for op in ops:
    example = op(example)
  return example
