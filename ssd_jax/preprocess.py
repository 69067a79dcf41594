"""The detector's input preprocessing in jnp: ``resize`` to the model's size, then ``normalize``.

Used by ``--mode=predict`` and by every exported artifact (``export``), so a picture is prepared
the same way wherever it is detected. It is the evaluation preprocessing of the input pipeline
(``ssd_jax.data.augment.resize`` of the whole image, then ``augment.normalize``), which stays in
tf.data for training and evaluation: ``tests/test_preprocess.py`` checks that both agree.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


def _sample_grid(length: jax.Array | int, size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Where ``resize`` samples one axis of ``length`` pixels for ``size`` outputs.

  Returns (lower source index [size] int32, upper source index [size] int32, weight of the
  upper [size] float32). ``tf.image.crop_and_resize``'s arithmetic, in float32 and in its order,
  for the box from the centre of output pixel 0 to that of pixel size - 1 (margin 0.5 / size).
  """
  margin = np.float32(0.5 / size)
  low, high = margin, np.float32(1.0) - margin
  span = jnp.asarray(length, jnp.float32) - 1.0  # crop_and_resize: pixel i's centre at i / span
  scale = (high - low) * span / np.float32(size - 1)
  position = low * span + jnp.arange(size, dtype=jnp.float32) * scale  # [size]
  lower = jnp.floor(position)
  return lower.astype(jnp.int32), jnp.ceil(position).astype(jnp.int32), position - lower


def _resize(images: jax.Array, height: jax.Array | int, width: jax.Array | int,
            size: int) -> jax.Array:
  """Images [B, H, W, 3] (their top-left ``height`` x ``width`` used) -> float32
  [B, size, size, 3]."""
  top, bottom, y_weight = _sample_grid(height, size)
  left, right, x_weight = _sample_grid(width, size)
  # Rows first, then float: a large photo is never converted whole.
  upper = images[:, top].astype(jnp.float32)  # [B, size, W, 3]
  lower = images[:, bottom].astype(jnp.float32)
  x_weight = x_weight[:, None]
  upper = upper[:, :, left] + (upper[:, :, right] - upper[:, :, left]) * x_weight
  lower = lower[:, :, left] + (lower[:, :, right] - lower[:, :, left]) * x_weight
  return upper + (lower - upper) * y_weight[:, None, None]


def resize(images: jax.Array, size: int, image_sizes: jax.Array | None = None) -> jax.Array:
  """Images [B, H, W, 3] (any dtype, 0..255) -> float32 [B, size, size, 3], 0..255: bilinear
  resize of the whole image to size x size, aspect ratio not kept.

  ``image_sizes`` int [B, 2] (height, width): image b fills only the top-left of its canvas (a
  batch of pictures of several sizes padded to one shape); default: all of it. Equal to the input
  pipeline's ``augment.resize`` up to float32 rounding: XLA fuses multiply-adds that TF's kernel
  rounds twice (at most 0.011 of 255 on the sizes tested, bit-equal on most).
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
