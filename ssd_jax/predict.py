"""``--mode=predict``: detect objects in image files and draw them.

For each readable image: ``<output>/<name>.png``, a copy with labelled boxes and scores drawn, and
one line of ``<output>/detections.jsonl`` with the boxes in pixels of the original image, class
names and scores. Unreadable files are reported and skipped. Images are decoded as the input
pipeline decodes them, then resized and normalised by ``ssd_jax.preprocess`` (the exported
artifacts' preprocessing, equal to the evaluation pipeline's to float32 rounding), so predictions
equal evaluation's and the artifacts'.
"""

import glob
import json
import logging
import os
from typing import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from PIL import Image

from ssd_jax import data, parallel, preprocess
from ssd_jax.config_utils import ConfigError
from ssd_jax.data import pipeline, sources
from ssd_jax.data.decode import decode
from ssd_jax.evaluation import plots
from ssd_jax.inference import Detector


def find_images(pattern: str) -> list[str]:
  """Files matching a path, a folder (all its files) or a glob; comma-separated patterns allowed."""
  paths: list[str] = []
  for part in filter(None, (p.strip() for p in pattern.split(","))):
    if os.path.isdir(part):
      paths += sorted(os.path.join(part, name) for name in os.listdir(part)
                      if os.path.isfile(os.path.join(part, name)))
    else:
      paths += sorted(glob.glob(os.path.expanduser(part)))
  if not paths:
    raise FileNotFoundError(f"--images={pattern!r} matches no file")
  return paths


def image_batches(paths: list[str], indices: np.ndarray, config: ml_collections.ConfigDict,
                  problems: data.Problems, batch: int, count: int
                  ) -> Iterator[dict[str, np.ndarray]]:
  """``count`` batches of ``batch`` images: ``image`` (the model's input [B, S, S, 3],
  ``preprocess.preprocess`` of the decoded pictures), ``size`` (h, w), ``valid`` (False for
  unreadable files and for the padding after the last image), ``file`` and ``index`` (the image's
  position in the whole list, ``indices`` [len(paths)])."""
  records = tf.data.Dataset.from_tensor_slices(
      (tf.constant(paths, tf.string), indices.astype(np.int64))).map(lambda path, index: {
      "image": path, "file": path, "index": index, "boxes": tf.zeros([0, 4]),
      "labels": tf.zeros([0], tf.int32), "difficult": tf.zeros([0], tf.bool)})
  decode_op = decode(problems, read_files=True)
  keys = ("image", "size", "valid", "file", "index")
  ds = records.map(lambda r: {k: v for k, v in decode_op(r).items() if k in keys})
  padded = ds.concatenate(pipeline.blanks(ds, batch * count - len(paths)))
  # Pictures of several sizes share a canvas (zero-padded at the bottom and right); the resize
  # reads each one's own top-left height x width. It compiles once per canvas shape.
  prepare = jax.jit(lambda images, sizes: preprocess.preprocess(images, config, sizes))
  for pictures in padded.padded_batch(batch).as_numpy_iterator():
    sizes = np.maximum(pictures["size"], 1)  # unreadable files and blanks: size (0, 0)
    yield {**pictures, "image": np.asarray(prepare(pictures["image"], sizes))}


def predict(config: ml_collections.ConfigDict, workdir: str, images: str, output: str,
            step: int | None = None) -> int:
  """Runs the detector of ``workdir`` on ``images``; returns the number of images written.

  On several processes each detects and draws every N-th image (its pictures go to ``output``
  on its own host) and process 0 writes ``detections.jsonl`` for all of them, in the order of
  the image list, as one process would.
  """
  paths = find_images(images)
  detector = Detector.restore(config, workdir, step)
  label_names = sources.class_names(config)
  os.makedirs(output, exist_ok=True)
  logging.info("predicting %d image file(s) (the first batch compiles the detector)", len(paths))
  problems = data.Problems(strict=False)
  process, processes = jax.process_index(), jax.process_count()
  if config.data.eval_batch_size % processes:
    raise ConfigError(f"config.data.eval_batch_size={config.data.eval_batch_size}: expected a "
                      f"multiple of the process count ({processes})")
  batch = config.data.eval_batch_size // processes
  count = -(-len(paths[::processes]) // batch)  # every process runs the detector as often
  mine = np.arange(len(paths))[process::processes]
  rows = []
  for pictures in image_batches([paths[i] for i in mine], mine, config, problems, batch, count):
    images_ = parallel.global_batch({"image": pictures["image"]}, detector.mesh)["image"]
    boxes, scores, classes, valid = (parallel.local_rows(x, detector.mesh)
                                     for x in detector(images_))
    keep = valid & (scores >= config.predict.score_threshold)
    for i in np.flatnonzero(pictures["valid"]):
      path = pictures["file"][i].decode()
      height, width = pictures["size"][i]
      pixel_boxes = to_pixels(boxes[i][keep[i]], height, width)
      stem = os.path.splitext(os.path.basename(path))[0]
      plots.draw_detections(Image.open(path), pixel_boxes, classes[i][keep[i]], label_names,
                            scores[i][keep[i]]).save(os.path.join(output, stem + ".png"))
    rows.append({"index": pictures["index"], "valid": pictures["valid"], "size": pictures["size"],
                 "boxes": boxes, "scores": scores, "classes": classes, "keep": keep})
  gathered = parallel.gather_rows({key: np.concatenate([r[key] for r in rows]) for key in rows[0]})
  written = int(gathered["valid"].sum())
  if process == 0:
    write_detections(os.path.join(output, "detections.jsonl"), paths, gathered, label_names)
  problems.log_summary("after prediction")
  logging.info("predicted %d of %d images into %s", written, len(paths), output)
  return written


def to_pixels(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """[N, 4] xyxy boxes in [0, 1] -> xyxy float32 pixels of a ``height`` x ``width`` image."""
  return boxes * np.array([width, height, width, height], np.float32)


def write_detections(path: str, paths: list[str], rows: dict[str, np.ndarray],
                     label_names: tuple[str, ...]) -> None:
  """One json line per valid row of ``rows`` (``index`` into ``paths``, ``size`` (h, w),
  ``boxes`` [N, K, 4] xyxy in [0, 1], ``scores``, ``classes``, ``keep`` [N, K]), in path order:
  the file, its size and the kept detections with boxes in its pixels."""
  with open(path, "w") as lines:
    for i in sorted(np.flatnonzero(rows["valid"]), key=lambda i: rows["index"][i]):
      height, width = (int(v) for v in rows["size"][i])
      keep = rows["keep"][i]
      pixel_boxes = to_pixels(rows["boxes"][i][keep], height, width)
      detections = [{"class": label_names[label - 1], "label": int(label),
                     "score": round(float(score), 4), "box": [round(float(v), 1) for v in box]}
                    for label, score, box in zip(rows["classes"][i][keep], rows["scores"][i][keep],
                                                 pixel_boxes)]
      lines.write(json.dumps({"file": paths[rows["index"][i]], "width": width, "height": height,
                              "detections": detections}) + "\n")
