"""Synthetic shapes: a seeded generator of coloured shapes on textured backgrounds, as a VOC folder.

Written once to ``<data_dir>/<folder>-<hash of the parameters>`` (JPEGImages, Annotations,
ImageSets/Main/{train,test}.txt) and then read through the VOC-folder source like real data. Each
class is a shape drawn in its own hue, so a small SSD learns it in minutes on a CPU. Every image
depends only on (seed, split, index): changing the counts does not change the images already made.
"""

import hashlib
import json
import os
import shutil
import tempfile
from xml.sax.saxutils import escape

import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageDraw

# Shape -> base colour (RGB); objects vary around it.
SHAPES = {"circle": (215, 40, 40), "square": (40, 110, 235), "triangle": (245, 205, 30),
          "diamond": (40, 185, 70), "star": (190, 60, 215), "cross": (250, 130, 20)}
_SPLITS = ("train", "test")


def prepare(config: ml_collections.ConfigDict, class_names: tuple[str, ...], data_dir: str,
            folder: str) -> str:
  """Writes the dataset of ``config`` (config.data.synthetic) unless it exists; returns its root."""
  unknown = [name for name in class_names if name not in SHAPES]
  if unknown:
    raise ValueError(f"synthetic data: unknown shapes {unknown} in config.data.class_names; "
                     f"known: {sorted(SHAPES)}")
  params = dict(config.to_dict(), class_names=list(class_names))
  digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
  root = os.path.join(data_dir, f"{folder}-{digest}")
  if os.path.isfile(os.path.join(root, "ImageSets", "Main", "test.txt")):
    return root
  os.makedirs(data_dir, exist_ok=True)
  logging.info("generating the synthetic dataset (once): %d + %d images of %d px into %s",
               config.num_train, config.num_test, config.image_size, root)
  staging = tempfile.mkdtemp(prefix=f".{folder}-", dir=data_dir)
  try:
    _write(staging, config, class_names, params)
    os.rename(staging, root)  # atomic: readers never see a half-written dataset
  except OSError:
    if not os.path.isdir(root):  # lost a race with another process that wrote the same data
      raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return root


def _write(root: str, config: ml_collections.ConfigDict, class_names: tuple[str, ...],
           params: dict) -> None:
  for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
    os.makedirs(os.path.join(root, sub))
  for split_index, (split, count) in enumerate(zip(_SPLITS, (config.num_train, config.num_test))):
    ids = [f"{split}_{i:06d}" for i in range(count)]
    for i, image_id in enumerate(ids):
      rng = np.random.default_rng([config.seed, split_index, i])
      image, objects = draw_image(rng, config, class_names)
      image.save(os.path.join(root, "JPEGImages", image_id + ".jpg"), quality=92)
      with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
        f.write(_voc_xml(image_id, config.image_size, objects))
    with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
      f.write("".join(image_id + "\n" for image_id in ids))
  with open(os.path.join(root, "synthetic.json"), "w") as f:
    json.dump(params, f, indent=1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """Muted texture: smooth grey levels with a slight tint, stripes and pixel noise -> uint8
  [size, size, 3]. Kept unsaturated so the saturated shapes stand out."""
  coarse = rng.uniform(70, 180, size=(4, 4, 1)) + rng.uniform(-20, 20, size=(4, 4, 3))
  field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BILINEAR),
                     np.float32)
  yy, xx = np.mgrid[:size, :size]
  angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
  stripes = 12 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
  noise = rng.normal(0, 8, size=(size, size, 3))
  return np.clip(field + stripes[..., None] + noise, 0, 255).astype(np.uint8)


def _polygon(shape: str, x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
  """Vertices of ``shape`` filling the box (x0, y0, x1, y1); circles and squares have none."""
  cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
  if shape == "triangle":
    return [(x0, y1), (cx, y0), (x1, y1)]
  if shape == "diamond":
    return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
  if shape == "star":
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    px, py = radii * np.cos(angles), radii * np.sin(angles)
    px, py = (px - px.min()) / np.ptp(px), (py - py.min()) / np.ptp(py)  # stretch to fill the box
    return list(zip(x0 + px * w, y0 + py * h))
  if shape == "cross":
    a, b = w / 3, h / 3
    return [(x0 + a, y0), (x1 - a, y0), (x1 - a, y0 + b), (x1, y0 + b), (x1, y1 - b),
            (x1 - a, y1 - b), (x1 - a, y1), (x0 + a, y1), (x0 + a, y1 - b), (x0, y1 - b),
            (x0, y0 + b), (x0 + a, y0 + b)]
  return []


def _overlap(box: np.ndarray, others: list[np.ndarray]) -> float:
  """Largest fraction of the smaller box covered, between pixel box ``box`` and ``others``."""
  best = 0.0
  for other in others:
    w = min(box[2], other[2]) - max(box[0], other[0])
    h = min(box[3], other[3]) - max(box[1], other[1])
    smaller = min(np.prod(box[2:] - box[:2]), np.prod(other[2:] - other[:2]))
    best = max(best, max(w, 0) * max(h, 0) / smaller)
  return best


def draw_image(rng: np.random.Generator, config: ml_collections.ConfigDict,
               class_names: tuple[str, ...]) -> tuple[Image.Image, list[tuple[str, np.ndarray]]]:
  """One image and its objects [(class name, pixel box [x_min, y_min, x_max, y_max])]."""
  size = config.image_size
  image = Image.fromarray(_background(rng, size))
  draw = ImageDraw.Draw(image)
  objects: list[tuple[str, np.ndarray]] = []
  for _ in range(rng.integers(1, config.max_objects + 1)):
    for _ in range(20):  # rejection sampling against too much overlap
      side = rng.uniform(*config.size_range) * size
      aspect = rng.uniform(0.75, 1.33)
      w, h = min(side * np.sqrt(aspect), size - 1), min(side / np.sqrt(aspect), size - 1)
      x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
      box = np.floor([x0, y0, x0 + w, y0 + h])
      if _overlap(box, [b for _, b in objects]) <= config.max_overlap:
        break
    else:
      continue
    name = class_names[rng.integers(len(class_names))]
    colour = np.clip(np.array(SHAPES[name]) + rng.integers(-25, 26, 3), 0, 255)
    colour = tuple(int(c) for c in colour)
    x0, y0, x1, y1 = box  # PIL fills pixels x0..x1 inclusive: the box's edges are x0 and x1 + 1
    vertices = _polygon(name, x0, y0, x1, y1)
    if name == "circle":
      draw.ellipse([x0, y0, x1, y1], fill=colour)
    elif name == "square":
      draw.rectangle([x0, y0, x1, y1], fill=colour)
    else:
      draw.polygon(vertices, fill=colour)
    objects.append((name, box + np.array([0, 0, 1, 1])))
  return image, objects


def _voc_xml(image_id: str, size: int, objects: list[tuple[str, np.ndarray]]) -> str:
  """A VOC annotation; boxes in pixels with the x / width convention of our reader."""
  parts = [f"<annotation><filename>{escape(image_id)}.jpg</filename>",
           f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size>"]
  for name, box in objects:
    coords = "".join(f"<{tag}>{int(v)}</{tag}>"
                     for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    parts.append(f"<object><name>{escape(name)}</name><difficult>0</difficult>"
                 f"<bndbox>{coords}</bndbox></object>")
  return "".join(parts) + "</annotation>\n"
