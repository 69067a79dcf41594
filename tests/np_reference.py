"""Plain numpy/Python references of SSD's box math, written from the paper, for the tests.

Deliberately naive (loops, sorts) and independent of ssd_jax: no jax is imported here.
"""

import math

import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[N, 4] x [M, 4] xyxy -> [N, M]; 0 where the union is empty."""
  out = np.zeros((len(a), len(b)), np.float64)
  for i, (ax0, ay0, ax1, ay1) in enumerate(a.astype(np.float64)):
    for j, (bx0, by0, bx1, by1) in enumerate(b.astype(np.float64)):
      iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
      ih = max(0.0, min(ay1, by1) - max(ay0, by0))
      inter = iw * ih
      union = max(ax1 - ax0, 0) * max(ay1 - ay0, 0) + max(bx1 - bx0, 0) * max(by1 - by0, 0) - inter
      out[i, j] = inter / union if union > 0 else 0.0
  return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Vectorised twin of ``iou`` for large inputs (checked against it in the tests)."""
  a, b = a.astype(np.float64)[:, None], b.astype(np.float64)[None]
  iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0)
  ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0)
  inter = iw * ih
  area = lambda x: np.maximum(x[..., 2] - x[..., 0], 0) * np.maximum(x[..., 3] - x[..., 1], 0)
  union = area(a) + area(b) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def encode(box, prior, variances=(0.1, 0.2)):
  """One xyxy box against one cxcywh prior -> 4 offsets (paper eq. 2 with variances)."""
  x0, y0, x1, y1 = box
  pcx, pcy, pw, ph = prior
  cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
  return np.array([(cx - pcx) / (pw * variances[0]), (cy - pcy) / (ph * variances[0]),
                   math.log(w / pw) / variances[1], math.log(h / ph) / variances[1]])


