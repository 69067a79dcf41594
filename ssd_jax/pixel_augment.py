"""The training augmentation's pixel work, on the device, for a batch of drawn examples (pure jnp).

The input pipeline (``ssd_jax.data.augment``, tf.data on the host) decodes each image and draws
every random parameter of SSD's augmentation: the window (zoom-out canvas, sampled patch and flip
composed; xyxy in units of the image, x_min > x_max when mirrored), the resize method, the
photometric distortion's values. Here, inside the jitted train step and vmapped over the batch,
each image is sampled once through its window at the model's size with its method (what lies
outside the image is the mean pixel), distorted photometrically and normalised. Nothing here is
random: the same batch gives the same pixels, so a run stays a pure function of (seed, step).

A drawn batch holds ``image`` uint8 [B, M, M, 3] (image b in the top-left ``image_size[b]``
pixels, M = config.data.max_image_size), ``image_size`` int32 [B, 2] (height, width),
``window`` float32 [B, 4], ``method`` int32 [B] (an index into ``config.augment.resize_methods``),
``photometric`` float32 [B, 5] (columns ``PHOTOMETRIC``), ``channel_order`` int32 [B, 3].

The resampling reproduces the TF ops it replaced: bilinear and nearest sample as
``tf.image.crop_and_resize`` does (``preprocess.crop_positions``, as evaluation's resize), the
others as ``tf.image.resize``'s scale_and_translate kernels (half-pixel centres; only "area"
antialiases, as in OpenCV's resize that Caffe used), each axis one weight matrix [S, M] applied
as a matrix product (as ``jax.image.scale_and_translate`` works); bilinear and nearest are two
gathers per axis, as ``preprocess.resize``.
"""

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssd_jax import preprocess

Kernel = Callable[[jax.Array], jax.Array]


def _box(x: jax.Array) -> jax.Array:
  """TF's box kernel: 1 inside half a pixel, 0.5 on its edge."""
  x = jnp.abs(x)
  return jnp.where(x < 0.5, 1.0, jnp.where(x == 0.5, 0.5, 0.0))


def _keys_cubic(x: jax.Array) -> jax.Array:
  """Keys' cubic convolution kernel with a = -0.5 (TF's "keyscubic", OpenCV's INTER_CUBIC is
  a = -0.75)."""
  x = jnp.abs(x)
  outer = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
  inner = (1.5 * x - 2.5) * x * x + 1.0
  return jnp.where(x >= 2.0, 0.0, jnp.where(x >= 1.0, outer, inner))


def _lanczos(radius: int) -> Kernel:
  def kernel(x: jax.Array) -> jax.Array:
    x = jnp.abs(x)
    safe = jnp.maximum(x, 1e-3)  # sin(x) / x -> 1 at 0, as TF special-cases it
    value = radius * jnp.sin(np.pi * safe) * jnp.sin(np.pi * safe / radius) / (np.pi ** 2 * safe ** 2)
    return jnp.where(x > radius, 0.0, jnp.where(x <= 1e-3, 1.0, value))
  return kernel


# Method -> (kernel, antialiased) for the scale_and_translate methods.
_SCALE_AND_TRANSLATE = {"area": (_box, True), "bicubic": (_keys_cubic, False),
                        "lanczos3": (_lanczos(3), False), "lanczos5": (_lanczos(5), False)}
_CROP_AND_RESIZE = ("bilinear", "nearest")
METHODS = _CROP_AND_RESIZE + tuple(_SCALE_AND_TRANSLATE)  # config.augment.resize_methods
# Columns of a drawn batch's ``photometric``: brightness delta (added to 0..255 pixels), contrast
# factor, contrast first (1: before saturation and hue, 0: after), saturation factor, hue shift in
# turns (degrees / 360). 0, 1, -, 1, 0 leave the image as it is.
PHOTOMETRIC = ("brightness", "contrast", "contrast_first", "saturation", "hue")


