"""PASCAL VOC detection AP, as the official MATLAB devkit computes it (VOCevaldet.m, VOCap.m).

Boxes are xyxy in pixels of the original image, in the annotation's own numbers (VOC's 1-based
inclusive pixel coordinates): areas and intersections count inclusive pixels, w = x2 - x1 + 1.
Per class, detections of all images are ranked by descending score; equal scores keep their input
order (MATLAB's sort is stable): image by image, then within an image as given. Each detection
goes to the ground truth of its image it overlaps most (the first on ties, difficult ones
included) and is
- a true positive when that IoU is >= ``iou_threshold`` (the devkit's ``ovmax >= minoverlap``;
  py-faster-rcnn's voc_eval.py uses ``>``) and the ground truth is not yet taken;
- a false positive when the IoU is lower or the ground truth was taken by a better detection;
- ignored (neither) when that ground truth is "difficult".
Recall counts the non-difficult ground truth. AP is the VOC2007 11-point average (recall
thresholds exactly k / 10, k = 0..10) or the VOC2010+ area under the monotone precision envelope.
Classes without non-difficult ground truth have no AP: they are left out of the mAP and listed.
"""

from collections.abc import Sequence

import numpy as np

from ssd_jax.evaluation.collector import ImageDetections, ImageGroundTruth

_CHUNK = 8192  # detections per IoU block: bounds the [D, G] temporaries


