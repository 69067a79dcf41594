"""Reading VOC-format folders and COCO-format json files into records (plain Python, no TF).

Pixel boxes are converted to xyxy in [0, 1] here, as ``x / width`` and ``y / height`` (Caffe's and
tfds' convention for VOC, so folder and tfds sources agree). Bad annotations are repaired where that
is obviously right (a box leaving the image is clipped; a declared image size that differs from the
image's own, which the pipeline decodes, is replaced by it) and otherwise dropped or skipped, each
reported to ``Problems`` with the place it came from (the XML, or the json and the image's
``file_name``) and the offending value. XML is parsed with defusedxml, which refuses entity
expansion and external references.
"""

import collections
import dataclasses
import json
import math
import os
import xml.etree.ElementTree as ElementTree

import defusedxml
import defusedxml.ElementTree
import numpy as np
from absl import logging
from PIL import Image

from ssd_jax.config_utils import ConfigError
from ssd_jax.data.problems import Problems


@dataclasses.dataclass(frozen=True)
class Record:
  """One image and its objects as read from an annotation file."""
  image_path: str
  image_id: str | int
  boxes: np.ndarray  # [N, 4] float32 xyxy in [0, 1]
  labels: np.ndarray  # [N] int32 in 1..C-1
  difficult: np.ndarray  # [N] bool: VOC "difficult", COCO "iscrowd"


def path_inside(folder: str, name: str) -> str | None:
  """``folder/name`` if ``name`` is relative and stays inside ``folder`` (lexically), else None."""
  if not name or os.path.isabs(name) or os.path.splitdrive(name)[0]:
    return None
  normal = os.path.normpath(name)
  if normal == os.pardir or normal.startswith(os.pardir + os.sep):
    return None
  return os.path.join(folder, normal)