@dataclasses.dataclass(frozen=True)
class Options:
  """The config values the device augmentation reads (``Options.from_config``)."""
  size: int  # config.model.image_size: output S x S
  methods: tuple[str, ...]  # config.augment.resize_methods: ``method`` indexes these
  fill: tuple[float, float, float]  # 0..255 RGB outside the image: the model's input mean
  mean: tuple[float, float, float]  # config.model.input_mean
  std: tuple[float, float, float]  # config.model.input_std
  hue_clamp_below_zero: bool  # config.augment.hue_clamp_below_zero
  channel_swap: bool  # config.augment.channel_swap_prob > 0: apply ``channel_order``

  def __post_init__(self):
    unknown = sorted(set(self.methods) - set(METHODS))
    if unknown or not self.methods:
      raise ValueError(f"config.augment.resize_methods: expected a non-empty tuple of {METHODS}, "
                       f"got {tuple(self.methods)}")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Options":
    mean = tuple(float(m) for m in config.model.input_mean)
    return cls(size=int(config.model.image_size),
               methods=tuple(str(m) for m in config.augment.resize_methods),
               fill=tuple(255.0 * m for m in mean), mean=mean,
               std=tuple(float(s) for s in config.model.input_std),
               hue_clamp_below_zero=bool(config.augment.hue_clamp_below_zero),
               channel_swap=config.augment.channel_swap_prob > 0)


def _crop_sample(image: jax.Array, height: jax.Array, width: jax.Array, window: jax.Array,
                 size: int, nearest: jax.Array | bool) -> tuple[jax.Array, jax.Array]:
  """The window as ``tf.image.crop_and_resize`` samples it, bilinearly or (``nearest``) from the
  nearest pixel, halves rounded up as its roundf does: (float32 [size, size, 3], inside [size,
  size]). Both are the two pixels around each sample point, weighted (nearest: by 0 or 1)."""
  grids, inside = [], []
  for start, end, length in ((window[1], window[3], height), (window[0], window[2], width)):
    position = preprocess.crop_positions(length, size, start, end)
    last = length.astype(jnp.float32) - 1.0
    inside.append((position >= 0) & (position <= last))
    # Off the image the value is the fill: clamped, the indices stay on the image.
    lower, upper, weight = preprocess.bilinear_grid(jnp.clip(position, 0.0, last))
    grids.append((lower, upper, jnp.where(nearest, (weight >= 0.5).astype(jnp.float32), weight)))
  pixels = preprocess.sample(image[None], *grids)[0]
  return pixels, inside[0][:, None] & inside[1][None, :]


def _scale_and_translate_weights(start: jax.Array, end: jax.Array, length: jax.Array, canvas: int,
                                 size: int, method: str) -> tuple[jax.Array, jax.Array]:
  """One axis as TF's ScaleAndTranslate samples it (half-pixel centres): (weights [size, canvas],
  inside [size] bool). A mirrored window samples the unmirrored one and reverses it."""
  kernel, antialias = _SCALE_AND_TRANSLATE[method]
  low, extent = jnp.minimum(start, end), jnp.abs(end - start)
  length_f = length.astype(jnp.float32)
  inv_scale = extent * length_f / size  # source pixels per output pixel
  centres = jnp.arange(size, dtype=jnp.float32) + 0.5
  sample = centres * inv_scale + low * length_f  # [size], in source pixels (pixel i covers [i, i+1])
  kernel_scale = jnp.maximum(inv_scale, 1.0) if antialias else 1.0
  source = jnp.arange(canvas, dtype=jnp.float32)[None] + 0.5  # [1, canvas]
  weights = jnp.where(source < length_f, kernel((source - sample[:, None]) / kernel_scale), 0.0)
  total = jnp.sum(weights, axis=1, keepdims=True)
  usable = jnp.abs(total) >= 1000.0 * np.finfo(np.float32).tiny
  weights = jnp.where(usable, weights / jnp.where(usable, total, 1.0), 0.0)
  weights = jnp.where(((sample >= 0) & (sample <= length_f))[:, None], weights, 0.0)
  inside = jnp.abs(low + centres / size * extent - 0.5) <= 0.5
  mirrored = end < start
  return (jnp.where(mirrored, weights[::-1], weights), jnp.where(mirrored, inside[::-1], inside))