def inclusive_iou(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Devkit IoU of boxes [D, 4] with gt [D, G, 4] (inclusive pixels) -> [D, G].

  Pairs that do not intersect (inclusive width or height <= 0) get -inf, as the devkit never
  considers them.
  """
  boxes = boxes[:, None, :]
  iw = np.minimum(boxes[..., 2], gt[..., 2]) - np.maximum(boxes[..., 0], gt[..., 0]) + 1
  ih = np.minimum(boxes[..., 3], gt[..., 3]) - np.maximum(boxes[..., 1], gt[..., 1]) + 1
  intersection = iw * ih
  union = ((boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)
           + (gt[..., 2] - gt[..., 0] + 1) * (gt[..., 3] - gt[..., 1] + 1) - intersection)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where((iw > 0) & (ih > 0), intersection / union, -np.inf)


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
  """AP of a precision/recall curve [D] (detections by descending score)."""
  if use_07_metric:
    # max(prec(rec >= t)) for t = 0:0.1:1, 0 where no point reaches t (VOC2007 VOCevaldet.m).
    points = [precision[recall >= k / 10].max(initial=0.0) for k in range(11)]
    return float(np.sum(points) / 11)
  recall = np.concatenate([[0.0], recall, [1.0]])
  envelope = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
  steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
  return float(np.sum((recall[steps] - recall[steps - 1]) * envelope[steps]))


def _padded_ground_truth(ground_truths: Sequence[ImageGroundTruth], label: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Ground truth of one class -> boxes [I, G, 4], present [I, G], difficult [I, G]."""
  per_image = [(b[l == label], d[l == label]) for b, l, d in ground_truths]
  most = max([len(d) for _, d in per_image] + [1])
  boxes = np.zeros((len(per_image), most, 4))
  present = np.zeros((len(per_image), most), bool)
  difficult = np.zeros((len(per_image), most), bool)
  for i, (b, d) in enumerate(per_image):
    boxes[i, :len(d)], present[i, :len(d)], difficult[i, :len(d)] = b, True, d
  return boxes, present, difficult


def _match(det_boxes, det_images, gt_boxes, gt_present, gt_difficult, iou_threshold):
  """Detections in rank order -> (true positive [D] bool, false positive [D] bool)."""
  best = np.zeros(len(det_boxes), int)
  overlap = np.full(len(det_boxes), -np.inf)
  for start in range(0, len(det_boxes), _CHUNK):
    block = slice(start, start + _CHUNK)
    images = det_images[block]
    ious = inclusive_iou(det_boxes[block], gt_boxes[images])  # [d, G]
    ious = np.where(gt_present[images], ious, -np.inf)
    best[block] = np.argmax(ious, axis=1)  # first maximum, as the devkit's strict "ov > ovmax"
    overlap[block] = ious[np.arange(len(images)), best[block]]
  hit = overlap >= iou_threshold
  counted = hit & ~gt_difficult[det_images, best]
  # The devkit assigns a detection to its best ground truth whether or not that one is taken,
  # so the first (best-ranked) hit on each ground truth is the true positive, later ones are
  # duplicates.
  first = np.zeros(len(det_boxes), bool)
  keys = det_images[counted] * gt_boxes.shape[1] + best[counted]
  _, first_of_key = np.unique(keys, return_index=True)
  first[np.flatnonzero(counted)[first_of_key]] = True
  return first, ~hit | (counted & ~first)


def _flatten(detections: Sequence[ImageDetections]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Per-image detections -> boxes [D, 4], scores [D], labels [D], image index [D], in input
  order (image by image)."""
  parts = [(np.asarray(b, np.float64).reshape(-1, 4), np.asarray(s, np.float64).reshape(-1),
            np.asarray(l).reshape(-1).astype(int)) for b, s, l in detections]
  images = [np.full(len(p[1]), i) for i, p in enumerate(parts)]
  empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
  boxes, scores, labels = (np.concatenate([p[k] for p in parts] + [empty[k]]) for k in range(3))
  return boxes, scores, labels, np.concatenate(images + [np.zeros(0, int)])


def _check(detections, ground_truths, num_classes):
  if len(detections) != len(ground_truths):
    raise ValueError(f"voc.evaluate: {len(detections)} images of detections but "
                     f"{len(ground_truths)} of ground truth")
  for kind, labels in (("detection", [d[2] for d in detections]),
                       ("ground-truth", [g[1] for g in ground_truths])):
    labels = np.concatenate([np.asarray(l).reshape(-1) for l in labels] + [np.zeros(0, int)])
    if np.any((labels < 1) | (labels >= num_classes)):
      raise ValueError(f"voc.evaluate: {kind} labels must lie in 1..{num_classes - 1}, got "
                       f"{sorted(set(labels[(labels < 1) | (labels >= num_classes)].tolist()))}")


def evaluate(detections: Sequence[ImageDetections], ground_truths: Sequence[ImageGroundTruth],
             num_classes: int, use_07_metric: bool = True, iou_threshold: float = 0.5) -> dict:
  """VOC AP per class and their mean over a dataset.

  ``detections[i]`` and ``ground_truths[i]`` belong to image i (see ImageDetections and
  ImageGroundTruth); ``num_classes`` includes the background. Returns {"mAP": float (NaN when no
  class has ground truth), "AP": {label: float}, "precision" and "recall": {label: [D] float
  array, detections by rank}, "num_ground_truth": {label: int (non-difficult)},
  "classes_without_ground_truth": [label]}.
  """
  _check(detections, ground_truths, num_classes)
  det_boxes, det_scores, det_labels, det_images = _flatten(detections)
  ground_truths = [(np.asarray(b, np.float64).reshape(-1, 4), np.asarray(l).reshape(-1),
                    np.asarray(d, bool).reshape(-1)) for b, l, d in ground_truths]
  result = {"AP": {}, "precision": {}, "recall": {}, "num_ground_truth": {},
            "classes_without_ground_truth": []}
  for label in range(1, num_classes):
    gt_boxes, gt_present, gt_difficult = _padded_ground_truth(ground_truths, label)
    positives = int(np.sum(gt_present & ~gt_difficult))
    if positives == 0:
      result["classes_without_ground_truth"].append(label)
      continue
    mine = np.flatnonzero(det_labels == label)
    ranked = mine[np.argsort(-det_scores[mine], kind="stable")]
    tp, fp = _match(det_boxes[ranked], det_images[ranked], gt_boxes, gt_present, gt_difficult,
                    iou_threshold)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / positives
    # Before the first counted detection tp + fp is 0: precision 0 there (py-faster-rcnn's eps).
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    result["AP"][label] = average_precision(recall, precision, use_07_metric)
    result["precision"][label], result["recall"][label] = precision, recall
    result["num_ground_truth"][label] = positives
  result["mAP"] = float(np.mean(list(result["AP"].values()))) if result["AP"] else float("nan")
  return result
