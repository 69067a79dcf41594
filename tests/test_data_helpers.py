"""Helpers for the data tests: tiny real datasets written to temp dirs, and a small config.

No tests here; the test_data_*.py modules import these.
"""

import io
import json
import os

import numpy as np
from PIL import Image

from ssd_jax import config_utils

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
VOC_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
             "train", "tvmonitor")


def jpeg_bytes(height: int = 60, width: int = 80, seed: int = 0, mode: str = "RGB",
               fmt: str = "JPEG") -> bytes:
  """A small smooth random image encoded as ``fmt`` in colour ``mode``."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 255, (3, 4, 3), dtype=np.uint8)
  image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR).convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
  return buffer.getvalue()


def voc_xml(objects: list[tuple[str, tuple[float, float, float, float], bool]],
            width: int = 80, height: int = 60) -> str:
  """A VOC annotation with tfds' required fields; objects are (name, pixel xyxy box, difficult)."""
  parts = [f"<annotation><filename>x.jpg</filename><size><width>{width}</width>"
           f"<height>{height}</height><depth>3</depth></size>"]
  for name, (x0, y0, x1, y1), difficult in objects:
    parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                 f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{x0}</xmin>"
                 f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
  return "".join(parts) + "</annotation>"


def write_voc(root: str, images: dict[str, tuple[bytes, str]], image_sets: dict[str, list[str]]):
  """A VOCdevkit-style folder: images {id: (encoded image, xml)}, image sets {name: [ids]}."""
  for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  for image_id, (encoded, xml) in images.items():
    with open(os.path.join(root, "JPEGImages", image_id + ".jpg"), "wb") as f:
      f.write(encoded)
    with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
      f.write(xml)
  for name, ids in image_sets.items():
    with open(os.path.join(root, "ImageSets", "Main", name + ".txt"), "w") as f:
      f.write("".join(i + "\n" for i in ids))


# Five images: id -> objects (name, pixel box on an 80x60 image, difficult); 000004's second box
# is empty (x_min == x_max), and dropped.
VOC_OBJECTS = {
    "000001": [("dog", (10, 5, 50, 40), False), ("person", (40, 10, 70, 55), True)],
    "000002": [("cat", (0, 0, 80, 60), False)],
    "000003": [("car", (5, 20, 30, 50), False), ("car", (35, 22, 60, 48), False),
               ("bus", (20, 2, 78, 30), False)],
    "000004": [("bird", (30, 30, 45, 40), False), ("bird", (40, 30, 40, 45), False)],  # empty
    "000005": [("aeroplane", (2, 3, 40, 20), False), ("boat", (50, 40, 79, 59), True)],
}


def write_tiny_voc(root: str) -> None:
  """VOC2007-like folder with train (2), val (1) and test (2) image sets."""
  images = {i: (jpeg_bytes(seed=n), voc_xml(objects)) for n, (i, objects) in
            enumerate(VOC_OBJECTS.items())}
  write_voc(root, images, {"train": ["000001", "000002"], "val": ["000003"],
                           "trainval": ["000001", "000002", "000003"],
                           "test": ["000004", "000005"]})


def coco_categories() -> list[dict]:
  """The 80 COCO category ids with made-up names (tfds' COCO builder expects 80)."""
  from ssd_jax.data.sources import COCO_CATEGORY_IDS
  return [{"id": cid, "name": f"class{cid}", "supercategory": "x"} for cid in COCO_CATEGORY_IDS]


def write_coco(json_path: str, image_dir: str, images: dict[int, tuple[str, bytes | None]],
               annotations: list[dict], categories: list[dict]) -> None:
  """A COCO-format json; images {id: (file_name, encoded image or None to not write it)}."""
  os.makedirs(image_dir, exist_ok=True)
  entries = []
  for image_id, (name, encoded) in images.items():
    if encoded is not None:
      with open(os.path.join(image_dir, name), "wb") as f:
        f.write(encoded)
    entries.append({"id": image_id, "file_name": name, "width": 80, "height": 60})
  for number, annotation in enumerate(annotations, start=1):
    annotation.setdefault("id", number)
    annotation.setdefault("iscrowd", 0)
    annotation.setdefault("area", 100.0)
    annotation.setdefault("segmentation", [])
  os.makedirs(os.path.dirname(json_path), exist_ok=True)
  with open(json_path, "w") as f:
    json.dump({"images": entries, "annotations": annotations, "categories": categories}, f)


def tiny_config(source: str, data_dir: str, class_names, train_splits, eval_splits, **data):
  """configs/ssd300.py with a small model input and the given data section fields."""
  config = config_utils.load_config(os.path.join(CONFIG_DIR, "ssd300.py"))
  config.model.image_size = 64
  if class_names is not None:
    config.model.num_classes = len(class_names) + 1
  fields = dict(source=source, data_dir=data_dir, class_names=class_names,
                train_splits=train_splits, eval_splits=eval_splits, batch_size=4, eval_batch_size=4,
                max_boxes=8, shuffle_buffer=4, prefetch=1, max_image_size=96)
  config.data.update({**fields, **data})
  return config
