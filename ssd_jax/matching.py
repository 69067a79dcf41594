"""Matching priors to ground truth (SSD paper, section 2.2) for one image; vmap over a batch.

1. Each valid ground truth takes the prior it overlaps most (even below the threshold).
   When several ground truths share that prior, the one with the highest index keeps it
   (as the widely used PyTorch ports do; DESIGN.md). Ties between priors go to the lowest index.
2. Every other prior with IoU >= ``iou_threshold`` to some valid ground truth is positive and
   takes its best ground truth (ties: the lowest ground-truth index).
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

TIE_TOLERANCE = 1e-6  # well above float32 rounding of an IoU (~1e-7), far below real gaps


def first_argmax(values: jnp.ndarray, axis: int) -> jnp.ndarray:
  """Index of the first entry within TIE_TOLERANCE of the maximum along ``axis``."""
  best = jnp.max(values, axis=axis, keepdims=True)
  index = jax.lax.broadcasted_iota(jnp.int32, values.shape, axis % values.ndim)
  # A min-reduction of indices: XLA:CPU runs it several times faster than a variadic argmax.
  return jnp.min(jnp.where(values >= best - TIE_TOLERANCE, index, values.shape[axis]), axis=axis)


def match(gt_boxes: jnp.ndarray, gt_labels: jnp.ndarray, gt_mask: jnp.ndarray,
          priors: jnp.ndarray, iou_threshold: float = 0.5,
          variances: box_lib.Variances = box_lib.DEFAULT_VARIANCES,
          ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Matches one image's padded ground truth to the priors.

  Args:
    gt_boxes: [G, 4] xyxy in [0, 1]; padded rows may hold anything.
    gt_labels: [G] int, 1..C-1 for real objects.
    gt_mask: [G] bool, False for padded rows.
    priors: [P, 4] cxcywh.
    iou_threshold: a prior is positive when its IoU with a ground truth is >= this.
    variances: encoding variances (centre, size).

  Returns:
    loc_targets: [P, 4] float32 encoded offsets of each prior's ground truth (0 for background).
    cls_targets: [P] int32 class of each prior, 0 for background.
  """
  chex.assert_rank([gt_boxes, gt_labels, gt_mask, priors], [2, 1, 1, 2])
  chex.assert_equal_shape_prefix([gt_boxes, gt_labels, gt_mask], 1)
  chex.assert_axis_dimension(gt_boxes, 1, 4)
  chex.assert_axis_dimension(priors, 1, 4)
  chex.assert_type(gt_mask, bool)
  chex.assert_type(gt_labels, int)
  num_gt = gt_boxes.shape[0]

  overlaps = box_lib.iou(gt_boxes.astype(jnp.float32), box_lib.cxcywh_to_xyxy(priors))  # [G, P]
  # Padded rows get -1 so they never win an argmax against a real (>= 0) overlap.
  overlaps = jnp.where(gt_mask[:, None], overlaps, -1.0)

  best_gt = first_argmax(overlaps, axis=0)  # [P]
  best_gt_overlap = jnp.max(overlaps, axis=0)  # [P]

  best_prior = first_argmax(overlaps, axis=1)  # [G]
  can_force = gt_mask & (jnp.max(overlaps, axis=1) > 0)  # [G]
  # Scatter-max makes "the highest ground-truth index keeps a shared best prior" deterministic.
  forced_gt = jnp.full(priors.shape[0], -1, jnp.int32).at[best_prior].max(
      jnp.where(can_force, jnp.arange(num_gt, dtype=jnp.int32), -1))  # [P]
  is_forced = forced_gt >= 0

  assigned_gt = jnp.where(is_forced, forced_gt, best_gt)  # [P]
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
                variances: box_lib.Variances = box_lib.DEFAULT_VARIANCES,
                ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``match`` over a batch: [B, G, 4], [B, G], [B, G] -> ([B, P, 4], [B, P])."""
  match_one = functools.partial(match, priors=priors, iou_threshold=iou_threshold,
                                variances=variances)
  return jax.vmap(match_one)(gt_boxes, gt_labels, gt_mask)
