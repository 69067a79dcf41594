"""``--mode=eval`` and the periodic evaluation of training: mAP of a detector on the eval split.

Detection runs on the device in one jit (model + NMS); boxes are mapped back to pixels of the
original images on the host and scored with ``config.eval.metric`` (VOC07 11-point, VOC area, or
COCO through pycocotools). Results go to ``<workdir>/eval/step_<N>/`` (metrics.json, a picture of
the detections on the first images and, for VOC, the precision-recall curves) and to TensorBoard;
the training loop also keeps the best checkpoint by mAP in ``<workdir>/best``.
"""

import json
import logging
import os
from typing import Callable

import jax
import ml_collections
import numpy as np
from PIL import Image

from ssd_jax import data, parallel
from ssd_jax.evaluation import METRICS, coco, plots, voc
from ssd_jax.evaluation.collector import Collector
from ssd_jax.inference import Detector


DETECTIONS = ("det_boxes", "det_scores", "det_classes", "det_valid")  # the detector's outputs
# What scoring reads of an eval batch: numbers only, so they can cross processes.
SCORED = ("boxes", "labels", "mask", "difficult", "index", "size", "valid")


def collect(detector: Detector, config: ml_collections.ConfigDict,
            source: data.Source) -> tuple[Collector, dict[str, np.ndarray] | None]:
  """Runs ``detector`` over the eval split, each process on its own shard. Returns the per-image
  detections and ground truth of the whole split in original pixels, in the split's order on any
  number of processes, and this process's first batch with its detections (for the picture)."""
  rows, first = [], None
  for batch in data.eval_iterator(config, source):
    images = parallel.global_batch({"image": batch["image"]}, detector.mesh)["image"]
    outputs = {name: parallel.local_rows(value, detector.mesh)
               for name, value in zip(DETECTIONS, detector(images))}
    rows.append({**{key: batch[key] for key in SCORED}, **outputs})
    first = first or {**batch, **outputs}
  # One exchange at the end: every process's images, then the one-process order.
  gathered = parallel.gather_rows({key: np.concatenate([r[key] for r in rows]) for key in rows[0]})
  order = np.argsort(gathered["index"], kind="stable")
  collector = Collector()
  collector.add_batch({key: value[order] for key, value in gathered.items()})
  return collector, first


def detection_grid(batch: dict[str, np.ndarray], config: ml_collections.ConfigDict,
                   class_names: tuple[str, ...], count: int = 16, cell: int = 256) -> Image.Image:
  """The first ``count`` valid images of an eval batch, each at its original aspect ratio in a
  ``cell``-px square, with detections above ``config.predict.score_threshold`` (solid) and the
  ground truth (dashed) drawn, side by side in a grid."""
  mean, std = np.asarray(config.model.input_mean), np.asarray(config.model.input_std)
  threshold = config.predict.score_threshold
  tiles = []
  for i in np.flatnonzero(batch["valid"])[:count]:
    pixels = np.clip((batch["image"][i] * std + mean) * 255, 0, 255).astype(np.uint8)
    tile = plots.fit_to_cell(pixels, tuple(batch["size"][i]), cell)
    scale = np.array([tile.width, tile.height] * 2)
    keep = batch["det_valid"][i] & (batch["det_scores"][i] >= threshold)
    truth = batch["boxes"][i][batch["mask"][i].astype(bool)]
    tiles.append(plots.draw_detections(tile, batch["det_boxes"][i][keep] * scale,
                                       batch["det_classes"][i][keep], class_names,
                                       batch["det_scores"][i][keep], truth * scale))
  return plots.grid(tiles, cell, caption=f"solid: detections with score >= {threshold}; "
                                         "dashed: ground truth")


def score(collector: Collector, config: ml_collections.ConfigDict,
          source: data.Source) -> dict:
  """The metrics of ``config.eval.metric`` on collected detections."""
  metric = config.eval.metric
  if metric not in METRICS:
    raise ValueError(f"config.eval.metric={metric!r}: expected one of {METRICS}")
  if metric == "coco":
    return coco.evaluate(collector.detections, collector.ground_truths, collector.image_sizes,
                         source.category_ids)
  return voc.evaluate(collector.detections, collector.ground_truths, config.model.num_classes,
                      use_07_metric=metric == "voc07")


def evaluate_detector(detector: Detector, config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates ``detector`` and writes the results under ``<workdir>/eval/step_<step>``.

  Every process runs the detector on its shard; process 0 scores the whole split and writes the
  files; every process returns process 0's summary (so all take the same decisions from it).
  """
  source = data.make_source(config, "eval")
  logging.info("evaluating step %d on %d images%s (the first batch compiles the detector)",
               detector.step, source.num_examples,
               " (this process's share)" if source.process_count > 1 else "")
  collector, first = collect(detector, config, source)
  summary = None
  if jax.process_index() == 0:
    result = score(collector, config, source)
    summary = summarise(result, source.class_names)
    write_results(workdir, detector.step, collector.num_images, summary, result, first, config,
                  source.class_names)
  summary = parallel.broadcast_json(summary)
  logging.info("eval at step %d on %d images: %s", detector.step, collector.num_images,
               ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if not k.startswith("AP/")))
  return summary


def write_results(workdir: str, step: int, count: int, summary: dict[str, float], result: dict,
                  first: dict[str, np.ndarray] | None, config: ml_collections.ConfigDict,
                  class_names: tuple[str, ...]) -> None:
  """``<workdir>/eval/step_<step>/``: metrics.json, the VOC precision-recall curves and the
  detections drawn on the first images of ``first`` (a batch with its detections)."""
  folder = os.path.join(workdir, "eval", f"step_{step}")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "metrics.json"), "w") as f:
    json.dump({"step": step, "images": count, **summary}, f, indent=2)
  if "precision" in result:
    plots.plot_precision_recall(result, class_names, os.path.join(folder, "pr_curves.png"))
  if first is not None and first["valid"].any():
    detection_grid(first, config, class_names).save(os.path.join(folder, "detections.png"))


def summarise(result: dict, class_names: tuple[str, ...]) -> dict[str, float]:
  """Flat {name: float} metrics: mAP (or COCO's AP...), then AP per class name."""
  summary = {k: float(v) for k, v in result.items() if np.isscalar(v) and not isinstance(v, str)}
  for label, ap in result.get("AP", {}).items():
    summary[f"AP/{class_names[label - 1]}"] = float(ap)
  return summary


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> dict:
  """``--mode=eval``: evaluates checkpoint ``step`` (default: the latest) of ``workdir``."""
  return evaluate_detector(Detector.restore(config, workdir, step), config, workdir)


def periodic(config: ml_collections.ConfigDict, workdir: str, bundle) -> Callable:
  """The training loop's evaluation, built once per run: ``evaluate(state, step) -> metrics``.

  ``bundle`` (``train.Bundle``) gives the run's mesh; the detector is built and compiled at the
  first evaluation and reused with each later state.
  """
  detector = None

  def run(state, step: int) -> dict[str, float]:
    nonlocal detector
    detector = (Detector.from_state(config, state, bundle.mesh) if detector is None
                else detector.with_state(state))
    return evaluate_detector(detector, config, workdir)
  return run
