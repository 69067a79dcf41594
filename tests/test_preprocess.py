"""The jnp preprocessing (predict, export) equals tf.data's evaluation ops (training, evaluation)."""

import os

import numpy as np
import tensorflow as tf

from ssd_jax import config_utils, preprocess
from ssd_jax.data import augment

from conftest import CONFIG_DIR

# XLA fuses the multiply-adds of the resize that TF's crop_and_resize rounds twice: at most
# 0.011 of 255 on these sizes (bit-equal on most pixels).
RESIZE_TOLERANCE = 0.02


def tf_resize(image: np.ndarray, size: int) -> np.ndarray:
  """The input pipeline's evaluation resize (the whole image, no window) of uint8 [H, W, 3]."""
  return augment.eval_resize(size)({"image": tf.constant(image)})["image"].numpy()


def test_resize_is_the_pipelines():
  rng = np.random.default_rng(1)
  for height, width, size in ((64, 64, 64), (75, 100, 64), (375, 500, 300), (1, 5, 8), (9, 7, 20)):
    image = rng.integers(0, 256, (height, width, 3), np.uint8)
    got = np.asarray(preprocess.resize(image[None], size))[0]
    np.testing.assert_allclose(got, tf_resize(image, size), rtol=0, atol=RESIZE_TOLERANCE,
                               err_msg=f"{height}x{width} -> {size}")


def test_resize_of_a_padded_canvas_reads_each_image_alone():
  rng = np.random.default_rng(2)
  shapes = ((30, 50), (64, 64), (1, 1))
  canvas = np.zeros((3, 64, 64, 3), np.uint8)
  images = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in shapes]
  for b, image in enumerate(images):
    canvas[b, :image.shape[0], :image.shape[1]] = image
    canvas[b, image.shape[0]:] = 255  # what lies outside an image must not leak in
  got = np.asarray(preprocess.resize(canvas, 32, np.asarray(shapes)))
  for b, image in enumerate(images):
    np.testing.assert_allclose(got[b], tf_resize(image, 32), rtol=0, atol=RESIZE_TOLERANCE)
    np.testing.assert_array_equal(got[b], np.asarray(preprocess.resize(image[None], 32))[0])


def test_normalize_is_the_pipelines_and_the_formula():
  mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
  pixels = np.random.default_rng(3).uniform(0, 255, (4, 4, 3)).astype(np.float32)
  expected = augment.normalize(mean, std)({"image": tf.constant(pixels)})["image"].numpy()
  got = np.asarray(preprocess.normalize(pixels, mean, std))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  np.testing.assert_allclose(got, (pixels / 255 - np.asarray(mean)) / np.asarray(std), atol=1e-5)


def test_preprocess_is_the_eval_pipeline():
  config = config_utils.load_config(os.path.join(CONFIG_DIR, "quickstart.py"), "tiny")
  image = np.random.default_rng(4).integers(0, 256, (75, 100, 3), np.uint8)
  expected = augment.apply(augment.eval_ops(config), {"image": tf.constant(image)})["image"]
  got = np.asarray(preprocess.preprocess(image[None], config))[0]
  # The resize tolerance in units of the normalised input (std ~0.22 of 1).
  np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=2e-4)