def _kernel_sample(image: jax.Array, height: jax.Array, width: jax.Array, window: jax.Array,
                   size: int, methods: Sequence[str], method: jax.Array,
                   ) -> tuple[jax.Array, jax.Array]:
  """The window sampled with ``methods[method]``, a scale_and_translate kernel: (float32 [size,
  size, 3] clipped to 0..255, inside [size, size]). Each axis is a weight matrix [size, M]."""
  axes = []
  for start, end, length, canvas in ((window[1], window[3], height, image.shape[0]),
                                     (window[0], window[2], width, image.shape[1])):
    options = [_scale_and_translate_weights(start, end, length, canvas, size, m) for m in methods]
    axes.append(jax.tree.map(lambda *each: jnp.stack(each)[method], *options))
  (row_weights, row_inside), (column_weights, column_inside) = axes
  highest = jax.lax.Precision.HIGHEST  # exact float32 on accelerators too (no bf16 passes)
  pixels = jnp.einsum("ym,mnc->ync", row_weights, image.astype(jnp.float32), precision=highest)
  pixels = jnp.einsum("xn,ync->yxc", column_weights, pixels, precision=highest)
  return jnp.clip(pixels, 0.0, 255.0), row_inside[:, None] & column_inside[None, :]


def resample(image: jax.Array, image_size: jax.Array, window: jax.Array, method: jax.Array,
             size: int, methods: Sequence[str], fill: Sequence[float]) -> tuple[jax.Array, jax.Array]:
  """The window of one image at size x size with method ``methods[method]``.

  ``image`` [M, M', 3] (any dtype, 0..255; the image in its top-left ``image_size`` (height,
  width) pixels), ``window`` [4] xyxy in image units. Returns (float32 [size, size, 3] 0..255,
  with ``fill`` where the window leaves the image; inside bool [size, size]). Overshooting kernels
  are clipped to 0..255, as OpenCV saturates 8-bit pixels. Only the configured ``methods`` are
  computed: bilinear and nearest share two gathers per axis, the kernels one matrix product.
  """
  height, width = image_size[0], image_size[1]
  crop = [m for m in methods if m in _CROP_AND_RESIZE]
  kernels = [m for m in methods if m not in _CROP_AND_RESIZE]
  results, kinds = [], []
  if crop:
    nearest = jnp.asarray([m == "nearest" for m in methods])[method]
    results.append(_crop_sample(image, height, width, window, size, nearest))
    kinds.append(jnp.asarray([m in crop for m in methods])[method])
  if kernels:
    index = jnp.asarray([kernels.index(m) if m in kernels else 0 for m in methods])[method]
    results.append(_kernel_sample(image, height, width, window, size, kernels, index))
  pixels, inside = results[0] if len(results) == 1 else jax.tree.map(
      lambda a, b: jnp.where(kinds[0], a, b), *results)
  return jnp.where(inside[..., None], pixels, jnp.asarray(fill, jnp.float32)), inside


Planes = tuple[jax.Array, jax.Array, jax.Array]  # three channels, each [...]


def _to_hsv(r: jax.Array, g: jax.Array, b: jax.Array) -> Planes:
  """RGB planes in [0, 1] -> HSV planes, hue in turns [0, 1); ``tf.image.rgb_to_hsv``'s formulas."""
  value = jnp.maximum(jnp.maximum(r, g), b)
  spread = value - jnp.minimum(jnp.minimum(r, g), b)
  saturation = jnp.where(value > 0, spread / jnp.where(value > 0, value, 1.0), 0.0)
  norm = (1.0 / jnp.where(spread > 0, spread, 1.0)) * (1.0 / 6.0)
  # TF tests r == value, then g == value: the same branches, written as comparisons of the
  # channels themselves, so that a value XLA recomputes (and rounds) differently cannot miss both.
  hue = jnp.where((r >= g) & (r >= b), norm * (g - b),
                  jnp.where(g >= b, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0))
  hue = jnp.where(spread > 0, hue, 0.0)
  return jnp.where(hue < 0, hue + 1.0, hue), saturation, value


