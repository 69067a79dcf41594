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

from ssd_jax import data, preprocess
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


def image_batches(paths: list[str], config: ml_collections.ConfigDict,
                  problems: data.Problems) -> Iterator[dict[str, np.ndarray]]:
  """Batches of ``config.data.eval_batch_size``: ``image`` (the model's input [B, S, S, 3],
  ``preprocess.preprocess`` of the decoded pictures), ``size`` (h, w), ``valid`` (False for
  unreadable files and for the padding of the last batch) and ``file``."""
  records = tf.data.Dataset.from_tensor_slices(paths).map(lambda path: {
      "image": path, "file": path, "boxes": tf.zeros([0, 4]), "labels": tf.zeros([0], tf.int32),
      "difficult": tf.zeros([0], tf.bool)})
  decode_op = decode(problems, read_files=True)
  keys = ("image", "size", "valid", "file")
  ds = records.map(lambda r: {k: v for k, v in decode_op(r).items() if k in keys})
  batch = config.data.eval_batch_size
  padded = ds.concatenate(pipeline.blanks(ds, (-len(paths)) % batch))
  # Pictures of several sizes share a canvas (zero-padded at the bottom and right); the resize
  # reads each one's own top-left height x width. It compiles once per canvas shape.
  prepare = jax.jit(lambda images, sizes: preprocess.preprocess(images, config, sizes))
  for pictures in padded.padded_batch(batch).as_numpy_iterator():
    sizes = np.maximum(pictures["size"], 1)  # unreadable files and blanks: size (0, 0)
    yield {**pictures, "image": np.asarray(prepare(pictures["image"], sizes))}


def predict(config: ml_collections.ConfigDict, workdir: str, images: str, output: str,
            step: int | None = None) -> int:
  """Runs the detector of ``workdir`` on ``images``; returns the number of images written."""
  paths = find_images(images)
  detector = Detector.restore(config, workdir, step)
  label_names = sources.class_names(config)
  os.makedirs(output, exist_ok=True)
  logging.info("predicting %d image file(s) (the first batch compiles the detector)", len(paths))
  problems = data.Problems(strict=False)
  threshold = config.predict.score_threshold
  written = 0
  with open(os.path.join(output, "detections.jsonl"), "w") as lines:
    for batch in image_batches(paths, config, problems):
      boxes, scores, classes, valid = (np.asarray(x) for x in detector(batch["image"]))
      for i in np.flatnonzero(batch["valid"]):
        path = batch["file"][i].decode()
        height, width = batch["size"][i]
        keep = valid[i] & (scores[i] >= threshold)
        pixel_boxes = boxes[i][keep] * np.array([width, height, width, height], np.float32)
        labels = classes[i][keep]
        names = [label_names[label - 1] for label in labels]
        stem = os.path.splitext(os.path.basename(path))[0]
        plots.draw_detections(Image.open(path), pixel_boxes, labels, label_names,
                              scores[i][keep]).save(os.path.join(output, stem + ".png"))
        detections = [{"class": name, "label": int(label), "score": round(float(score), 4),
                       "box": [round(float(v), 1) for v in box]}
                      for name, label, score, box in zip(names, labels, scores[i][keep], pixel_boxes)]
        lines.write(json.dumps({"file": path, "width": int(width), "height": int(height),
                                "detections": detections}) + "\n")
        written += 1
  problems.log_summary("after prediction")
  logging.info("predicted %d of %d images into %s", written, len(paths), output)
  return written
