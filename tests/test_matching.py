"""Matching priors to ground truth, against the numpy references (a port of Caffe's MatchBBox and
the PyTorch ports' rule) and their invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import np_reference as ref
from conftest import random_boxes
from ssd_jax import boxes, matching

MAX_BOXES = 12
REFERENCES = {"caffe": ref.match_caffe, "torchvision": ref.match_torchvision}
assert set(REFERENCES) == set(matching.RULES)


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
  # The greedy bipartite stage compares each ground truth's best free priors (among its top G)
  # with those of the others; Caffe's rule also drops overlaps <= 1e-6.
  top = np.sort(overlaps, axis=1)[:, -len(overlaps):].ravel()
  return not (np.any(ambiguous(gap_priors)) or np.any(ambiguous(gap_gts) & (top_gts[1] > 0.5 - high))
              or np.any(np.abs(overlaps - 0.5) < high)
              or np.any(ambiguous(np.abs(top[:, None] - top[None])))
              or np.any((overlaps > 0) & (overlaps < high)))


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


def crowded_image(rng, num_valid, priors):
  """Like ``padded_image`` with the hard cases of the greedy stage: small boxes (below any prior's
  IoU 0.5), exact duplicates and near-duplicates (shifted by one pixel of 300)."""
  while True:
    gt, labels, mask = padded_image(rng, num_valid)
    small = rng.random(MAX_BOXES) < 0.5
    gt[small] = random_boxes(rng, int(small.sum()), min_size=0.02) * 0.1 + rng.uniform(0, 0.9, (int(small.sum()), 1))
    for g in range(1, num_valid):
      kind = rng.integers(3)  # 0: keep, 1: exact copy of an earlier box, 2: one pixel off it
      if kind:
        gt[g] = gt[rng.integers(g)] + (0 if kind == 1 else rng.choice([-1, 1], 4) / 300)
    gt = np.clip(gt, 0, 1).astype(np.float32)
    if is_well_conditioned(gt, mask, priors):
      return gt, labels, mask


def test_vectorised_reference_iou_agrees_with_loop_reference():
  rng = np.random.default_rng(0)
  a, b = random_boxes(rng, 7), random_boxes(rng, 11)
  b[2] = 0.0
  np.testing.assert_allclose(ref.iou_matrix(a, b), ref.iou(a, b), atol=1e-12)


@pytest.mark.parametrize("rule", matching.RULES)
@pytest.mark.parametrize("num_valid", [0, 1, 3, MAX_BOXES])
def test_match_equals_reference(ssd300_priors, num_valid, rule):
  rng = np.random.default_rng(num_valid)
  gt, labels, mask = padded_image(rng, num_valid, ssd300_priors)
  loc, cls = jax.jit(matching.match, static_argnames="rule")(gt, labels, mask, ssd300_priors,
                                                             rule=rule)
  ref_loc, ref_cls = REFERENCES[rule](gt, labels, mask, ssd300_priors)
  np.testing.assert_array_equal(cls, ref_cls)
  np.testing.assert_allclose(loc, ref_loc, rtol=1e-4, atol=1e-4)
  assert 99 not in np.asarray(cls)
  if num_valid == 0:
    assert not np.any(cls) and not np.any(loc)


def test_caffe_rule_equals_caffe_port_on_crowded_images(ssd300_priors):
  rng = np.random.default_rng(11)
  images = [crowded_image(rng, n, ssd300_priors) for n in range(MAX_BOXES + 1)]
  gt, labels, mask = (np.stack(parts) for parts in zip(*images))
  loc, cls = jax.jit(matching.match_batch)(gt, labels, mask, ssd300_priors)
  for b, image in enumerate(images):
    ref_loc, ref_cls = ref.match_caffe(*image, ssd300_priors)
    np.testing.assert_array_equal(cls[b], ref_cls, err_msg=f"image {b}")
    np.testing.assert_allclose(loc[b], ref_loc, rtol=1e-4, atol=1e-4, err_msg=f"image {b}")


def test_caffe_rule_gives_every_ground_truth_its_own_prior(ssd300_priors):
  rng = np.random.default_rng(5)
  for num_valid in (2, 7, MAX_BOXES):
    gt, labels, mask = crowded_image(rng, num_valid, ssd300_priors)
    labels[:] = np.arange(1, MAX_BOXES + 1)  # one label per object, to trace its priors
    _, cls = matching.match(gt, labels, mask, ssd300_priors)
    assert set(np.asarray(cls).tolist()) - {0} == set(range(1, num_valid + 1))


def test_near_duplicate_small_objects_each_get_a_prior_under_caffe_rule(ssd300_priors):
  # Two 14 px objects of a 300 px image one pixel apart: no prior reaches IoU 0.5 with either, and
  # both have the same best prior. The torchvision rule leaves the first one without any prior.
  first = np.array([150, 150, 164, 164], np.float32) / 300
  gt = np.stack([first, first + 1 / 300])
  labels, mask = np.array([3, 8], np.int32), np.array([True, True])
  overlaps = ref.iou_matrix(gt, ref.priors_cxcywh_to_xyxy(ssd300_priors))
  best = [np.flatnonzero(row >= row.max() - ref.TIE)[0] for row in overlaps]  # lowest on ties
  assert overlaps.max() < 0.5 and best[0] == best[1]
  _, cls = matching.match(gt, labels, mask, ssd300_priors)
  assert sorted(np.asarray(cls)[np.asarray(cls) > 0].tolist()) == [3, 8]
  _, cls = matching.match(gt, labels, mask, ssd300_priors, rule="torchvision")
  assert np.asarray(cls)[np.asarray(cls) > 0].tolist() == [8]


@pytest.mark.parametrize("rule", matching.RULES)
def test_every_valid_ground_truth_is_matched_and_decodes_back(ssd300_priors, rule):
  rng = np.random.default_rng(7)
  gt, labels, mask = padded_image(rng, 8)
  labels[:8] = np.arange(1, 9)  # one distinct label per object, to trace its priors
  loc, cls = matching.match(gt, labels, mask, ssd300_priors, rule=rule)
  cls = np.asarray(cls)
  for g in range(8):
    rows = np.flatnonzero(cls == labels[g])
    assert rows.size >= 1, f"ground truth {g} got no prior"
    np.testing.assert_allclose(boxes.decode(loc[rows], ssd300_priors[rows]),
                               np.broadcast_to(gt[g], (rows.size, 4)), atol=1e-5)


@pytest.mark.parametrize("rule", matching.RULES)
def test_small_box_is_forced_onto_its_best_prior_below_threshold(ssd300_priors, rule):
  tiny = np.array([[0.50, 0.50, 0.51, 0.51]], np.float32)  # IoU with any prior << 0.5
  _, cls = matching.match(tiny, np.array([4], np.int32), np.array([True]), ssd300_priors, rule=rule)
  best = np.argmax(ref.iou_matrix(tiny, ref.priors_cxcywh_to_xyxy(ssd300_priors))[0])
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(cls)), [best])


def test_torchvision_rule_gives_a_shared_best_prior_to_the_later_ground_truth(ssd300_priors):
  same = np.array([[0.50, 0.50, 0.51, 0.51], [0.50, 0.50, 0.51, 0.51]], np.float32)
  _, cls = matching.match(same, np.array([3, 8], np.int32), np.array([True, True]), ssd300_priors,
                          rule="torchvision")
  assert sorted(set(np.asarray(cls).tolist())) == [0, 8]


def test_caffe_rule_exact_ties_follow_caffes_scan_order():
  # Priors 0 and 1 are identical; prior 2 overlaps both (identical) ground truths with IoU 0.5.
  priors = np.array([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], [0.5, 0.375, 0.5, 0.25]],
                    np.float32)
  gt = np.array([[0.25, 0.25, 0.75, 0.75]] * 2, np.float32)
  labels, mask = np.array([3, 8], np.int32), np.array([True, True])
  _, cls = matching.match(gt, labels, mask, priors)
  # Bipartite: the four IoU-1 pairs tie; the lowest prior with the lowest ground truth goes first
  # (prior 0 -> gt 0), then prior 1 -> gt 1. Prior 2 passes the threshold: first ground truth.
  np.testing.assert_array_equal(cls, [3, 8, 3])
  np.testing.assert_array_equal(ref.match_caffe(gt, labels, mask, priors)[1], [3, 8, 3])


def test_caffe_rule_ignores_overlaps_up_to_1e_6(ssd300_priors):
  # A sliver 1e-7 wide: its IoU with every prior is below 1e-6, so Caffe never matches it.
  sliver = np.array([[0.1, 0.1, 0.1 + 1e-7, 0.15], [0.4, 0.4, 0.6, 0.6]], np.float32)
  labels, mask = np.array([5, 6], np.int32), np.array([True, True])
  assert 0 < ref.iou_matrix(sliver, ref.priors_cxcywh_to_xyxy(ssd300_priors))[0].max() < 1e-6
  _, cls = matching.match(sliver, labels, mask, ssd300_priors)
  assert set(np.asarray(cls).tolist()) == {0, 6}
  _, cls = matching.match(sliver, labels, mask, ssd300_priors, rule="torchvision")
  assert set(np.asarray(cls).tolist()) == {0, 5, 6}


def test_torchvision_rule_exact_ties_follow_the_documented_rules():
  # Priors 0 and 1 are identical; prior 2 overlaps the ground truth with IoU 0.5 exactly.
  priors = np.array([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], [0.5, 0.375, 0.5, 0.25]],
                    np.float32)
  gt = np.array([[0.25, 0.25, 0.75, 0.75]] * 2, np.float32)
  _, cls = matching.match(gt, np.array([3, 8], np.int32), np.array([True, True]), priors,
                          rule="torchvision")
  # Both ground truths force prior 0 (lowest index of the tie); the later one keeps it.
  # Priors 1 and 2 pass the threshold and go to their best ground truth, the first on ties.
  np.testing.assert_array_equal(cls, [8, 3, 3])


@pytest.mark.parametrize("rule", matching.RULES)
def test_threshold_is_inclusive(rule):
  priors = np.array([[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1]], np.float32)
  # Prior 0 is [0.25, 0.75]^2 (area 1/4); a box [0.25,0.75]x[0.25,0.5] has IoU exactly 0.5.
  gt = np.array([[0.25, 0.25, 0.75, 0.50], [0.0, 0.0, 0.2, 0.2]], np.float32)
  _, cls = matching.match(gt, np.array([1, 2], np.int32), np.array([True, True]), priors, rule=rule)
  np.testing.assert_array_equal(cls, [1, 2])


@pytest.mark.parametrize("rule", matching.RULES)
def test_zero_area_ground_truth_never_produces_nan(ssd300_priors, rule):
  gt = np.array([[0.3, 0.3, 0.3, 0.6], [0.1, 0.1, 0.4, 0.4]], np.float32)
  loc, cls = matching.match(gt, np.array([5, 6], np.int32), np.array([True, True]), ssd300_priors,
                            rule=rule)
  assert np.all(np.isfinite(loc)) and 5 not in np.asarray(cls) and 6 in np.asarray(cls)


@pytest.mark.parametrize("rule", matching.RULES)
def test_match_batch_equals_per_image_match(ssd300_priors, rule):
  rng = np.random.default_rng(3)
  images = [padded_image(rng, n, ssd300_priors) for n in (0, 2, 5)]
  gt, labels, mask = (np.stack(parts) for parts in zip(*images))
  loc, cls = jax.jit(matching.match_batch, static_argnames="rule")(gt, labels, mask, ssd300_priors,
                                                                   rule=rule)
  assert loc.shape == (3, 8732, 4) and cls.shape == (3, 8732) and cls.dtype == jnp.int32
  for b, image in enumerate(images):
    one_loc, one_cls = matching.match(*image, ssd300_priors, rule=rule)
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
  with pytest.raises(ValueError, match="matching rule"):
    matching.match(gt, labels, mask, ssd300_priors, rule="bipartite")
