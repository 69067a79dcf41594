"""VOC AP: hand-worked cases, and agreement with a straightforward re-implementation of
py-faster-rcnn's voc_eval.py (with the devkit's >= and exact 11-point thresholds) on random data."""

import numpy as np
import pytest

from ssd_jax.evaluation import voc
from ssd_jax.evaluation.collector import Collector


def image(gt_boxes=(), gt_labels=(), difficult=None, det_boxes=(), scores=(), det_labels=()):
  """One image's (detections, ground truth) from plain lists."""
  gt_boxes = np.array(gt_boxes, float).reshape(-1, 4)
  difficult = np.zeros(len(gt_boxes), bool) if difficult is None else np.array(difficult, bool)
  return ((np.array(det_boxes, float).reshape(-1, 4), np.array(scores, float),
           np.array(det_labels, int)), (gt_boxes, np.array(gt_labels, int), difficult))


def run(images, num_classes=2, **kwargs):
  detections, ground_truths = zip(*images) if images else ((), ())
  return voc.evaluate(list(detections), list(ground_truths), num_classes, **kwargs)


BOX_A, BOX_B = [10, 10, 50, 50], [100, 120, 180, 200]


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_one_perfect_detection_is_ap_one(use_07_metric):
  result = run([image([BOX_A], [1], det_boxes=[BOX_A], scores=[0.9], det_labels=[1])],
               use_07_metric=use_07_metric)
  assert result["AP"] == {1: 1.0} and result["mAP"] == 1.0
  assert result["classes_without_ground_truth"] == []


def test_duplicates_are_false_positives():
  images = [image([BOX_A], [1], det_boxes=[BOX_A, BOX_A], scores=[0.9, 0.8], det_labels=[1, 1]),
            image([BOX_B], [1], det_boxes=[BOX_B], scores=[0.7], det_labels=[1])]
  # Ranked: TP, duplicate FP, TP -> recall (.5, .5, 1), precision (1, .5, 2/3).
  result = run(images)
  np.testing.assert_allclose(result["recall"][1], [0.5, 0.5, 1.0])
  np.testing.assert_allclose(result["precision"][1], [1.0, 0.5, 2 / 3])
  assert result["AP"][1] == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
  assert run(images, use_07_metric=False)["AP"][1] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_a_missed_object_halves_recall():
  images = [image([BOX_A, BOX_B], [1, 1], det_boxes=[BOX_A], scores=[0.9], det_labels=[1])]
  assert run(images)["AP"][1] == pytest.approx(6 / 11)  # thresholds 0, .1, ..., .5
  assert run(images, use_07_metric=False)["AP"][1] == pytest.approx(0.5)


def test_difficult_objects_are_neither_counted_nor_penalised():
  images = [image([BOX_A, BOX_B, BOX_B], [1, 1, 2], difficult=[False, True, True],
                  det_boxes=[BOX_B, BOX_A, BOX_B, BOX_B], scores=[0.95, 0.9, 0.8, 0.7],
                  det_labels=[1, 1, 1, 2])]
  result = run(images, num_classes=3)
  # Class 1: both detections of the difficult box are ignored, the other one is a TP.
  assert result["AP"] == {1: 1.0} and result["num_ground_truth"] == {1: 1}
  # Class 2 has difficult ground truth only: no AP, left out of the mAP, reported.
  assert result["classes_without_ground_truth"] == [2] and result["mAP"] == 1.0


def test_inclusive_pixel_areas_put_this_case_exactly_at_iou_one_half():
  # Inclusive pixels: 10 x 5 = 50 of 10 x 10 = 100 -> IoU 0.5, a TP under ">=". With exclusive
  # areas (36 / 81) or py-faster-rcnn's ">" it would be a miss.
  images = [image([[1, 1, 10, 10]], [1], det_boxes=[[1, 1, 10, 5]], scores=[0.9], det_labels=[1])]
  assert run(images)["AP"][1] == 1.0
  assert run(images, iou_threshold=0.5 + 1e-9)["AP"][1] == 0.0
  assert voc.inclusive_iou(np.array([[1, 1, 10, 5.0]]), np.array([[[1, 1, 10, 10.0]]])) == 0.5


