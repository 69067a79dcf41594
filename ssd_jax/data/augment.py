"""SSD's training augmentation on the host: every random draw and the boxes, as ops on examples.

Each op is built by a factory from config values and maps an example dict to an example dict;
all randomness is stateless, drawn from ``example["seed"]`` (int64 [2], derived upstream from
(seed, example index, epoch)) folded with a per-op constant, so an op gives the same result
eagerly and inside tf.data, and a resumed run sees the same stream.

The reference order (Caffe ``ssd_pascal.py``, ssd.pytorch) is: photometric distortion, zoom-out,
sampled patch, flip, resize. The geometric ops here move a ``window`` (xyxy, in units of the
original image; x_min > x_max means mirrored) and the boxes together; the other ops only draw:
the resize method (``method``) and the photometric distortion's values (``photometric``,
``channel_order``). The pixels are not touched here: ``ssd_jax.pixel_augment`` samples each window
from the decoded image once, at model size with the drawn method, and distorts and normalises it,
for the whole batch inside the jitted train step (on the accelerator). ``fit_canvas`` prepares the
decoded image for that: shrunk when larger than the canvas the batch is padded to. Photometric
distortion is per pixel, so it commutes with cropping, flipping and placing; it leaves the
mean-filled border undistorted as in the reference, where the fill comes later.

Evaluation keeps its pixel work here (``eval_ops``: bilinear resize of the whole image,
normalise), which ``ssd_jax.preprocess`` reproduces for predict and export.
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


def resize_method(count: int) -> Op:
  """Draws ``method`` int32, uniform over ``count`` methods (Caffe's ``interp_mode`` list: one
  per example; ``config.augment.resize_methods``, applied by ``pixel_augment``)."""

  def op(example: Example) -> Example:
    u = tf.random.stateless_uniform([], _seed(example, _RESIZE))
    return {**example, "method": tf.minimum(tf.cast(u * count, tf.int32), count - 1)}

  return op


_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def photometric(brightness_prob: float, brightness_delta: float, contrast_prob: float,
                contrast_range: Sequence[float], saturation_prob: float,
                saturation_range: Sequence[float], hue_prob: float, hue_delta: float,
                contrast_first_prob: float, channel_swap_prob: float) -> Op:
  """Draws Caffe's DistortImage: ``photometric`` float32 [5] (``pixel_augment.PHOTOMETRIC``:
  brightness delta, +-``brightness_delta`` on 0..255 pixels; contrast factor; 1 when contrast
  comes before saturation and hue, else 0; saturation factor; hue shift in turns, from
  +-``hue_delta`` degrees), each applied with its probability (else 0 or 1: no change), and
  ``channel_order`` int32 [3], a random permutation with ``channel_swap_prob``.

  Caffe's ``hue_delta`` is in OpenCV's 8-bit hue units (0..180), so its 18 is 36 degrees here.
  """

  def op(example: Example) -> Example:
    u = tf.random.stateless_uniform([12], _seed(example, _PHOTOMETRIC))
    params = tf.stack([
        tf.where(u[0] < brightness_prob, (2 * u[1] - 1) * brightness_delta, 0.0),
        tf.where(u[2] < contrast_prob, _between(u[3], contrast_range), 1.0),
        tf.cast(u[4] < contrast_first_prob, tf.float32),
        tf.where(u[5] < saturation_prob, _between(u[6], saturation_range), 1.0),
        tf.where(u[7] < hue_prob, (2 * u[8] - 1) * hue_delta / 360.0, 0.0)])
    permutation = tf.gather(_PERMUTATIONS, tf.cast(u[10] * 6, tf.int32) % 6)
    order = tf.where(u[9] < channel_swap_prob, permutation, tf.range(3))
    return {**example, "photometric": params, "channel_order": order}

  return op


def _between(u: tf.Tensor, bounds: Sequence[float]) -> tf.Tensor:
  return bounds[0] + u * (bounds[1] - bounds[0])


def fit_canvas(max_size: int) -> Op:
  """Ensures ``window`` and adds ``image_size`` int32 [2] (height, width), after shrinking an
  image whose longer side exceeds ``max_size`` to that side (aspect kept; bilinear with
  antialiasing, rounded to uint8), so that it fits the batch's ``max_size`` x ``max_size`` canvas.
  Boxes and window are in image units: the shrink leaves them as they are."""

  def op(example: Example) -> Example:
    image = example["image"]
    shape = tf.shape(image)[:2]
    longer = tf.reduce_max(shape)

    def shrunk() -> tf.Tensor:
      size = tf.maximum(tf.cast(tf.round(tf.cast(shape, tf.float32) * max_size /
                                         tf.cast(longer, tf.float32)), tf.int32), 1)
      resized = tf.image.resize(image, tf.minimum(size, max_size), antialias=True)
      return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)

    image = tf.cond(longer > max_size, shrunk, lambda: image)
    return {**example, "image": image, "image_size": tf.shape(image)[:2],
            "window": _window(example)}

  return op


def eval_resize(size: int) -> Op:
  """Evaluation's resize: the whole image, bilinear, to float32 [size, size, 3] 0..255 (Caffe's
  test transform). Output pixel j's centre at (j + 0.5) / size across the image, sampled in
  crop_and_resize's convention (pixel i's centre at i / (H - 1)), within half an original pixel
  of the half-pixel one; ``preprocess.resize`` is the same in jnp."""

  def op(example: Example) -> Example:
    margin = np.float32(0.5 / size)  # float32 arithmetic, as preprocess.crop_positions
    box = tf.constant([[margin, margin, np.float32(1) - margin, np.float32(1) - margin]])
    image = tf.image.crop_and_resize(tf.cast(example["image"], tf.float32)[None], box, [0],
                                     [size, size])[0]
    return {**example, "image": image}

  return op


def normalize(mean: Sequence[float], std: Sequence[float]) -> Op:
  """float 0..255 RGB image [S, S, 3] -> (image / 255 - mean) / std, the model's input."""
  scale = [1.0 / (255.0 * s) for s in std]
  offset = [-m / s for m, s in zip(mean, std)]

  def op(example: Example) -> Example:
    size = example["image"].shape[0]  # static: normalize follows eval_resize
    return {**example, "image": example["image"] * _per_channel(scale, size) +
            _per_channel(offset, size)}

  return op