def _to_rgb(h: jax.Array, s: jax.Array, v: jax.Array) -> Planes:
  """HSV planes (hue in turns) -> RGB planes in [0, 1]; ``tf.image.hsv_to_rgb``'s formulas."""
  dh = h * 6.0
  dr = jnp.clip(jnp.abs(dh - 3.0) - 1.0, 0.0, 1.0)
  dg = jnp.clip(2.0 - jnp.abs(dh - 2.0), 0.0, 1.0)
  db = jnp.clip(2.0 - jnp.abs(dh - 4.0), 0.0, 1.0)
  one_minus_s = 1.0 - s
  return tuple((one_minus_s + s * d) * v for d in (dr, dg, db))


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  """[..., 3] RGB in [0, 1] -> HSV, hue in turns [0, 1), as ``tf.image.rgb_to_hsv``."""
  return jnp.stack(_to_hsv(*jnp.moveaxis(rgb, -1, 0)), axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """[..., 3] HSV (hue in turns) -> RGB in [0, 1], as ``tf.image.hsv_to_rgb``."""
  return jnp.stack(_to_rgb(*jnp.moveaxis(hsv, -1, 0)), axis=-1)


def _clip(pixels: jax.Array) -> jax.Array:
  return jnp.clip(pixels, 0.0, 255.0)


def _saturation_hue(rgb: Planes, saturation: jax.Array, hue: jax.Array,
                    clamp_below_zero: bool) -> Planes:
  """Scales saturation and rotates hue (in turns) of float 0..255 RGB planes."""
  h, s, v = _to_hsv(*(c / 255.0 for c in rgb))
  shifted = h + hue
  if clamp_below_zero:  # Caffe's 8-bit hue saturates at 0 (a shift past 180 does wrap)
    shifted = jnp.maximum(shifted, 0.0)
  return tuple(_clip(c * 255.0) for c in _to_rgb(jnp.mod(shifted, 1.0),
                                                  jnp.clip(s * saturation, 0.0, 1.0), v))


def photometric(pixels: jax.Array, params: jax.Array, channel_order: jax.Array,
                clamp_below_zero: bool, channel_swap: bool) -> jax.Array:
  """Caffe's DistortImage on float 0..255 RGB [..., 3] with drawn ``params`` [5] (``PHOTOMETRIC``):
  brightness, then contrast either before or after saturation and hue, each clipped to
  [0, 255]; then, with ``channel_swap``, the channels in ``channel_order`` [3]."""
  brightness, contrast, contrast_first, saturation, hue = (params[i] for i in range(5))
  first = contrast_first > 0.5
  rgb = tuple(_clip(_clip(c + brightness) * jnp.where(first, contrast, 1.0))
              for c in jnp.moveaxis(pixels, -1, 0))
  changed = (saturation != 1.0) | (hue != 0.0)  # the HSV round trip is not exact: skip it
  rgb = tuple(jnp.where(changed, new, old) for new, old in
              zip(_saturation_hue(rgb, saturation, hue, clamp_below_zero), rgb))
  rgb = tuple(_clip(c * jnp.where(first, 1.0, contrast)) for c in rgb)
  if channel_swap:
    rgb = tuple(jnp.select([order == 0, order == 1], rgb[:2], rgb[2])
                for order in (channel_order[c] for c in range(3)))
  return jnp.stack(rgb, axis=-1)


def augment_one(image: jax.Array, image_size: jax.Array, window: jax.Array, method: jax.Array,
                params: jax.Array, channel_order: jax.Array, options: Options) -> jax.Array:
  """One drawn example -> the model's input float32 [S, S, 3]: resampled, distorted where it
  shows the image (the mean-pixel fill stays as it is), normalised."""
  pixels, inside = resample(image, image_size, window, method, options.size, options.methods,
                            options.fill)
  distorted = photometric(pixels, params, channel_order, options.hue_clamp_below_zero,
                          options.channel_swap)
  pixels = jnp.where(inside[..., None], distorted, pixels)
  return preprocess.normalize(pixels, options.mean, options.std)


def augment(batch: dict[str, jax.Array], options: Options) -> jax.Array:
  """A drawn batch (see the module's docstring) -> the model's input float32 [B, S, S, 3]."""
  return jax.vmap(lambda *example: augment_one(*example, options))(
      batch["image"], batch["image_size"], batch["window"], batch["method"],
      batch["photometric"], batch["channel_order"])


def is_drawn(batch: dict[str, jax.Array]) -> bool:
  """Whether ``batch`` holds decoded images with drawn parameters (else model input already)."""
  return "window" in batch


def model_input(batch: dict[str, jax.Array], options: Options) -> jax.Array:
  """The model's input [B, S, S, 3] of a training batch: ``augment`` of a drawn batch, or
  ``batch["image"]`` when it is model input already (fixed test batches, evaluation)."""
  return augment(batch, options) if is_drawn(batch) else batch["image"]
