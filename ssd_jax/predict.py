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
from PIL import Image, ImageDraw

from ssd_jax import data, preprocess
from ssd_jax.data import pipeline
from ssd_jax.data.decode import decode
from ssd_jax.inference import Detector

_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128))


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


def draw(image: Image.Image, boxes: np.ndarray, scores: np.ndarray, names: list[str],
         labels: np.ndarray) -> Image.Image:
  """``image`` with pixel boxes [N, 4] (xyxy), their class names and scores drawn on it."""
  image = image.convert("RGB")
  canvas = ImageDraw.Draw(image)
  width = max(1, round(max(image.size) / 250))
  for box, score, name, label in zip(boxes, scores, names, labels):
    colour = _PALETTE[(int(label) - 1) % len(_PALETTE)]
    canvas.rectangle(box.tolist(), outline=colour, width=width)
    text = f"{name} {score:.2f}"
    left, top = box[0], max(0, box[1] - 12)
    canvas.rectangle(canvas.textbbox((left, top), text), fill=colour)
    canvas.text((left, top), text, fill=(255, 255, 255))
  return image


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The config's class names; only when it defers to the dataset's own names is the dataset read."""
  if config.data.class_names:
    return tuple(config.data.class_names)
  return data.make_source(config, "eval").class_names


def predict(config: ml_collections.ConfigDict, workdir: str, images: str, output: str,
            step: int | None = None) -> int:
  """Runs the detector of ``workdir`` on ``images``; returns the number of images written."""
  paths = find_images(images)
  detector = Detector.restore(config, workdir, step)
  label_names = class_names(config)
  os.makedirs(output, exist_ok=True)
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
        draw(Image.open(path), pixel_boxes, scores[i][keep], names, labels).save(
            os.path.join(output, stem + ".png"))
        detections = [{"class": name, "label": int(label), "score": round(float(score), 4),
                       "box": [round(float(v), 1) for v in box]}
                      for name, label, score, box in zip(names, labels, scores[i][keep], pixel_boxes)]
        lines.write(json.dumps({"file": path, "width": int(width), "height": int(height),
                                "detections": detections}) + "\n")
        written += 1
  problems.log_summary("after prediction")
  logging.info("predicted %d of %d images into %s", written, len(paths), output)
  return written
