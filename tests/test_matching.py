"""Matching priors to ground truth, against the paper-style loop reference and its invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import np_reference as ref
from conftest import random_boxes
from ssd_jax import boxes, matching

MAX_BOXES = 12


def is_well_conditioned(gt, mask, priors, low=1e-7, high=1e-5):
  """False when float rounding could flip a decision: an IoU within ``high`` of the 0.5
  threshold, or two IoUs that are neither tied (closer than ``low``) nor clearly apart."""
  overlaps = ref.iou_matrix(gt[mask], ref.priors_cxcywh_to_xyxy(priors))
  if overlaps.size == 0:
    return True
  top_priors = np.sort(overlaps, axis=1)[:, -2:]
  gap_priors = top_priors[:, 1] - top_priors[:, 0]
  top_gts = np.sort(overlaps, axis=0)[-2:] if len(overlaps) > 1 else np.zeros((2, 1))
  gap_gts = top_gts[1] - top_gts[0]
  ambiguous = lambda gap: (gap > low) & (gap < high)
  return not (np.any(ambiguous(gap_priors)) or np.any(ambiguous(gap_gts) & (top_gts[1] > 0.5 - high))
              or np.any(np.abs(overlaps - 0.5) < high))


def padded_image(rng, num_valid, priors=None, max_boxes=MAX_BOXES):
  """Random padded ground truth: valid rows first, padding holds junk that must never match.
  With ``priors``, draws again until the image is well conditioned against them."""
  while True:
    gt = random_boxes(rng, max_boxes, min_size=0.03)
    labels = rng.integers(1, 21, size=max_boxes).astype(np.int32)
    mask = np.arange(max_boxes) < num_valid
    labels[~mask] = 99  # a label no valid row has: must never reach a target
    if priors is None or is_well_conditioned(gt, mask, priors):
      return gt, labels, mask


def test_vectorised_reference_iou_agrees_with_loop_reference():
  rng = np.random.default_rng(0)
  a, b = random_boxes(rng, 7), random_boxes(rng, 11)
  b[2] = 0.0
  np.testing.assert_allclose(ref.iou_matrix(a, b), ref.iou(a, b), atol=1e-12)


@pytest.mark.parametrize("num_valid", [0, 1, 3, MAX_BOXES])
def test_match_equals_reference(ssd300_priors, num_valid):
  rng = np.random.default_rng(num_valid)
  gt, labels, mask = padded_image(rng, num_valid, ssd300_priors)
  loc, cls = jax.jit(matching.match)(gt, labels, mask, ssd300_priors)
  ref_loc, ref_cls = ref.match(gt, labels, mask, ssd300_priors)
  np.testing.assert_array_equal(cls, ref_cls)
  np.testing.assert_allclose(loc, ref_loc, rtol=1e-4, atol=1e-4)
  assert 99 not in np.asarray(cls)
  if num_valid == 0:
    assert not np.any(cls) and not np.any(loc)


def test_every_valid_ground_truth_is_matched_and_decodes_back(ssd300_priors):
  rng = np.random.default_rng(7)
  gt, labels, mask = padded_image(rng, 8)
  labels[:8] = np.arange(1, 9)  # one distinct label per object, to trace its priors
  loc, cls = matching.match(gt, labels, mask, ssd300_priors)
  cls = np.asarray(cls)
  for g in range(8):
    rows = np.flatnonzero(cls == labels[g])
    assert rows.size >= 1, f"ground truth {g} got no prior"
    np.testing.assert_allclose(boxes.decode(loc[rows], ssd300_priors[rows]),
                               np.broadcast_to(gt[g], (rows.size, 4)), atol=1e-5)


def test_small_box_is_forced_onto_its_best_prior_below_threshold(ssd300_priors):
  tiny = np.array([[0.50, 0.50, 0.51, 0.51]], np.float32)  # IoU with any prior << 0.5
  _, cls = matching.match(tiny, np.array([4], np.int32), np.array([True]), ssd300_priors)
  best = np.argmax(ref.iou_matrix(tiny, ref.priors_cxcywh_to_xyxy(ssd300_priors))[0])
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(cls)), [best])


def test_shared_best_prior_goes_to_the_later_ground_truth(ssd300_priors):
  same = np.array([[0.50, 0.50, 0.51, 0.51], [0.50, 0.50, 0.51, 0.51]], np.float32)
  _, cls = matching.match(same, np.array([3, 8], np.int32), np.array([True, True]), ssd300_priors)
  assert sorted(set(np.asarray(cls).tolist())) == [0, 8]


def test_exact_ties_follow_the_documented_rules():
  # Priors 0 and 1 are identical; prior 2 overlaps the ground truth with IoU 0.5 exactly.
  priors = np.array([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], [0.5, 0.375, 0.5, 0.25]],
                    np.float32)
  gt = np.array([[0.25, 0.25, 0.75, 0.75]] * 2, np.float32)
  _, cls = matching.match(gt, np.array([3, 8], np.int32), np.array([True, True]), priors)
  # Both ground truths force prior 0 (lowest index of the tie); the later one keeps it.
  # Priors 1 and 2 pass the threshold and go to their best ground truth, the first on ties.
  np.testing.assert_array_equal(cls, [8, 3, 3])


def test_threshold_is_inclusive():
  priors = np.array([[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1]], np.float32)
  # Prior 0 is [0.25, 0.75]^2 (area 1/4); a box [0.25,0.75]x[0.25,0.5] has IoU exactly 0.5.
  gt = np.array([[0.25, 0.25, 0.75, 0.50], [0.0, 0.0, 0.2, 0.2]], np.float32)
  _, cls = matching.match(gt, np.array([1, 2], np.int32), np.array([True, True]), priors)
  np.testing.assert_array_equal(cls, [1, 2])


def test_zero_area_ground_truth_never_produces_nan(ssd300_priors):
  gt = np.array([[0.3, 0.3, 0.3, 0.6], [0.1, 0.1, 0.4, 0.4]], np.float32)
  loc, cls = matching.match(gt, np.array([5, 6], np.int32), np.array([True, True]), ssd300_priors)
  assert np.all(np.isfinite(loc)) and 5 not in np.asarray(cls) and 6 in np.asarray(cls)


def test_match_batch_equals_per_image_match(ssd300_priors):
  rng = np.random.default_rng(3)
  images = [padded_image(rng, n, ssd300_priors) for n in (0, 2, 5)]
  gt, labels, mask = (np.stack(parts) for parts in zip(*images))
  loc, cls = jax.jit(matching.match_batch)(gt, labels, mask, ssd300_priors)
  assert loc.shape == (3, 8732, 4) and cls.shape == (3, 8732) and cls.dtype == jnp.int32
  for b, image in enumerate(images):
    one_loc, one_cls = matching.match(*image, ssd300_priors)
    np.testing.assert_array_equal(cls[b], one_cls)
    np.testing.assert_allclose(loc[b], one_loc, atol=1e-6)


def test_bad_inputs_raise_at_trace_time(ssd300_priors):
  gt, labels, mask = padded_image(np.random.default_rng(0), 2)
  with pytest.raises(AssertionError):
    matching.match(gt[:, :3], labels, mask, ssd300_priors)
  with pytest.raises(AssertionError):
    matching.match(gt, labels[:5], mask, ssd300_priors)
  with pytest.raises(AssertionError):
    matching.match(gt, labels, mask.astype(np.int32), ssd300_priors)
  with pytest.raises(AssertionError):
    matching.match(gt, labels.astype(np.float32), mask, ssd300_priors)
