"""The detector's input preprocessing in jnp: ``resize`` to the model's size, then ``normalize``.

Used by ``--mode=predict`` and by every exported artifact (``export``), so a picture is prepared
the same way wherever it is detected. It is the evaluation preprocessing of the input pipeline
(``ssd_jax.data.augment.eval_resize`` of the whole image, then ``augment.normalize``), which stays
in tf.data for evaluation: ``tests/test_preprocess.py`` checks that both agree. Its bilinear
sampling (``crop_positions``, ``bilinear_grid``, ``sample``) also samples the training windows on
the device (``pixel_augment``).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


def crop_positions(length: jax.Array | int, size: int, start: jax.Array | float = 0.0,
                   end: jax.Array | float = 1.0) -> jax.Array:
  """Where ``tf.image.crop_and_resize`` samples one axis of ``length`` pixels for ``size`` outputs.

  float32 [size] positions in pixel indices (pixel i's centre at i; outside [0, length - 1]
  means off the image), for the window from ``start`` to ``end`` in image units (end < start:
  mirrored) whose output pixels have their centres at (j + 0.5) / size across it: the crop box
  runs from the centre of output pixel 0 to that of pixel size - 1 (margin 0.5 / size). It is
  crop_and_resize's arithmetic, in float32 and in its order.
  """
  margin = np.float32(0.5 / size)
  extent = jnp.asarray(end, jnp.float32) - start
  low, high = start + margin * extent, end - margin * extent
  span = jnp.asarray(length, jnp.float32) - 1.0  # crop_and_resize: pixel i's centre at i / span
  scale = (high - low) * span / np.float32(size - 1)
  return low * span + jnp.arange(size, dtype=jnp.float32) * scale  # [size]


Grid = tuple[jax.Array, jax.Array, jax.Array]


def bilinear_grid(position: jax.Array) -> Grid:
  """(lower source index [S] int32, upper source index [S] int32, weight of the upper [S]
  float32) of positions [S] in pixel indices, for ``sample``."""
  lower = jnp.floor(position)
  return lower.astype(jnp.int32), jnp.ceil(position).astype(jnp.int32), position - lower


def sample(images: jax.Array, rows: Grid, columns: Grid) -> jax.Array:
  """Images [B, H, W, 3] (any dtype) interpolated between the ``rows`` and ``columns`` grids'
  pixels (``bilinear_grid``) -> float32 [B, S, S', 3], as crop_and_resize interpolates (up to
  float32 rounding: it interpolates along x first)."""
  top, bottom, y_weight = rows
  left, right, x_weight = columns
  # Whole rows are gathered (contiguous copies, where gathering columns is strided), first of
  # the original (a large photo is never converted to float whole), then of the transposed
  # result: on XLA:CPU 1.6x faster than gathering columns.
  upper = images[:, top].astype(jnp.float32)  # [B, S, W, 3]
  lower = images[:, bottom].astype(jnp.float32)
  pixels = jnp.swapaxes(upper + (lower - upper) * y_weight[:, None, None], 1, 2)  # [B, W, S, 3]
  left, right = pixels[:, left], pixels[:, right]  # [B, S', S, 3]
  return jnp.swapaxes(left + (right - left) * x_weight[:, None, None], 1, 2)


def _resize(images: jax.Array, height: jax.Array | int, width: jax.Array | int,
            size: int) -> jax.Array:
  """Images [B, H, W, 3] (their top-left ``height`` x ``width`` used) -> float32
  [B, size, size, 3]."""
  return sample(images, bilinear_grid(crop_positions(height, size)),
                bilinear_grid(crop_positions(width, size)))


def resize(images: jax.Array, size: int, image_sizes: jax.Array | None = None) -> jax.Array:
  """Images [B, H, W, 3] (any dtype, 0..255) -> float32 [B, size, size, 3], 0..255: bilinear
  resize of the whole image to size x size, aspect ratio not kept.

  ``image_sizes`` int [B, 2] (height, width): image b fills only the top-left of its canvas (a
  batch of pictures of several sizes padded to one shape); default: all of it. Equal to the input
  pipeline's ``augment.eval_resize`` up to float32 rounding: XLA fuses multiply-adds that TF's
  kernel rounds twice, and interpolates along y before x (at most 0.011 of 255 on the sizes
  tested).
  """
  if image_sizes is None:  # no vmap: plain gathers, which every exporter converts
    return _resize(images, images.shape[1], images.shape[2], size)
  return jax.vmap(lambda image, hw: _resize(image[None], hw[0], hw[1], size)[0])(
      images, jnp.asarray(image_sizes))


def normalize(pixels: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """float 0..255 RGB [..., 3] -> (pixels / 255 - mean) / std, the model's input (``mean`` and
  ``std`` are ``config.model.input_mean/std``, for RGB in [0, 1])."""
  scale = np.asarray([1.0 / (255.0 * s) for s in std], np.float32)
  offset = np.asarray([-m / s for m, s in zip(mean, std)], np.float32)
  return pixels * scale + offset


def preprocess(images: jax.Array, config: ml_collections.ConfigDict,
               image_sizes: jax.Array | None = None) -> jax.Array:
  """uint8 RGB [B, H, W, 3] -> the model's input [B, S, S, 3] float32, S =
  ``config.model.image_size``: ``resize`` then ``normalize`` with ``config.model``'s constants."""
  pixels = resize(images, config.model.image_size, image_sizes)
  return normalize(pixels, config.model.input_mean, config.model.input_std)
