"""Matching priors to ground truth (SSD paper, section 2.2) for one image; vmap over a batch.

Two rules (``RULES``; ``config.matching.rule``), both in two stages:

"caffe" (default; Caffe's ``MatchBBox`` with ``match_type: PER_PREDICTION``, ``ssd_pascal.py``):
1. Greedy bipartite matching: repeatedly take the highest IoU among the ground truths and priors
   not matched yet, and match that pair, until every valid ground truth has its own prior (or no
   free prior overlaps it). Only IoUs > ``MIN_OVERLAP`` count (Caffe's ``overlap > 1e-6``).
2. Every prior still free with IoU >= ``iou_threshold`` to some valid ground truth is positive and
   takes its best ground truth (ties: the lowest ground-truth index).
Caffe scans priors in increasing index and, for each, the remaining ground truths in increasing
index, replacing the best pair only on a strictly larger IoU; so of equal IoUs the pair with the
lowest prior index wins, then the lowest ground-truth index. Here each remaining ground truth keeps
its best free prior (lowest index on ties) and the highest of those wins, ties going to the lower
prior index and then the lower ground-truth index: the same pair as Caffe's loop. A ground truth's
best free prior is recomputed (one pass over the priors) only when another ground truth has just
taken it, so the loop costs O(G + P) per step rather than Caffe's O(G P).

"torchvision" (the PyTorch ports, ``torchvision.models.detection.ssd``'s SSDMatcher):
1. Each valid ground truth takes the prior it overlaps most (even below the threshold). When several
   ground truths share that prior, the one with the highest index keeps it, so the others may get
   no prior at all (two near-identical small objects). Ties between priors go to the lowest index.
2. As above, over all priors.

Exact ties are common (an elongated box that contains a prior in one axis has the same IoU with
that prior's shifted neighbours), and float32 rounding would break them at random. So IoUs within
``TIE_TOLERANCE`` of the best count as tied: the tie rules hold whatever the rounding.
Padded rows (mask False) never match. A ground truth that overlaps no prior at all (zero area)
cannot be matched and is ignored rather than producing infinite offsets.
"""

import functools

import chex
import jax
import jax.numpy as jnp

from ssd_jax import boxes as box_lib

RULES = ("caffe", "torchvision")  # the values of config.matching.rule
TIE_TOLERANCE = 1e-6  # well above float32 rounding of an IoU (~1e-7), far below real gaps
MIN_OVERLAP = 1e-6  # Caffe's MatchBBox ignores overlaps <= 1e-6 (part of its rule, not a knob)


def first_argmax(values: jnp.ndarray, axis: int) -> jnp.ndarray:
  """Index of the first entry within TIE_TOLERANCE of the maximum along ``axis``."""
  best = jnp.max(values, axis=axis, keepdims=True)
  index = jax.lax.broadcasted_iota(jnp.int32, values.shape, axis % values.ndim)
  # A min-reduction of indices: XLA:CPU runs it several times faster than a variadic argmax.
  return jnp.min(jnp.where(values >= best - TIE_TOLERANCE, index, values.shape[axis]), axis=axis)