def _per_channel(values: Sequence[float], size: int) -> tf.Tensor:
  """Constant [size, size, 3] of the 3 per-channel ``values``. Arithmetic with it is much faster
  than broadcasting a [3] vector or tf.where (slow Eigen paths: here 0.1 ms against 1 ms)."""
  return tf.constant(np.broadcast_to(np.asarray(values, np.float32), (size, size, 3)).copy())


def train_ops(config: ml_collections.ConfigDict) -> list[Op]:
  """The host's part of the training augmentation of ``config.augment``: the window and boxes,
  the drawn parameters, the image fitted to ``config.data.max_image_size``."""
  a = config.augment
  return [expand(a.expand_prob, a.expand_max_ratio),
          sample_patch(a.patch_whole_image, tuple(a.patch_min_ious), tuple(a.patch_scale_range),
                       tuple(a.patch_aspect_range), a.patch_max_trials),
          horizontal_flip(a.flip_prob),
          resize_method(len(a.resize_methods)),
          photometric(a.brightness_prob, a.brightness_delta, a.contrast_prob,
                      tuple(a.contrast_range), a.saturation_prob, tuple(a.saturation_range),
                      a.hue_prob, a.hue_delta, a.contrast_first_prob, a.channel_swap_prob),
          fit_canvas(config.data.max_image_size)]


def eval_ops(config: ml_collections.ConfigDict) -> list[Op]:
  """Evaluation preprocessing: bilinear resize to model size (Caffe's test LINEAR), normalise."""
  return [eval_resize(config.model.image_size),
          normalize(tuple(config.model.input_mean), tuple(config.model.input_std))]


def apply(ops: Sequence[Op], example: Example) -> Example:
  for op in ops:
    example = op(example)
  return example
