"""The device augmentation's pixel work (pure jnp) against the tf.data ops it replaced
(``tf_reference``), fed the same drawn parameters; its kernels, HSV and batching."""

import os

import jax
import numpy as np
import pytest
import tensorflow as tf

from ssd_jax import config_utils, pixel_augment

from conftest import CONFIG_DIR
from tf_reference import (END_TO_END_TOLERANCE, PHOTOMETRIC_TOLERANCE, TOLERANCE, tf_normalize,
                          tf_photometric, tf_resample)

# Windows (xyxy, image units): whole image, a patch, zoomed out (canvas 2.5x), mirrored patch,
# mirrored zoom-out, a thin patch enlarged a lot, a patch hanging off one side.
WINDOWS = ((0.0, 0.0, 1.0, 1.0), (0.2, 0.1, 0.7, 0.9), (-0.6, -1.2, 1.9, 1.3),
           (0.8, 0.05, 0.3, 0.6), (1.7, -0.4, -0.5, 1.8), (0.41, 0.3, 0.47, 0.38),
           (0.5, -0.2, 1.3, 0.6))
SHAPES = ((45, 60), (60, 45), (37, 37), (8, 90))


def _image(seed: int, height: int, width: int) -> np.ndarray:
  """A smooth field with noise and sharp edges (uint8), so that every kernel has work to do."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:height, :width] / max(height, width)
  field = 128 + 90 * np.sin(6 * x[..., None] + rng.uniform(0, 6, 3)) * np.cos(4 * y[..., None])
  field += rng.normal(0, 20, field.shape)
  field[height // 3:height // 2, width // 4:width // 2] = rng.uniform(0, 255, 3)
  return np.clip(field, 0, 255).astype(np.uint8)


def _padded(image: np.ndarray, canvas: int = 96, value: int = 255) -> np.ndarray:
  """``image`` in the top-left of a ``canvas`` x ``canvas`` uint8 canvas filled with ``value``
  (what lies beyond the image must never be read)."""
  out = np.full((canvas, canvas, 3), value, np.uint8)
  out[:image.shape[0], :image.shape[1]] = image
  return out


def _on_edge(window, size: int) -> np.ndarray:
  """[size, size] bool: outputs whose sample point (image units, float64) lies within rounding of
  the image's edge, where float32 rounding decides between the image and the fill (XLA contracts
  multiply-adds into one rounding, TF's kernels round twice)."""
  centres = (np.arange(size) + 0.5) / size
  edge = lambda start, end: np.min(np.abs((start + centres * (end - start))[:, None] - [0, 1]),
                                   axis=1) < 1e-5
  return edge(window[1], window[3])[:, None] | edge(window[0], window[2])[None, :]


def _resample(image: np.ndarray, window, size: int, method: str, fill, methods=None):
  methods = methods or (method,)
  pixels, inside = jax.jit(pixel_augment.resample, static_argnums=(4, 5, 6))(
      _padded(image), np.asarray(image.shape[:2], np.int32), np.asarray(window, np.float32),
      np.int32(methods.index(method)), size, methods, tuple(fill))
  return np.asarray(pixels), np.asarray(inside)


@pytest.mark.parametrize("method", pixel_augment.METHODS)
def test_resample_equals_the_previous_tf_ops(method):
  fill = (123.0, 117.0, 104.0)
  rng = np.random.default_rng(0)
  worst = 0.0
  for case, (window, (height, width)) in enumerate((w, s) for w in WINDOWS for s in SHAPES):
    # Drawn windows are arbitrary floats: jittered, these hit no exact tie between two source
    # pixels, where nearest and area (a box) would take either neighbour by float32 rounding.
    window = np.asarray(window) + rng.uniform(-0.01, 0.01, 4)
    image = _image(case, height, width)
    for size in (32, 33):
      expected, expected_inside = tf_resample(image, window, size, method, fill)
      got, inside = _resample(image, window, size, method, fill)
      edge = _on_edge(window, size)
      np.testing.assert_array_equal(inside[~edge], expected_inside[~edge],
                                    err_msg=f"{window} {height}x{width}")
      worst = max(worst, float(np.abs(got - expected)[~edge].max()))
  assert worst <= TOLERANCE[method], worst


def test_the_drawn_method_is_the_one_applied():
  image, window = _image(0, 45, 60), WINDOWS[2]
  alone = {m: _resample(image, window, 32, m, (0, 0, 0))[0] for m in pixel_augment.METHODS}
  for method in pixel_augment.METHODS:
    drawn = _resample(image, window, 32, method, (0, 0, 0), pixel_augment.METHODS)[0]
    np.testing.assert_array_equal(drawn, alone[method])
  assert len({a.tobytes() for a in alone.values()}) == len(alone)  # the methods do differ


