"""ssd_jax.boxes against the plain numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import np_reference as ref
from conftest import random_boxes
from ssd_jax import boxes


def test_iou_matches_reference_with_zero_area_boxes():
  rng = np.random.default_rng(0)
  a = random_boxes(rng, 12)
  b = random_boxes(rng, 9)
  a[3] = [0.2, 0.2, 0.2, 0.5]  # zero width
  b[4] = [0.3, 0.3, 0.3, 0.3]  # a point
  b[5] = [0.3, 0.3, 0.3, 0.3]
  got = np.asarray(jax.jit(boxes.iou)(a, b))
  np.testing.assert_allclose(got, ref.iou(a, b), atol=1e-6)
  assert np.all(np.isfinite(got))
  assert got[3].max() == 0 and got[:, 4].max() == 0


def test_iou_worked_example():
  a = np.array([[0.0, 0.0, 0.5, 0.5]], np.float32)
  b = np.array([[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]], np.float32)
  # Overlap 0.25^2 = 1/16, union 2 * 1/4 - 1/16 = 7/16 -> 1/7.
  np.testing.assert_allclose(boxes.iou(a, b), [[1 / 7, 1.0, 0.0]], rtol=1e-6)


def test_iou_of_two_empty_boxes_is_zero_not_nan():
  empty = jnp.zeros((1, 4))
  assert float(boxes.iou(empty, empty)[0, 0]) == 0.0
  assert float(jax.grad(lambda x: boxes.iou(x, empty).sum())(empty).sum()) == 0.0


def test_format_conversions_round_trip():
  rng = np.random.default_rng(1)
  xyxy = random_boxes(rng, 50)
  cxcywh = boxes.xyxy_to_cxcywh(xyxy)
  np.testing.assert_allclose(cxcywh[:, 2:], xyxy[:, 2:] - xyxy[:, :2], atol=1e-7)
  np.testing.assert_allclose(boxes.cxcywh_to_xyxy(cxcywh), xyxy, atol=1e-6)


def test_encode_decode_match_reference_and_invert(ssd300_priors):
  rng = np.random.default_rng(2)
  idx = rng.choice(len(ssd300_priors), 200, replace=False)
  priors = ssd300_priors[idx]
  gt = random_boxes(rng, 200)
  encoded = np.asarray(jax.jit(boxes.encode)(gt, priors))
  expected = np.stack([ref.encode(g, p) for g, p in zip(gt, priors)])
  np.testing.assert_allclose(encoded, expected, rtol=1e-5, atol=1e-4)
  decoded = np.asarray(jax.jit(boxes.decode)(encoded, priors))
  np.testing.assert_allclose(decoded, gt, atol=1e-5)
  offsets = rng.normal(size=(200, 4)).astype(np.float32)
  np.testing.assert_allclose(boxes.decode(offsets, priors),
                             np.stack([ref.decode(o, p) for o, p in zip(offsets, priors)]), atol=1e-5)


def test_custom_variances_are_used():
  prior = np.array([[0.5, 0.5, 0.2, 0.2]], np.float32)
  box = np.array([[0.45, 0.45, 0.65, 0.65]], np.float32)
  np.testing.assert_allclose(boxes.encode(box, prior, (0.5, 1.0)),
                             ref.encode(box[0], prior[0], (0.5, 1.0))[None], atol=1e-6)


def test_bad_shapes_and_dtypes_raise_clear_errors():
  with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
    boxes.iou(jnp.zeros((3, 5)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"\[N, 4\]"):
    boxes.iou(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4)))
  with pytest.raises(TypeError, match="floating"):
    boxes.encode(jnp.zeros((3, 4), jnp.int32), jnp.ones((3, 4)))