def relative_boxes(pixel_boxes: np.ndarray, width: float, height: float, file: str,
                   problems: Problems, written: list[str] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
  """[N, 4] pixel xyxy -> ([K, 4] xyxy in [0, 1], [N] bool keep).

  Boxes that leave the image are clipped to it; non-finite, inverted (x_min >= x_max) or empty
  boxes, also those wholly outside the image, are dropped. Each repair or drop is reported with
  the boxes concerned, as ``written`` gives them (how each box appears in ``file``; by default its
  pixel xyxy).
  """
  given = np.asarray(pixel_boxes, np.float64).reshape(-1, 4)
  finite = np.isfinite(given).all(axis=1)
  boxes = np.where(finite[:, None], given, 0.0)
  inverted = finite & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
  limits = np.array([width, height, width, height])
  clipped = np.clip(boxes, 0.0, limits)
  empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
  outside = finite & ~inverted & empty
  keep = finite & ~inverted & ~outside
  moved = keep & (clipped != boxes).any(axis=1)
  for reason, flags in (("non-finite box coordinates, object dropped", ~finite),
                        ("box with x_min >= x_max or y_min >= y_max, object dropped", inverted),
                        ("box outside the image, object dropped", outside),
                        ("box leaves the image, clipped", moved)):
    if flags.any():
      shown = [written[i] if written else _xyxy_text(given[i]) for i in np.flatnonzero(flags)]
      problems.report(reason, file, f"{len(shown)} box(es): {', '.join(shown)}", count=len(shown))
  return (clipped[keep] / limits).astype(np.float32), keep


def _xyxy_text(box: np.ndarray) -> str:
  """A pixel box as the report shows it: ``xyxy [10, 10, 50, 40]``."""
  return "xyxy [" + ", ".join(f"{v:g}" for v in box) + "]"


def _image_size(path: str) -> tuple[int, int] | None:
  """(width, height) from the image header (no decoding), or None if unreadable."""
  try:
    with Image.open(path) as image:
      return image.size
  except (OSError, ValueError, Image.DecompressionBombError):
    return None


def _true_size(image_path: str, declared: tuple, file: str, kind: str,
               problems: Problems) -> tuple[float, float] | tuple[None, None]:
  """(width, height) to divide pixel boxes by: the image's own (from its header), which is what
  the pipeline decodes. A declared size that differs is repaired and reported for ``file``;
  without a readable image the declared size is used if positive, else (None, None) (reported).
  """
  try:
    width, height = (float(v) for v in declared)
  except (TypeError, ValueError):
    width = height = math.nan
  header = _image_size(image_path)
  if header is None:
    if width > 0 and height > 0:
      return width, height  # decoding reports the unreadable image
    problems.report(f"no image size in the {kind} and the image is unreadable, image skipped",
                    file, f"{kind} size {declared!r}, image {image_path}")
    return None, None
  if width > 0 and height > 0 and (width, height) != header:
    problems.report(f"image size in the {kind} differs from the image's, the image's used", file,
                    f"{kind} {width:g}x{height:g}, image {header[0]}x{header[1]}: {image_path}")
  return header


def _text(element: ElementTree.Element, tag: str) -> str | None:
  found = element.find(tag)
  return None if found is None or found.text is None else found.text.strip()


def _number(element: ElementTree.Element | None, tag: str) -> float:
  """Float value of ``element/tag``; NaN when missing or not a number."""
  try:
    return float(_text(element, tag)) if element is not None else math.nan
  except (TypeError, ValueError):
    return math.nan


def read_voc_xml(xml_path: str, image_path: str, class_index: dict[str, int],
                 problems: Problems) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
  """Parses one VOC annotation -> (boxes [N, 4] xyxy in [0, 1], labels [N], difficult [N]).

  ``class_index`` maps lower-case class names to labels 1..C-1. Returns None (reported) when the
  file is unsafe, malformed or its image size cannot be known.
  """
  try:
    root = defusedxml.ElementTree.parse(xml_path).getroot()
  except defusedxml.DefusedXmlException as error:
    problems.report("unsafe XML (entities or external references), image skipped", xml_path,
                    type(error).__name__)
    return None
  except (ElementTree.ParseError, OSError) as error:
    problems.report("unreadable or malformed XML, image skipped", xml_path, str(error))
    return None
  size = root.find("size")
  width, height = _true_size(image_path, (_number(size, "width"), _number(size, "height")),
                             xml_path, "XML", problems)
  if width is None:
    return None
  pixel_boxes, labels, difficult = [], [], []
  for obj in root.findall("object"):
    name = (_text(obj, "name") or "").lower()
    if name not in class_index:
      problems.report("unknown class name, object dropped", xml_path, repr(name))
      continue
    bndbox = obj.find("bndbox")
    pixel_boxes.append([_number(bndbox, tag) for tag in ("xmin", "ymin", "xmax", "ymax")])
    labels.append(class_index[name])
    difficult.append(_text(obj, "difficult") == "1")
  boxes, keep = relative_boxes(np.array(pixel_boxes).reshape(-1, 4), width, height, xml_path,
                               problems)
  return (boxes, np.array(labels, np.int32).reshape(-1)[keep],
          np.array(difficult, bool).reshape(-1)[keep])


def _finish(record: Record, keep_difficult: bool, drop_empty: bool, file: str,
            problems: Problems) -> Record | None:
  """Drops difficult objects unless kept, then skips images left without objects if asked."""
  if not keep_difficult:
    keep = ~record.difficult
    record = dataclasses.replace(record, boxes=record.boxes[keep], labels=record.labels[keep],
                                 difficult=record.difficult[keep])
  if drop_empty and not len(record.labels):
    problems.report("no objects to train on, image skipped for training", file)
    return None
  return record


def voc_folder_records(root: str, image_set: str, class_names: tuple[str, ...], problems: Problems,
                       keep_difficult: bool = True, drop_empty: bool = False) -> list[Record]:
  """Records of ``root/ImageSets/Main/<image_set>.txt`` in a VOCdevkit-style folder.

  Images are ``root/JPEGImages/<id>.jpg`` (or the XML's <filename> when that file is absent),
  annotations ``root/Annotations/<id>.xml``. Labels are 1 + the class's position in
  ``class_names``. ``drop_empty`` skips images without (kept) objects, for training.
  """
  class_index = {name.lower(): label for label, name in enumerate(class_names, start=1)}
  list_path = os.path.join(root, "ImageSets", "Main", image_set + ".txt")
  with open(list_path) as f:
    image_ids = [line.split()[0] for line in f if line.strip()]
  images, annotations = os.path.join(root, "JPEGImages"), os.path.join(root, "Annotations")
  records = []
  for image_id in image_ids:
    xml_path = path_inside(annotations, image_id + ".xml")
    image_path = path_inside(images, image_id + ".jpg")
    if xml_path is None or image_path is None:
      problems.report("image id points outside the dataset folder, image skipped", list_path,
                      repr(image_id))
      continue
    if not os.path.isfile(xml_path):
      problems.report("annotation file missing, image skipped", xml_path, f"listed in {list_path}")
      continue
    if not os.path.isfile(image_path):
      named = _voc_filename(xml_path, images)  # e.g. a .png; the XML says which
      if not (named and os.path.isfile(named)):
        problems.report("image file missing, image skipped", xml_path,
                        " or ".join(dict.fromkeys([image_path, named or image_path])))
        continue
      image_path = named
    parsed = read_voc_xml(xml_path, image_path, class_index, problems)
    if parsed is not None:
      record = _finish(Record(image_path, image_id, *parsed), keep_difficult, drop_empty,
                       xml_path, problems)
      records.extend([record] if record else [])
  return records


def _voc_filename(xml_path: str, images: str) -> str | None:
  """The image named by the XML's <filename> (e.g. a .png), if it lies inside ``images``."""
  try:
    name = _text(defusedxml.ElementTree.parse(xml_path).getroot(), "filename")
  except (defusedxml.DefusedXmlException, ElementTree.ParseError, OSError):
    return None  # read_voc_xml reports the bad file.
  return path_inside(images, name) if name else None


def coco_categories(categories: list[dict], class_names: tuple[str, ...] | None,
                    ) -> tuple[tuple[str, ...], dict[int, int], tuple[int, ...]]:
  """-> (class names, {category id: label}, category id of each label 1..C-1 (-1 if absent)).

  Without ``class_names`` the json's categories sorted by id give labels 1..C-1; with them, labels
  follow ``class_names`` and categories of other names are left out.
  """
  if class_names is None:
    class_names = tuple(c["name"] for c in sorted(categories, key=lambda c: c["id"]))
  by_name = {str(c["name"]).lower(): c["id"] for c in categories}
  category_ids = tuple(by_name.get(str(name).lower(), -1) for name in class_names)
  label_of = {cid: label for label, cid in enumerate(category_ids, start=1) if cid >= 0}
  return tuple(class_names), label_of, category_ids


def coco_json_class_names(json_path: str) -> tuple[str, ...]:
  """The class names of a COCO-format json: its categories' names, sorted by category id."""
  with open(json_path) as f:
    return coco_categories(json.load(f).get("categories", []), None)[0]


def coco_json_records(json_path: str, image_dir: str, class_names: tuple[str, ...] | None,
                      problems: Problems, keep_crowd: bool = True, drop_empty: bool = False,
                      ) -> tuple[list[Record], tuple[str, ...], tuple[int, ...]]:
  """Records of a COCO-format json whose ``file_name``s are relative to ``image_dir``.

  Returns (records, class names, COCO category id of each label 1..C-1). Crowd boxes become
  ``difficult`` (evaluation ignores them) and are dropped unless ``keep_crowd``. Objects of
  categories that ``class_names`` lacks are dropped, said once for the json naming both lists;
  when no category fits at all, ConfigError.
  """
  with open(json_path) as f:
    data = json.load(f)
  categories = data.get("categories", [])
  class_names, label_of, category_ids = coco_categories(categories, class_names)
  _check_categories(json_path, categories, class_names, category_ids, data.get("annotations", []),
                    problems)
  objects = collections.defaultdict(list)
  image_ids = {image["id"] for image in data.get("images", [])}
  for annotation in data.get("annotations", []):
    if annotation.get("image_id") not in image_ids:
      problems.report("annotation of an unknown image id, dropped", json_path,
                      f"image_id {annotation.get('image_id')!r}")
    else:
      objects[annotation["image_id"]].append(annotation)
  declared = {c["id"] for c in categories}
  records = []
  for image in data.get("images", []):
    where = f"{json_path} ({image.get('file_name', '')!s})"  # the json and the image's entry
    record = _coco_record(image, objects[image["id"]], image_dir, declared, label_of, where,
                          problems)
    if record is not None:
      record = _finish(record, keep_crowd, drop_empty, where, problems)
      records.extend([record] if record else [])
  return records, class_names, category_ids


def _check_categories(json_path: str, categories: list[dict], class_names: tuple[str, ...],
                      category_ids: tuple[int, ...], annotations: list[dict],
                      problems: Problems) -> None:
  """One warning when the json's categories and ``class_names`` differ, naming both lists (a
  choice of classes, not bad data: annotations of undeclared categories are reported per image)."""
  json_names = tuple(str(c["name"]) for c in sorted(categories, key=lambda c: c["id"]))
  used = set(category_ids) - {-1}
  if not used and annotations:
    raise ConfigError(
        f"{json_path}: none of its categories {json_names} is in config.data.class_names "
        f"{tuple(class_names)}; set --config.data.class_names=None to take the json's")
  declared = {c["id"] for c in categories}
  others = declared - used
  dropped = sum(a.get("category_id") in others for a in annotations)
  missing = [name for name, cid in zip(class_names, category_ids) if cid < 0]
  if dropped or missing:  # a warning, also when strict
    logging.warning("ssd_jax.data: %s: its categories %s differ from config.data.class_names %s: "
                    "%d object(s) of other categories left out%s", json_path, json_names,
                    tuple(class_names), dropped, f"; no category for {missing}" if missing else "")


def _coco_record(image: dict, annotations: list[dict], image_dir: str, declared: set,
                 label_of: dict[int, int], where: str, problems: Problems) -> Record | None:
  """One COCO image entry and its annotations -> Record, or None (reported) if unusable.

  ``declared``: the json's category ids; ``where``: the json and the image's file_name, for
  reports."""
  name = str(image.get("file_name", ""))
  path = path_inside(image_dir, name)
  if path is None:
    problems.report("file_name points outside the image folder, image skipped", where,
                    f"image folder {image_dir}")
    return None
  if not os.path.isfile(path):
    problems.report("image file missing, image skipped", where, path)
    return None
  width, height = _true_size(path, (image.get("width"), image.get("height")), where, "json",
                             problems)
  if width is None:
    return None
  undeclared = [a.get("category_id") for a in annotations if a.get("category_id") not in declared]
  if undeclared:
    problems.report("annotation of a category id the json does not declare, dropped", where,
                    f"category_id {', '.join(sorted(set(map(repr, undeclared))))}",
                    count=len(undeclared))
  known = [a for a in annotations if a.get("category_id") in label_of]  # others: left out
  pixel_boxes = np.array([_coco_xyxy(a.get("bbox")) for a in known]).reshape(-1, 4)
  boxes, keep = relative_boxes(pixel_boxes, width, height, where, problems,
                               [f"bbox {a.get('bbox')!r}" for a in known])
  labels = np.array([label_of[a["category_id"]] for a in known], np.int32).reshape(-1)[keep]
  crowd = np.array([bool(a.get("iscrowd", 0)) for a in known], bool).reshape(-1)[keep]
  return Record(path, image["id"], boxes, labels, crowd)


def _coco_xyxy(bbox) -> list[float]:
  """COCO [x, y, width, height] pixels -> [x_min, y_min, x_max, y_max]; NaNs when malformed."""
  try:
    x, y, w, h = (float(v) for v in bbox)
  except (TypeError, ValueError):
    return [math.nan] * 4
  return [x, y, x + w, y + h]
