"""COCO detection metrics (AP, AP50, AP75, APs/m/l, AR@1/10/100, ARs/m/l) through pycocotools.

Takes the per-image lists of ``collector.Collector`` (xyxy boxes in original pixels, labels
1..C-1), and ``category_ids``, the COCO category id of label l at [l - 1]
(``Source.category_ids``; None: the label itself). The ground truth is either built in memory
from our lists (no files): "difficult" objects become ``iscrowd`` (COCO evaluation ignores
detections on them) and object areas, which decide small/medium/large, are box areas; or read
from the official annotation json (``annotation_file``), whose mask areas and crowd regions the
official numbers use. COCO boxes are [x, y, width, height] in pixels, continuous coordinates
(no +1).
"""

import contextlib
import io
import json
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd_jax.evaluation.collector import ImageDetections, ImageGroundTruth

# pycocotools' summary, in its order; "mAP" is COCO's AP@[.5:.95] (the metric that ranks models).
STAT_NAMES = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
              "ARl")


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
  """[N, 4] xyxy -> [N, 4] COCO [x, y, width, height]."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def category_map(category_ids: Sequence[int] | None, num_classes: int | None,
                 detections: Sequence[ImageDetections],
                 ground_truths: Sequence[ImageGroundTruth]) -> dict[int, int]:
  """{label: COCO category id}. With ``category_ids``, label l -> category_ids[l - 1], leaving out
  negative ids (classes the annotation file lacks); without, each label 1..num_classes-1 is its
  own id (num_classes None: up to the largest label in the lists)."""
  if category_ids is not None:
    return {label: int(c) for label, c in enumerate(category_ids, start=1) if c >= 0}
  if num_classes is None:
    labels = [np.asarray(d[2]).reshape(-1) for d in detections]
    labels += [np.asarray(g[1]).reshape(-1) for g in ground_truths]
    num_classes = int(np.concatenate(labels + [np.zeros(1, int)]).max()) + 1
  return {label: label for label in range(1, num_classes)}


def ground_truth_dataset(ground_truths: Sequence[ImageGroundTruth], image_sizes: Sequence,
                         image_ids: Sequence, categories: dict[int, int]) -> dict:
  """A COCO-format ground-truth dict: images with their (height, width), the ``categories``
  ({label: category id}), annotations with iscrowd = difficult and area = box area."""
  annotations = []
  for image_id, (boxes, labels, difficult) in zip(image_ids, ground_truths):
    for box, label, crowd in zip(xyxy_to_xywh(boxes), np.asarray(labels).reshape(-1),
                                 np.asarray(difficult).reshape(-1)):
      annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                          "category_id": categories[int(label)], "bbox": box.tolist(),
                          "area": float(box[2] * box[3]), "iscrowd": int(crowd)})
  return {"images": [{"id": i, "height": int(h), "width": int(w)}
                     for i, (h, w) in zip(image_ids, image_sizes)],
          "categories": [{"id": c, "name": str(label)} for label, c in categories.items()],
          "annotations": annotations}


def detection_results(detections: Sequence[ImageDetections], image_ids: Sequence,
                      categories: dict[int, int]) -> list[dict]:
  """COCO results-format entries {image_id, category_id, bbox (xywh pixels), score}; labels
  without a category are dropped."""
  results = []
  for image_id, (boxes, scores, labels) in zip(image_ids, detections):
    for box, score, label in zip(xyxy_to_xywh(boxes), np.asarray(scores).reshape(-1),
                                 np.asarray(labels).reshape(-1)):
      if int(label) in categories:
        results.append({"image_id": image_id, "category_id": categories[int(label)],
                        "bbox": [round(float(v), 3) for v in box], "score": float(score)})
  return results


def write_results(path: str, results: list[dict]) -> None:
  """Writes detection results as the json COCO's servers and tools take."""
  with open(path, "w") as f:
    json.dump(results, f)


def _index(dataset: dict) -> COCO:
  """A pycocotools COCO object over an in-memory dataset dict (quietly)."""
  coco = COCO()
  coco.dataset = dataset
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def _results_index(ground_truth: COCO, results: list[dict]) -> COCO:
  """What COCO.loadRes makes of bbox results (area w * h, ids from 1), also for no results."""
  annotations = [{**r, "id": i + 1, "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0}
                 for i, r in enumerate(results)]
  return _index({"images": ground_truth.dataset["images"],
                 "categories": ground_truth.dataset["categories"], "annotations": annotations})


def _per_class_ap(evaluator: COCOeval, categories: dict[int, int]) -> dict[int, float]:
  """AP@[.5:.95] per label, over all areas at 100 detections; classes without ground truth
  (precision -1 throughout) are left out."""
  precision = evaluator.eval["precision"]  # [IoU T, recall R, category K, area A, max dets M]
  column = {c: k for k, c in enumerate(evaluator.params.catIds)}
  ap = {}
  for label, category in categories.items():
    if category in column:
      values = precision[:, :, column[category], 0, -1]
      if np.any(values > -1):
        ap[label] = float(np.mean(values[values > -1]))
  return ap


def evaluate(detections: Sequence[ImageDetections], ground_truths: Sequence[ImageGroundTruth],
             image_sizes: Sequence, category_ids: Sequence[int] | None = None, *,
             num_classes: int | None = None, image_ids: Sequence | None = None,
             annotation_file: str | None = None, results_file: str | None = None) -> dict:
  """COCO box metrics of per-image detections (lists as ``voc.evaluate`` takes).

  ``image_sizes``: (height, width) of each original image. ``category_ids``: see
  ``category_map``. ``annotation_file``: an official annotation json to evaluate against instead
  of ``ground_truths``. ``image_ids``: the dataset's ids, needed with ``annotation_file`` (whose
  images they name) and written to ``results_file``; in-memory evaluation numbers the images 1..N
  when they are not given. Returns {name: float for STAT_NAMES} (-1 where there is no ground
  truth, e.g. no small objects), "AP": {label: AP@[.5:.95]} and "summary", pycocotools' table.
  """
  if not len(detections) == len(ground_truths) == len(image_sizes):
    raise ValueError(f"coco.evaluate: {len(detections)} images of detections, "
                     f"{len(ground_truths)} of ground truth and {len(image_sizes)} sizes")
  if annotation_file is not None and image_ids is None:
    raise ValueError("coco.evaluate: annotation_file needs the image_ids of the detections")
  ids = (list(range(1, len(detections) + 1)) if image_ids is None
         else [i.item() if isinstance(i, np.generic) else i for i in image_ids])  # json-able
  categories = category_map(category_ids, num_classes, detections, ground_truths)
  results = detection_results(detections, ids, categories)
  if results_file is not None:
    write_results(results_file, results)
  if annotation_file is None:
    ground_truth = _index(ground_truth_dataset(ground_truths, image_sizes, ids, categories))
  else:
    with contextlib.redirect_stdout(io.StringIO()):
      ground_truth = COCO(annotation_file)
  evaluator = COCOeval(ground_truth, _results_index(ground_truth, results), "bbox")
  # Only the images seen here: a partial pass does not count the rest as missed.
  evaluator.params.imgIds = sorted(set(ids))
  summary = io.StringIO()
  with contextlib.redirect_stdout(summary):
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  metrics = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}
  return {**metrics, "AP": _per_class_ap(evaluator, categories), "summary": summary.getvalue()}