def _best_free_prior(row: jnp.ndarray, free: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Best free prior of one ground truth: ([] IoU, or -1 if none overlaps; [] int32 index)."""
  values = jnp.where(free, row, -1.0)
  return jnp.max(values), first_argmax(values, axis=0)


def caffe_bipartite(overlaps: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Caffe's greedy bipartite stage on [G, P] IoUs (-1 where a pair must not match).

  Returns (owner [P] int32: the ground truth each prior was matched to, -1 for none;
  taken [P] bool). A ``lax.while_loop`` with a static carry; each step either refreshes one
  ground truth whose best free prior was just taken (the lowest such index), or matches the best
  pair. It runs (matched ground truths + refreshes) steps, at most G (G + 1) / 2 (G duplicates).
  """
  num_gt, num_priors = overlaps.shape
  gt_index = jnp.arange(num_gt, dtype=jnp.int32)

  def active(carry):
    pool, best_value = carry[0], carry[1]
    return pool & (best_value > 0)

  def step(carry):
    pool, best_value, best_prior, taken, owner = carry
    candidates = active(carry)
    stale = candidates & taken[best_prior]
    refresh = jnp.any(stale)
    row = jnp.min(jnp.where(stale, gt_index, num_gt - 1))
    new_value, new_prior = _best_free_prior(overlaps[row], ~taken)
    # The best pair: highest IoU, then the lowest prior index, then the lowest gt index.
    top = jnp.max(jnp.where(candidates, best_value, -1.0))
    key = jnp.where(candidates & (best_value >= top - TIE_TOLERANCE),
                    best_prior * num_gt + gt_index, num_priors * num_gt)
    pick = jnp.min(key)
    gt, prior = pick % num_gt, jnp.minimum(pick // num_gt, num_priors - 1)
    match = ~refresh
    return (pool.at[gt].set(pool[gt] & refresh),
            best_value.at[row].set(jnp.where(refresh, new_value, best_value[row])),
            best_prior.at[row].set(jnp.where(refresh, new_prior, best_prior[row])),
            taken.at[prior].set(taken[prior] | match),
            owner.at[prior].set(jnp.where(match, gt, owner[prior])))

  init = (overlaps.max(axis=1) > 0, overlaps.max(axis=1), first_argmax(overlaps, axis=1),
          jnp.zeros(num_priors, bool), jnp.full(num_priors, -1, jnp.int32))
  _, _, _, taken, owner = jax.lax.while_loop(lambda c: jnp.any(active(c)), step, init)
  return owner, taken


def torchvision_forced(overlaps: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Each ground truth forces its best prior, the later one keeping a shared prior.

  [G, P] IoUs (-1 for padded rows) -> (owner [P] int32, -1 for none; forced [P] bool).
  """
  num_gt, num_priors = overlaps.shape
  best_prior = first_argmax(overlaps, axis=1)  # [G]
  can_force = jnp.max(overlaps, axis=1) > 0  # [G]: padded and zero-area rows cannot
  # Scatter-max makes "the highest ground-truth index keeps a shared best prior" deterministic.
  owner = jnp.full(num_priors, -1, jnp.int32).at[best_prior].max(
      jnp.where(can_force, jnp.arange(num_gt, dtype=jnp.int32), -1))  # [P]
  return owner, owner >= 0


def match(gt_boxes: jnp.ndarray, gt_labels: jnp.ndarray, gt_mask: jnp.ndarray,
          priors: jnp.ndarray, iou_threshold: float = 0.5,
          variances: box_lib.Variances = box_lib.DEFAULT_VARIANCES, rule: str = "caffe",
          ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Matches one image's padded ground truth to the priors.

  Args:
    gt_boxes: [G, 4] xyxy in [0, 1]; padded rows may hold anything.
    gt_labels: [G] int, 1..C-1 for real objects.
    gt_mask: [G] bool, False for padded rows.
    priors: [P, 4] cxcywh.
    iou_threshold: a prior is positive when its IoU with a ground truth is >= this.
    variances: encoding variances (centre, size).
    rule: one of ``RULES`` (module docstring).

  Returns:
    loc_targets: [P, 4] float32 encoded offsets of each prior's ground truth (0 for background).
    cls_targets: [P] int32 class of each prior, 0 for background.
  """
  if rule not in RULES:
    raise ValueError(f"matching rule: expected one of {RULES}, got {rule!r}")
  chex.assert_rank([gt_boxes, gt_labels, gt_mask, priors], [2, 1, 1, 2])
  chex.assert_equal_shape_prefix([gt_boxes, gt_labels, gt_mask], 1)
  chex.assert_axis_dimension(gt_boxes, 1, 4)
  chex.assert_axis_dimension(priors, 1, 4)
  chex.assert_type(gt_mask, bool)
  chex.assert_type(gt_labels, int)

  overlaps = box_lib.iou(gt_boxes.astype(jnp.float32), box_lib.cxcywh_to_xyxy(priors))  # [G, P]
  # Excluded pairs get -1 so they never win an argmax against a real (>= 0) overlap.
  usable = gt_mask[:, None] & (overlaps > MIN_OVERLAP if rule == "caffe" else True)
  overlaps = jnp.where(usable, overlaps, -1.0)

  best_gt = first_argmax(overlaps, axis=0)  # [P]
  best_gt_overlap = jnp.max(overlaps, axis=0)  # [P]
  owner, is_forced = (caffe_bipartite if rule == "caffe" else torchvision_forced)(overlaps)

  assigned_gt = jnp.where(is_forced, owner, best_gt)  # [P]
  positive = is_forced | (best_gt_overlap >= iou_threshold)  # [P]

  cls_targets = jnp.where(positive, gt_labels[assigned_gt], 0).astype(jnp.int32)
  matched_boxes = gt_boxes[assigned_gt].astype(jnp.float32)  # [P, 4]
  # Background priors get a harmless unit box so that no inf/NaN is ever computed.
  safe_boxes = jnp.where(positive[:, None], matched_boxes, box_lib.cxcywh_to_xyxy(priors))
  loc_targets = box_lib.encode(safe_boxes, priors, variances)
  loc_targets = jnp.where(positive[:, None], loc_targets, 0.0)
  return loc_targets, cls_targets


def match_batch(gt_boxes: jnp.ndarray, gt_labels: jnp.ndarray, gt_mask: jnp.ndarray,
                priors: jnp.ndarray, iou_threshold: float = 0.5,
                variances: box_lib.Variances = box_lib.DEFAULT_VARIANCES, rule: str = "caffe",
                ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``match`` over a batch: [B, G, 4], [B, G], [B, G] -> ([B, P, 4], [B, P])."""
  match_one = functools.partial(match, priors=priors, iou_threshold=iou_threshold,
                                variances=variances, rule=rule)
  return jax.vmap(match_one)(gt_boxes, gt_labels, gt_mask)