def test_eleven_point_thresholds_are_exact_tenths():
  # Recall reaches exactly 3/10, which a threshold of 3 * 0.1 = 0.30000000000000004 would miss.
  boxes = [[10 * i, 0, 10 * i + 8, 8] for i in range(10)]
  images = [image(boxes, [1] * 10, det_boxes=boxes[:3], scores=[0.9, 0.8, 0.7],
                  det_labels=[1] * 3)]
  assert run(images)["AP"][1] == pytest.approx(4 / 11)


def test_equal_scores_keep_input_order():
  far = [300, 300, 340, 340]
  miss_first = [image([BOX_A], [1], det_boxes=[far, BOX_A], scores=[0.5, 0.5], det_labels=[1, 1])]
  hit_first = [image([BOX_A], [1], det_boxes=[BOX_A, far], scores=[0.5, 0.5], det_labels=[1, 1])]
  assert run(miss_first)["AP"][1] == pytest.approx(0.5)
  assert run(hit_first)["AP"][1] == 1.0


def test_no_detections_and_no_ground_truth():
  result = run([image([BOX_A], [1])])
  assert result["AP"] == {1: 0.0} and len(result["precision"][1]) == 0
  empty = run([image(det_boxes=[BOX_A], scores=[0.3], det_labels=[1])])
  assert empty["AP"] == {} and np.isnan(empty["mAP"])
  assert empty["classes_without_ground_truth"] == [1]


def test_labels_out_of_range_are_refused():
  with pytest.raises(ValueError, match="detection labels"):
    run([image([BOX_A], [1], det_boxes=[BOX_A], scores=[0.9], det_labels=[0])])
  with pytest.raises(ValueError, match="ground-truth labels"):
    run([image([BOX_A], [2])])


def reference_voc_eval(detections, ground_truths, label, use_07_metric):
  """py-faster-rcnn voc_eval.py's loop for one class, in memory, with the devkit's ">=", a
  stable sort and thresholds k / 10."""
  recs, npos = {}, 0
  for i, (boxes, labels, difficult) in enumerate(ground_truths):
    mine = labels == label
    recs[i] = {"bbox": boxes[mine], "difficult": difficult[mine], "det": [False] * mine.sum()}
    npos += int((~difficult[mine]).sum())
  image_ids, confidence, bb = [], [], []
  for i, (boxes, scores, labels) in enumerate(detections):
    for box, score, lab in zip(boxes, scores, labels):
      if lab == label:
        image_ids.append(i), confidence.append(score), bb.append(box)
  order = np.argsort(-np.array(confidence), kind="stable")
  tp, fp = np.zeros(len(order)), np.zeros(len(order))
  for d, k in enumerate(order):
    r, box = recs[image_ids[k]], bb[k]
    ovmax, jmax = -np.inf, -1
    if len(r["bbox"]):
      gt = r["bbox"]
      iw = np.maximum(np.minimum(gt[:, 2], box[2]) - np.maximum(gt[:, 0], box[0]) + 1.0, 0.0)
      ih = np.maximum(np.minimum(gt[:, 3], box[3]) - np.maximum(gt[:, 1], box[1]) + 1.0, 0.0)
      inters = iw * ih
      uni = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
             + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0) - inters)
      overlaps = inters / uni
      ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
    if ovmax >= 0.5:
      if not r["difficult"][jmax]:
        if not r["det"][jmax]:
          tp[d], r["det"][jmax] = 1.0, True
        else:
          fp[d] = 1.0
    else:
      fp[d] = 1.0
  fp, tp = np.cumsum(fp), np.cumsum(tp)
  rec = tp / float(npos)
  prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  if use_07_metric:
    return sum((np.max(prec[rec >= t / 10]) if np.sum(rec >= t / 10) else 0) / 11.0
               for t in range(11))
  mrec = np.concatenate(([0.0], rec, [1.0]))
  mpre = np.concatenate(([0.0], prec, [0.0]))
  for i in range(mpre.size - 1, 0, -1):
    mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
  i = np.where(mrec[1:] != mrec[:-1])[0]
  return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def random_dataset(rng, num_images=40, num_classes=4):
  """Integer pixel boxes on 500 x 375 images: jittered (sometimes duplicated) hits, misses and
  false alarms, scores on a coarse grid so that many are tied."""
  detections, ground_truths = [], []
  for _ in range(num_images):
    count = rng.integers(0, 5)
    xy = rng.integers(1, 300, size=(count, 2))
    gt = np.concatenate([xy, xy + rng.integers(20, 150, size=(count, 2))], 1).astype(float)
    labels = rng.integers(1, num_classes, count)
    ground_truths.append((gt, labels, rng.random(count) < 0.2))
    hits = rng.random(count) < 0.8
    copies = np.repeat(np.flatnonzero(hits), rng.integers(1, 3, hits.sum()))
    jitter = rng.integers(-12, 13, size=(len(copies), 4))
    corner = rng.integers(1, 300, size=(rng.integers(0, 3), 2))
    false_alarms = np.concatenate([corner, corner + rng.integers(20, 150, corner.shape)], 1)
    boxes = np.concatenate([gt[copies] + jitter, false_alarms])
    det_labels = np.concatenate([labels[copies], rng.integers(1, num_classes, len(corner))])
    detections.append((boxes, rng.integers(1, 9, len(boxes)) / 8, det_labels))
  return detections, ground_truths