def _ramp(height=45, width=60):
  """float image whose channels are linear in the pixel-centre coordinates (exact for linear
  interpolation), within 0..255: 20 + 2 x + 1.5 y, 50 + x, 200 - y."""
  y, x = np.mgrid[:height, :width] + 0.5
  return np.stack([20 + 2 * x + 1.5 * y, 50 + x, 200 - y], -1).astype(np.float32)


@pytest.mark.parametrize("method", pixel_augment.METHODS)
def test_each_method_samples_the_window(method):
  # The bottom-left quarter of the output shows the image's (0.25..1) x (0..0.5).
  image, window = _ramp(), (0.25, -0.5, 1.25, 0.5)
  pixels, inside = jax.jit(pixel_augment.resample, static_argnums=(4, 5, 6))(
      np.pad(image, ((0, 19), (0, 4), (0, 0))), np.asarray([45, 60], np.int32),
      np.asarray(window, np.float32), 0, 64, (method,), (1.0, 2.0, 3.0))
  pixels, inside = np.asarray(pixels), np.asarray(inside)
  expected_inside = np.zeros((64, 64), bool)
  expected_inside[32:, :48] = True
  np.testing.assert_array_equal(inside, expected_inside)
  np.testing.assert_array_equal(pixels[~inside], np.tile([1, 2, 3], (64 * 64 - 32 * 48, 1)))
  centres = (np.arange(64) + 0.5) / 64
  xs, ys = (0.25 + centres) * 60, (-0.5 + centres) * 45  # half-pixel sample points, in pixels
  truth = np.stack([20 + 2 * xs[None] + 1.5 * ys[:, None], 50 + xs[None] + 0 * ys[:, None],
                    200 - ys[:, None] + 0 * xs[None]], -1)
  # Away from the image's edges each method reproduces the ramp (slopes 2 + 1.5 per pixel, so
  # 1.75 is half a source pixel): bilinear within crop_and_resize's half-pixel convention shift,
  # nearest within that plus half a pixel, area (a box, nearest when enlarging) within half a
  # pixel, the cubic and Lanczos kernels almost exactly.
  tolerance = {"bilinear": 1.75, "nearest": 3.5, "area": 1.75}.get(method, 0.2)
  core = (slice(36, 60), slice(4, 44))
  np.testing.assert_allclose(pixels[core], truth[core], atol=tolerance)
  mirrored = jax.jit(pixel_augment.resample, static_argnums=(4, 5, 6))(
      np.pad(image, ((0, 19), (0, 4), (0, 0))), np.asarray([45, 60], np.int32),
      np.asarray((1.25, -0.5, 0.25, 0.5), np.float32), 0, 64, (method,), (1.0, 2.0, 3.0))[0]
  np.testing.assert_allclose(mirrored, pixels[:, ::-1], atol=1e-3)


def test_area_averages_when_shrinking_and_nearest_picks_pixels():
  checkers = (np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)
  image = np.repeat(checkers[..., None], 3, -1)
  size = np.asarray([128, 128], np.int32)
  sample = lambda method: np.asarray(jax.jit(pixel_augment.resample, static_argnums=(4, 5, 6))(
      image, size, np.asarray((0, 0, 1, 1), np.float32), 0, 32, (method,), (0.0, 0.0, 0.0))[0])
  np.testing.assert_allclose(sample("area"), 127.5, atol=0.5)
  assert set(np.unique(sample("nearest"))) <= {0.0, 255.0}


def _photometric_cases(rng: np.random.Generator, count: int):
  """Drawn photometric parameters as the Caffe configs draw them, every branch covered."""
  for i in range(count):
    params = [rng.uniform(-32, 32) if i % 2 else 0.0, rng.uniform(0.5, 1.5) if i % 3 else 1.0,
              float(i % 4 < 2), rng.uniform(0.5, 1.5) if i % 5 else 1.0,
              rng.uniform(-0.1, 0.1) if i % 7 else 0.0]
    yield params, tuple(rng.permutation(3))


