"""COCO metrics through pycocotools on small synthetic cases with hand-computed answers."""

import json

import numpy as np
import pytest

from ssd_jax.evaluation import coco, voc

SMALL, LARGE = [10, 10, 30, 30], [50, 40, 250, 200]  # 20 x 20 (< 32^2) and 200 x 160 pixels
FAR = [300, 250, 380, 330]
SIZES = [(375, 500), (375, 500)]


def dets(boxes=(), scores=(), labels=()):
  return (np.array(boxes, float).reshape(-1, 4), np.array(scores, float), np.array(labels, int))


def gts(boxes, labels, difficult=None):
  difficult = [False] * len(labels) if difficult is None else difficult
  return (np.array(boxes, float).reshape(-1, 4), np.array(labels, int), np.array(difficult, bool))


GROUND_TRUTH = [gts([SMALL, LARGE], [1, 2]), gts([LARGE], [1])]


def test_perfect_detections_score_one():
  detections = [dets([SMALL, LARGE], [0.9, 0.8], [1, 2]), dets([LARGE], [0.7], [1])]
  result = coco.evaluate(detections, GROUND_TRUTH, SIZES, num_classes=3)
  assert result["AP"] == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}
  for name in ("mAP", "AP50", "AP75", "APs", "APl", "AR100", "ARs", "ARl"):
    assert result[name] == pytest.approx(1.0), name
  assert result["APm"] == -1.0  # no medium objects
  assert "Average Precision" in result["summary"]


def test_no_detections_score_zero():
  result = coco.evaluate([dets(), dets()], GROUND_TRUTH, SIZES, num_classes=3)
  assert result["mAP"] == 0.0 and result["AR100"] == 0.0 and result["AP"] == {1: 0.0, 2: 0.0}


def test_half_right_matches_the_hand_computation_and_voc():
  # One class, two objects. Ranked: a false alarm (0.95), then a perfect hit (0.9); the second
  # object is missed. Precision (0, 1/2) at recall (0, 1/2): COCO's 101-point envelope is 1/2 for
  # recall 0, .01, ..., .5 -> 51 / 2 / 101 at every IoU threshold.
  detections = [dets([FAR, LARGE], [0.95, 0.9], [1, 1]), dets()]
  ground_truths = [gts([LARGE], [1]), gts([LARGE], [1])]
  result = coco.evaluate(detections, ground_truths, SIZES)  # labels 1..1 from the lists
  assert result["AP50"] == pytest.approx(25.5 / 101)
  assert result["mAP"] == pytest.approx(25.5 / 101) and result["AR100"] == pytest.approx(0.5)
  # VOC's area metric integrates the same envelope exactly: 1/2 * 1/2; they differ by the
  # 101-point sampling only.
  area = voc.evaluate(detections, ground_truths, 2, use_07_metric=False)["AP"][1]
  assert area == pytest.approx(0.25) and abs(result["AP50"] - area) <= 1 / 101


def test_crowd_ground_truth_is_ignored():
  # A detection on a crowd ("difficult") object is neither a hit nor a false alarm.
  detections = [dets([FAR, LARGE], [0.95, 0.9], [1, 1])]
  result = coco.evaluate(detections, [gts([FAR, LARGE], [1, 1], [True, False])], SIZES[:1])
  assert result["mAP"] == pytest.approx(1.0)


def test_category_ids_image_ids_and_results_json(tmp_path):
  detections = [dets([SMALL], [0.9], [2]), dets([[5, 6, 15, 26]], [0.5], [1])]
  path = str(tmp_path / "results.json")
  result = coco.evaluate(detections, GROUND_TRUTH, SIZES, (18, 3), image_ids=np.array([139, 285]),
                         results_file=path)
  with open(path) as f:
    written = json.load(f)
  assert written == [
      {"image_id": 139, "category_id": 3, "bbox": [10.0, 10.0, 20.0, 20.0], "score": 0.9},
      {"image_id": 285, "category_id": 18, "bbox": [5.0, 6.0, 10.0, 20.0], "score": 0.5}]
  assert result["AP"] == {1: 0.0, 2: 0.0}


def test_official_annotation_file_and_a_class_it_lacks(tmp_path):
  # The file has categories 18 and 3 for labels 1 and 2; label 3 (id -1) is not in it.
  categories = coco.category_map((18, 3, -1), None, [], [])
  assert categories == {1: 18, 2: 3}
  dataset = coco.ground_truth_dataset(GROUND_TRUTH, SIZES, [7, 9], categories)
  path = tmp_path / "instances.json"
  path.write_text(json.dumps(dataset))
  detections = [dets([SMALL, LARGE, FAR], [0.9, 0.8, 0.95], [1, 2, 3]), dets([LARGE], [0.7], [1])]
  result = coco.evaluate(detections, GROUND_TRUTH, SIZES, (18, 3, -1), image_ids=[7, 9],
                         annotation_file=str(path))
  assert result["mAP"] == pytest.approx(1.0) and set(result["AP"]) == {1, 2}
  with pytest.raises(ValueError, match="image_ids"):
    coco.evaluate(detections, GROUND_TRUTH, SIZES, (18, 3), annotation_file=str(path))
