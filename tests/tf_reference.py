"""The previous input pipeline's pixel ops (``ssd_jax/data/augment.py`` before the device path),
kept as TF code: the reference that ``ssd_jax.pixel_augment`` is compared with, fed the same drawn
parameters, and how close it must come."""

import numpy as np
import tensorflow as tf

# Largest difference to the TF ops, in 0..255 pixel units, per method (measured: bilinear 0.0010,
# nearest 0, area 0.00003, bicubic and both Lanczos 0.0012). The formulas are TF's; what remains
# is float32 rounding: XLA fuses multiply-adds that TF rounds twice, and the weights are summed in
# another order. At an exact tie between two source pixels (nearest, and area's box), rounding
# picks either neighbour: drawn windows are arbitrary floats, so ties have probability ~0.
TOLERANCE = {"bilinear": 0.002, "nearest": 0.0, "area": 0.002, "bicubic": 0.002,
             "lanczos3": 0.002, "lanczos5": 0.002}
PHOTOMETRIC_TOLERANCE = 0.001  # the distortion alone, same input (measured 0.00013)
END_TO_END_TOLERANCE = 0.005  # resample, distort, normalise, in 0..255 units (measured 0.0019)


_TF_KERNELS = {"area": ("box", True), "bicubic": ("keyscubic", False),
               "lanczos3": ("lanczos3", False), "lanczos5": ("lanczos5", False)}


def tf_resample(image: np.ndarray, window, size: int, method: str, fill) -> tuple[np.ndarray, np.ndarray]:
  """(float32 [size, size, 3], inside bool [size, size]) as the previous ``augment.resize`` drew
  them: crop_and_resize for bilinear and nearest, ScaleAndTranslate for the others."""
  image, window = tf.cast(tf.constant(image), tf.float32), tf.constant(window, tf.float32)
  if method in ("bilinear", "nearest"):
    margin = 0.5 / size
    low = window[:2] + margin * (window[2:] - window[:2])
    high = window[2:] - margin * (window[2:] - window[:2])
    sampled = tf.image.crop_and_resize(
        image[None], tf.stack([[low[1], low[0], high[1], high[0]]]), [0], [size, size],
        method=method, extrapolation_value=-1.0)[0]
    pixels, inside = tf.maximum(sampled, 0.0), tf.cast(sampled >= 0, tf.float32)
  else:
    kernel, antialias = _TF_KERNELS[method]
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    mirrored = window[2] < window[0]
    low = tf.stack([window[1], tf.minimum(window[0], window[2])])
    extent = tf.stack([window[3] - window[1], tf.abs(window[2] - window[0])])
    scale = size / (extent * shape)
    sampled = tf.raw_ops.ScaleAndTranslate(
        images=image[None], size=[size, size], scale=scale, translation=-low * shape * scale,
        kernel_type=kernel, antialias=antialias)[0]
    centres = (tf.range(size, dtype=tf.float32) + 0.5) / size
    on_image = lambda axis: tf.abs(low[axis] + centres * extent[axis] - 0.5) <= 0.5
    inside = tf.cast(on_image(0)[:, None, None] & on_image(1)[None, :, None], tf.float32)
    inside = tf.broadcast_to(inside, [size, size, 3])
    sampled, inside = (tf.where(mirrored, tf.reverse(x, [1]), x) for x in (sampled, inside))
    pixels = tf.clip_by_value(sampled, 0.0, 255.0) * inside
  pixels = pixels + (1.0 - inside) * tf.constant(fill, tf.float32)
  return pixels.numpy(), inside.numpy()[..., 0] > 0


def tf_photometric(pixels: np.ndarray, inside: np.ndarray, params, order, clamp: bool) -> np.ndarray:
  """The previous ``augment.photometric_distort`` with its draws replaced by ``params``
  (brightness, contrast, contrast first, saturation, hue in turns) and ``order`` [3]."""
  brightness, contrast, first, saturation, hue = params
  clip = lambda x: tf.clip_by_value(x, 0.0, 255.0)
  original = image = tf.constant(pixels)
  image = clip(image + brightness)
  image = clip(image * (contrast if first else 1.0))
  if saturation != 1.0 or hue != 0.0:
    h, s, v = tf.unstack(tf.image.rgb_to_hsv(image / 255.0), axis=-1)
    shifted = tf.maximum(h + hue, 0.0) if clamp else h + hue
    hsv = tf.stack([tf.math.floormod(shifted, 1.0), tf.clip_by_value(s * saturation, 0.0, 1.0),
                    v], axis=-1)
    image = clip(tf.image.hsv_to_rgb(hsv) * 255.0)
  image = clip(image * (1.0 if first else contrast))
  image = tf.gather(image, list(order), axis=-1)
  inside = tf.constant(inside[..., None], tf.float32)
  return (original + inside * (image - original)).numpy()


def tf_normalize(pixels: np.ndarray, mean, std) -> np.ndarray:
  scale = tf.constant([1.0 / (255.0 * s) for s in std])
  offset = tf.constant([-m / s for m, s in zip(mean, std)])
  return (tf.constant(pixels) * scale + offset).numpy()