@pytest.mark.parametrize("clamp", [False, True])
def test_photometric_distortion_equals_the_previous_tf_op(clamp):
  rng = np.random.default_rng(5)
  fill = (123.0, 117.0, 104.0)
  pixels, inside = tf_resample(_image(3, 45, 60), WINDOWS[2], 48, "bilinear", fill)
  distort = jax.jit(pixel_augment.photometric, static_argnums=(3, 4))
  for params, order in _photometric_cases(rng, 24):
    expected = tf_photometric(pixels, inside, params, order, clamp)
    distorted = np.asarray(distort(pixels, np.float32(params), np.int32(order), clamp, True))
    got = np.where(inside[..., None], distorted, pixels)
    np.testing.assert_allclose(got, expected, rtol=0, atol=PHOTOMETRIC_TOLERANCE,
                               err_msg=f"{params} {order}")
  unchanged = distort(pixels, np.float32([0, 1, 1, 1, 0]), np.int32([2, 1, 0]), clamp, False)
  np.testing.assert_array_equal(unchanged, pixels)  # nothing drawn: the very same pixels


def test_hsv_conversions_are_tfs():
  rng = np.random.default_rng(6)
  rgb = rng.uniform(0, 1, (500, 3)).astype(np.float32)
  rgb[:50, 1] = rgb[:50, 0]  # ties between channels take TF's branch
  rgb[50:60] = rgb[50:60, :1]  # greys
  rgb[60] = 0
  hsv = tf.image.rgb_to_hsv(rgb).numpy()
  np.testing.assert_allclose(pixel_augment.rgb_to_hsv(rgb), hsv, rtol=0, atol=1e-6)
  hsv[:, 0] = rng.uniform(0, 1, 500)
  np.testing.assert_allclose(pixel_augment.hsv_to_rgb(hsv), tf.image.hsv_to_rgb(hsv), rtol=0,
                             atol=1e-6)


def _config(name="ssd300.py", variant=None):
  return config_utils.load_config(os.path.join(CONFIG_DIR, name), variant)


def test_one_example_end_to_end_equals_the_previous_tf_ops():
  config = _config()
  config.model.image_size = 40
  options = pixel_augment.Options.from_config(config)
  assert options.fill == tuple(255 * m for m in config.model.input_mean)
  rng = np.random.default_rng(7)
  augment = jax.jit(pixel_augment.augment_one, static_argnums=6)
  assert not options.channel_swap  # Caffe's configs keep the channel order: the host sends 0, 1, 2
  for case, (params, _) in enumerate(_photometric_cases(rng, 10)):
    order = (0, 1, 2)
    image, window = _image(case, 45, 60), WINDOWS[case % len(WINDOWS)]
    method = options.methods[case % len(options.methods)]
    pixels, inside = tf_resample(image, window, 40, method, options.fill)
    expected = tf_normalize(tf_photometric(pixels, inside, params, order, True),
                            options.mean, options.std)
    got = augment(_padded(image), np.int32([45, 60]), np.float32(window),
                  np.int32(options.methods.index(method)), np.float32(params), np.int32(order),
                  options)
    # ssd300's std is 1/255: normalised units are pixel units.
    np.testing.assert_allclose(got, expected, rtol=0, atol=END_TO_END_TOLERANCE,
                               err_msg=f"{method} {window}")


def test_a_batch_is_each_example_alone():
  options = pixel_augment.Options.from_config(_config("quickstart.py", "tiny"))
  images = np.stack([_padded(_image(i, *SHAPES[i])) for i in range(3)])
  batch = {"image": images, "image_size": np.int32([SHAPES[i] for i in range(3)]),
           "window": np.float32(WINDOWS[:3]), "method": np.zeros(3, np.int32),
           "photometric": np.float32([[10, 1.2, 1, 0.8, 0.05], [0, 1, 0, 1, 0], [-5, 0.7, 0, 1.3, -0.02]]),
           "channel_order": np.int32([[0, 1, 2]] * 3)}
  together = np.asarray(jax.jit(pixel_augment.augment, static_argnums=1)(batch, options))
  assert together.shape == (3, 64, 64, 3) and together.dtype == np.float32
  for b in range(3):
    alone = pixel_augment.augment_one(*(batch[k][b] for k in (
        "image", "image_size", "window", "method", "photometric", "channel_order")), options)
    np.testing.assert_allclose(together[b], alone, rtol=0, atol=1e-4)  # jit vs op by op
  assert pixel_augment.model_input(batch, options).shape == (3, 64, 64, 3)
  ready = {"image": together}
  assert pixel_augment.model_input(ready, options) is together


def test_unknown_resize_method_is_named():
  config = _config()
  config.augment.resize_methods = ("bilinear", "cubic")
  with pytest.raises(ValueError, match="config.augment.resize_methods"):
    pixel_augment.Options.from_config(config)