def decode(offset, prior, variances=(0.1, 0.2)):
  """4 offsets against one cxcywh prior -> xyxy box."""
  pcx, pcy, pw, ph = prior
  cx = pcx + offset[0] * variances[0] * pw
  cy = pcy + offset[1] * variances[0] * ph
  w = pw * math.exp(offset[2] * variances[1])
  h = ph * math.exp(offset[3] * variances[1])
  return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def priors_cxcywh_to_xyxy(priors):
  return np.concatenate([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)


TIE = 1e-6  # IoUs this close count as tied: float32 inputs put real ties ~1e-8 apart


def match_torchvision(gt_boxes, gt_labels, gt_mask, priors, threshold=0.5, variances=(0.1, 0.2)):
  """The paper's matching with the PyTorch ports' tie rules (first index wins a tie, except that a
  later ground truth takes over a shared best prior), one ground truth at a time."""
  num_priors = len(priors)
  valid = [g for g in range(len(gt_boxes)) if gt_mask[g]]
  overlaps = iou_matrix(gt_boxes[valid], priors_cxcywh_to_xyxy(priors)) if valid else np.zeros((0, num_priors))
  assigned = np.full(num_priors, -1)
  best_overlap = np.full(num_priors, -1.0)
  # Threshold matching: each prior to its best ground truth (first on ties).
  for p in range(num_priors):
    for row, g in enumerate(valid):
      if overlaps[row, p] > best_overlap[p] + TIE:
        best_overlap[p], assigned[p] = overlaps[row, p], g
  positive = best_overlap >= threshold
  # Bipartite step: each ground truth forces its best prior (first on ties); later ones win.
  for row, g in enumerate(valid):
    if overlaps[row].max() > 0:
      p = int(np.flatnonzero(overlaps[row] >= overlaps[row].max() - TIE)[0])
      assigned[p], positive[p] = g, True
  loc = np.zeros((num_priors, 4))
  cls = np.zeros(num_priors, np.int64)
  for p in np.flatnonzero(positive):
    cls[p] = gt_labels[assigned[p]]
    loc[p] = encode(gt_boxes[assigned[p]], priors[p], variances)
  return loc, cls


def match_caffe(gt_boxes, gt_labels, gt_mask, priors, threshold=0.5, variances=(0.1, 0.2)):
  """A port of Caffe's MatchBBox (src/caffe/util/bbox_util.cpp, ssd branch) with match_type
  PER_PREDICTION and use_prior_for_matching, label -1 (all ground truths), followed by encoding.

  Caffe keeps the overlaps > 1e-6 per prediction in a map ordered by prediction index; the
  bipartite loop scans that map (predictions ascending) and, for each prediction, the remaining
  ground-truth pool (indices ascending), taking a pair only on a strictly larger overlap. Caffe's
  strict `>` is read with the TIE tolerance: the chosen pair is the first in that scan order whose
  overlap is within TIE of the largest one (for exact ties this is what Caffe picks).
  """
  num_priors = len(priors)
  valid = [g for g in range(len(gt_boxes)) if gt_mask[g]]  # Caffe's gt_indices
  match_indices = np.full(num_priors, -1)
  if valid:
    all_overlaps = iou_matrix(priors_cxcywh_to_xyxy(priors), gt_boxes[valid])  # [P, num_gt]
    overlaps = {i: {j: all_overlaps[i, j] for j in range(len(valid)) if all_overlaps[i, j] > 1e-6}
                for i in range(num_priors)}
    overlaps = {i: row for i, row in overlaps.items() if row}  # map<int, map<int, float>>
    # Bipartite matching.
    gt_pool = list(range(len(valid)))
    while gt_pool:
      pairs = [(i, j, row[j]) for i, row in overlaps.items() if match_indices[i] == -1
               for j in gt_pool if j in row]  # Caffe's scan order
      if not pairs:
        break  # cannot find a good match
      max_overlap = max(overlap for _, _, overlap in pairs)
      max_idx, max_gt_idx, _ = next(p for p in pairs if p[2] >= max_overlap - TIE)
      match_indices[max_idx] = valid[max_gt_idx]
      gt_pool.remove(max_gt_idx)
    # Per prediction: the rest take their best ground truth with overlap >= threshold.
    for i, row in overlaps.items():
      if match_indices[i] != -1:
        continue
      max_gt_idx, max_overlap = -1, -1.0
      for j in range(len(valid)):
        if j in row and row[j] >= threshold and row[j] > max_overlap + TIE:
          max_gt_idx, max_overlap = j, row[j]
      if max_gt_idx != -1:
        match_indices[i] = valid[max_gt_idx]
  loc = np.zeros((num_priors, 4))
  cls = np.zeros(num_priors, np.int64)
  for p in np.flatnonzero(match_indices >= 0):
    cls[p] = gt_labels[match_indices[p]]
    loc[p] = encode(gt_boxes[match_indices[p]], priors[p], variances)
  return loc, cls


def smooth_l1(x):
  x = np.abs(x)
  return np.where(x < 1, 0.5 * x * x, x - 0.5)


def log_softmax(logits):
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def hard_negatives(background_loss, positive, ratio):
  """Per image: the k = min(ratio * pos, neg) negatives of largest loss, ties to lower index,
  chosen by a stable sort (the reference's argsort approach)."""
  chosen = np.zeros_like(positive)
  for b in range(len(positive)):
    num_pos = int(positive[b].sum())
    k = min(int(ratio * num_pos), int((~positive[b]).sum()))
    candidates = np.flatnonzero(~positive[b])
    order = candidates[np.argsort(-background_loss[b, candidates], kind="stable")]
    chosen[b, order[:k]] = True
  return chosen


def multibox_loss(loc_pred, cls_logits, loc_targets, cls_targets, ratio=3, alpha=1.0):
  """Paper eq. 1: (L_conf + alpha L_loc) / N, N over the batch; 0 when N = 0."""
  loc_pred, cls_logits, loc_targets = (np.asarray(x, np.float64) for x in (loc_pred, cls_logits, loc_targets))
  positive = cls_targets > 0
  log_p = log_softmax(cls_logits)
  cross_entropy = -np.take_along_axis(log_p, cls_targets[..., None], -1)[..., 0]
  negative = hard_negatives(-log_p[..., 0], positive, ratio)
  loc = smooth_l1(loc_pred - loc_targets).sum(-1)[positive].sum()
  conf = cross_entropy[positive | negative].sum()
  n = positive.sum()
  if n == 0:
    return 0.0, 0.0, 0.0, negative
  return (conf + alpha * loc) / n, loc / n, conf / n, negative