@pytest.mark.parametrize("use_07_metric", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_py_faster_rcnn_voc_eval_on_random_data(seed, use_07_metric):
  detections, ground_truths = random_dataset(np.random.default_rng(seed))
  result = voc.evaluate(detections, ground_truths, 4, use_07_metric=use_07_metric)
  assert len(result["AP"]) >= 2
  for label, ap in result["AP"].items():
    assert ap == pytest.approx(reference_voc_eval(detections, ground_truths, label,
                                                  use_07_metric), abs=1e-12)
  assert result["mAP"] == pytest.approx(np.mean(list(result["AP"].values())))


def test_collector_returns_annotation_pixels_and_skips_padding():
  # The data sources store xml / (width, height) in float32; sizes are (height, width).
  pixel = np.array([[[48, 240, 195, 371], [8, 12, 352, 498]], [[1, 1, 500, 375], [0, 0, 0, 0]]],
                   float)
  sizes = np.array([[375, 500], [500, 353]], np.int32)
  scale = np.stack([sizes[:, 1], sizes[:, 0]] * 2, 1)[:, None, :]
  boxes = (pixel / scale).astype(np.float32)
  batch = {"boxes": boxes, "labels": np.array([[12, 15], [3, 0]]),
           "mask": np.array([[True, True], [True, False]]),
           "difficult": np.array([[False, True], [False, False]]),
           "index": np.array([7, 8]), "size": sizes,
           "valid": np.array([True, False]),
           "det_boxes": boxes, "det_scores": np.array([[0.9, 0.1], [0.8, 0.7]], np.float32),
           "det_classes": np.array([[12, 0], [3, 3]], np.int32),
           "det_valid": np.array([[True, False], [True, True]])}
  collector = Collector()
  collector.add_batch(batch)
  assert collector.num_images == 1
  assert collector.indices == [7] and collector.image_sizes == [(375, 500)]
  (gt_boxes, gt_labels, difficult), = collector.ground_truths
  np.testing.assert_allclose(gt_boxes, pixel[0], atol=1e-4)
  assert gt_labels.tolist() == [12, 15] and difficult.tolist() == [False, True]
  (det_boxes, scores, labels), = collector.detections
  np.testing.assert_allclose(det_boxes, pixel[0, :1], atol=1e-4)
  assert labels.tolist() == [12] and scores.tolist() == pytest.approx([0.9])
  result = voc.evaluate(collector.detections, collector.ground_truths, 21)
  assert result["AP"] == {12: 1.0}


def test_precision_recall_plot_is_a_valid_png(tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from ssd_jax.evaluation import plots  # pylint: disable=import-outside-toplevel
  detections, ground_truths = random_dataset(np.random.default_rng(0))
  result = voc.evaluate(detections, ground_truths, 4)
  path = tmp_path / "pr.png"
  plots.plot_precision_recall(result, ("cat", "dog", "bird"), str(path))
  with Image.open(path) as png:
    png.verify()
    assert png.format == "PNG" and png.size == (900, 600)
