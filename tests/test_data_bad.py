"""Bad data: each case is repaired or skipped with a warning naming the file and counted."""

import io
import itertools
import os
import re

import numpy as np
import pytest
from PIL import Image

from ssd_jax import data
from ssd_jax.data import annotations
import test_data_helpers as helpers

_CLASSES = ("cat", "dog")
_CAT = [("cat", (10, 10, 50, 40), False)]
_BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<annotation><size><width>80</width><height>60</height></size><object><name>&lol4;</name>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"""
_JPEG = helpers.jpeg_bytes(seed=3)


def _bad_voc(root: str) -> None:
  """A VOC folder with one image per kind of problem (ids name the problem)."""
  png = helpers.jpeg_bytes(fmt="PNG", mode="RGBA")
  images = {
      "good": (_JPEG, helpers.voc_xml(_CAT)),
      "corrupt": (b"this is not an image" * 20, helpers.voc_xml(_CAT)),
      "truncated": (_JPEG[:len(_JPEG) // 2], helpers.voc_xml(_CAT)),
      "gray": (helpers.jpeg_bytes(mode="L"), helpers.voc_xml(_CAT)),
      "cmyk": (helpers.jpeg_bytes(seed=3, mode="CMYK"), helpers.voc_xml(_CAT)),
      "png_named_jpg": (png, helpers.voc_xml(_CAT)),
      "no_objects": (_JPEG, helpers.voc_xml([])),
      "inverted": (_JPEG, helpers.voc_xml(_CAT + [("dog", (50, 10, 40, 30), False)])),
      "outside": (_JPEG, helpers.voc_xml([("dog", (60, -5, 100, 30), False),
                                          ("cat", (85, 10, 99, 20), False)])),
      "unknown_class": (_JPEG, helpers.voc_xml(_CAT + [("unicorn", (1, 1, 9, 9), False)])),
      "billion_laughs": (_JPEG, _BILLION_LAUGHS),
      "malformed_xml": (_JPEG, "<annotation><size><width>80"),
  }
  helpers.write_voc(root, images, {"all": list(images) + ["missing_image", "missing_xml",
                                                          "real_png"]})
  with open(os.path.join(root, "Annotations", "missing_image.xml"), "w") as f:
    f.write(helpers.voc_xml(_CAT))
  with open(os.path.join(root, "Annotations", "real_png.xml"), "w") as f:  # <filename> is a .png
    f.write(helpers.voc_xml(_CAT).replace("x.jpg", "real_png.png"))
  with open(os.path.join(root, "JPEGImages", "real_png.png"), "wb") as f:
    f.write(helpers.jpeg_bytes(fmt="PNG"))


# reason -> (the file its report names, what it says of the offending value).
_INDEX_PROBLEMS = {
    "no objects to train on, image skipped for training": ("Annotations/no_objects.xml", ""),
    "box with x_min >= x_max or y_min >= y_max, object dropped": (
        "Annotations/inverted.xml", "1 box(es): xyxy [50, 10, 40, 30]"),
    "box leaves the image, clipped": ("Annotations/outside.xml",
                                      "1 box(es): xyxy [60, -5, 100, 30]"),
    "box outside the image, object dropped": ("Annotations/outside.xml",
                                              "1 box(es): xyxy [85, 10, 99, 20]"),
    "unknown class name, object dropped": ("Annotations/unknown_class.xml", "'unicorn'"),
    "unsafe XML (entities or external references), image skipped": (
        "Annotations/billion_laughs.xml", "EntitiesForbidden"),
    "unreadable or malformed XML, image skipped": ("Annotations/malformed_xml.xml",
                                                   "no element found: line 1"),
    "image file missing, image skipped": ("Annotations/missing_image.xml",
                                          "JPEGImages/missing_image.jpg"),
    "annotation file missing, image skipped": ("Annotations/missing_xml.xml",
                                               "listed in "),  # the image set, checked below
}
_RUNTIME_PROBLEMS = {"not a JPEG, PNG, GIF or BMP image, skipped": "corrupt",  # reason -> image id
                     "truncated image, skipped": "truncated"}


def report(caplog, reason: str) -> str:
  """The one warning logged for ``reason`` ("ssd_jax.data: FILE: REASON (DETAIL)")."""
  (message,) = {r.getMessage() for r in caplog.records if f": {reason}" in r.getMessage()}
  return message


def check_report(caplog, reason: str, file: str, value: str) -> None:
  """The warning for ``reason`` names ``file`` (a path ending so) and ``value``."""
  message = report(caplog, reason)
  assert re.search(rf"ssd_jax\.data: \S*{re.escape(file)}: {re.escape(reason)}", message), message
  detail = message.split(f": {reason}", 1)[1]  # " (...)" after the reason, or nothing
  assert value in detail if value else not detail, message
_DECODABLE = ["good", "gray", "cmyk", "png_named_jpg", "inverted", "outside", "unknown_class",
              "real_png"]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad")
  _bad_voc(str(root / "VOCbad"))
  return helpers.tiny_config("voc_folder", str(root), _CLASSES, (("VOCbad", "all"),),
                             (("VOCbad", "all"),), batch_size=4, eval_batch_size=5)


def test_index_time_problems_are_reported_with_their_file(config, caplog):
  with caplog.at_level("WARNING"):
    source = data.make_source(config, "train", 0, 1)
  counts = source.problems.counts()
  for reason, (file, value) in _INDEX_PROBLEMS.items():
    assert counts[reason] == (1, 1), reason
    check_report(caplog, reason, file, value)
  assert report(caplog, "annotation file missing, image skipped").endswith(
      "(listed in " + os.path.join(config.data.data_dir, "VOCbad", "ImageSets", "Main", "all.txt")
      + ")")


def test_examples_are_repaired_or_marked_invalid(config, caplog):
  source = data.make_source(config, "train", 0, 1)
  with caplog.at_level("WARNING"):
    examples = {e["image_id"].decode(): e for e in data.examples(source).as_numpy_iterator()}
  assert sorted(examples) == sorted(_DECODABLE + list(_RUNTIME_PROBLEMS.values()))
  for image_id in _DECODABLE:
    example = examples[image_id]
    assert example["valid"] and example["image"].shape == (60, 80, 3), image_id
  for image_id in _RUNTIME_PROBLEMS.values():
    assert not examples[image_id]["valid"] and len(examples[image_id]["boxes"]) == 0
  reference = np.asarray(Image.open(io.BytesIO(_JPEG)).convert("RGB"), int)
  assert np.abs(examples["cmyk"]["image"].astype(int) - reference).mean() < 8  # converted to RGB
  np.testing.assert_allclose(examples["outside"]["boxes"], [[0.75, 0, 1, 0.5]], atol=1e-6)
  np.testing.assert_array_equal(examples["outside"]["labels"], [2])
  np.testing.assert_array_equal(examples["unknown_class"]["labels"], [1])
  np.testing.assert_array_equal(examples["inverted"]["labels"], [1])
  counts = source.problems.counts()
  for reason, image_id in _RUNTIME_PROBLEMS.items():
    assert counts[reason] == (1, 1), reason
    check_report(caplog, reason, f"JPEGImages/{image_id}.jpg", "")  # the file is what is bad


def test_training_and_evaluation_run_through_bad_data(config, caplog):
  source = data.make_source(config, "train", 0, 1)
  with caplog.at_level("WARNING"):
    batches = list(itertools.islice(data.train_iterator(config, source=source), 6))  # > 2 epochs
  assert all(np.isfinite(b["image"]).all() for b in batches)
  assert "after training epoch 2" in caplog.text
  assert "truncated image, skipped: 1 in 1 file" in caplog.text
  evaluation = list(data.eval_iterator(config))
  valid = np.concatenate([b["valid"] for b in evaluation])
  ids = np.concatenate([b["image_id"] for b in evaluation])
  assert sorted(i.decode() for i in ids[valid]) == sorted(_DECODABLE + ["no_objects"])
  assert len(ids) == 15  # 11 indexed examples (2 undecodable) in 3 batches of 5


def test_strict_mode_raises_naming_the_file(config, tmp_path):
  strict = config.copy_and_resolve_references()
  strict.data.on_bad_data = "error"
  # The first problem in the image list's order; evaluation keeps images without objects.
  with pytest.raises(data.BadDataError) as error:
    data.make_source(strict, "eval", 0, 1)
  assert str(error.value) == (
      f"{config.data.data_dir}/VOCbad/Annotations/inverted.xml: box with x_min >= x_max or "
      "y_min >= y_max, object dropped (1 box(es): xyxy [50, 10, 40, 30]); set "
      "config.data.on_bad_data = 'skip' to repair or skip")
  # Found inside tf.data while decoding: the same one-line error, not TF's wrapped traceback.
  helpers.write_voc(str(tmp_path / "VOCtrunc"), {"t": (_JPEG[:300], helpers.voc_xml(_CAT))},
                    {"all": ["t"]})
  strict.data.update(data_dir=str(tmp_path), eval_splits=(("VOCtrunc", "all"),))
  with pytest.raises(data.BadDataError) as error:
    list(data.eval_iterator(strict))
  assert str(error.value) == (f"{tmp_path}/VOCtrunc/JPEGImages/t.jpg: truncated image, skipped; "
                              "set config.data.on_bad_data = 'skip' to repair or skip")
  strict.data.update(train_splits=(("VOCtrunc", "all"),))
  with pytest.raises(data.BadDataError, match=r"^\S*/VOCtrunc/JPEGImages/t\.jpg: truncated image"):
    next(data.train_iterator(strict))


def test_coco_json_bad_entries(tmp_path, caplog):
  images = {1: ("good.jpg", _JPEG), 2: ("../outside.jpg", None), 3: ("/etc/hostname", None),
            4: ("missing.jpg", None), 5: ("sub/../gray.jpg", helpers.jpeg_bytes(mode="L")),
            6: ("bad_boxes.jpg", _JPEG)}
  annotations_ = [{"image_id": 1, "category_id": 1, "bbox": [8, 6, 40, 30]},
                  {"image_id": 1, "category_id": 77, "bbox": [8, 6, 40, 30]},
                  {"image_id": 5, "category_id": 2, "bbox": [0, 0, 10, 10]},
                  {"image_id": 6, "category_id": 1, "bbox": [8, 6, -4, 30]},
                  {"image_id": 6, "category_id": 2, "bbox": "oops"},
                  {"image_id": 6, "category_id": 2, "bbox": [70, 50, 20, 20]},
                  {"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5]}]
  os.makedirs(tmp_path / "images" / "sub")
  (tmp_path / "outside.jpg").write_bytes(_JPEG)
  helpers.write_coco(str(tmp_path / "train.json"), str(tmp_path / "images"), images, annotations_,
                     [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}])
  config = helpers.tiny_config("coco_json", str(tmp_path), None, (("train.json", "images"),),
                               (("train.json", "images"),))
  config.model.num_classes = 3
  with caplog.at_level("WARNING"):
    source = data.make_source(config, "train", 0, 1)
  examples = {e["image_id"]: e for e in data.examples(source).as_numpy_iterator()}
  assert sorted(examples) == [1, 5, 6]
  np.testing.assert_allclose(examples[6]["boxes"], [[70 / 80, 50 / 60, 1, 1]], atol=1e-6)
  json_path, folder = tmp_path / "train.json", tmp_path / "images"
  # reason -> [(the image's file_name or None for the json alone, the offending value)]
  expected = {
      "file_name points outside the image folder, image skipped": [
          ("../outside.jpg", f"image folder {folder}"),
          ("/etc/hostname", f"image folder {folder}")],
      "image file missing, image skipped": [("missing.jpg", f"{folder}/missing.jpg")],
      "annotation of a category id the json does not declare, dropped": [
          ("good.jpg", "category_id 77")],
      "non-finite box coordinates, object dropped": [("bad_boxes.jpg", "1 box(es): bbox 'oops'")],
      "box with x_min >= x_max or y_min >= y_max, object dropped": [
          ("bad_boxes.jpg", "1 box(es): bbox [8, 6, -4, 30]")],
      "box leaves the image, clipped": [("bad_boxes.jpg", "1 box(es): bbox [70, 50, 20, 20]")],
      "annotation of an unknown image id, dropped": [(None, "image_id 99")],
  }
  assert source.problems.counts() == {reason: (len(places), len(places))
                                      for reason, places in expected.items()}
  for reason, places in expected.items():
    messages = sorted(r.getMessage() for r in caplog.records if f": {reason}" in r.getMessage())
    wanted = sorted(f"ssd_jax.data: {json_path}{f' ({name})' if name else ''}: {reason} ({value})"
                    for name, value in places)
    assert messages == wanted


def test_relative_boxes_clips_and_drops():
  problems = data.Problems()
  boxes, keep = annotations.relative_boxes(
      np.array([[10, 10, 50, 40], [-5, 0, 40, 70], [50, 10, 40, 30], [90, 5, 99, 9],
                [np.nan, 1, 2, 3]]), 80, 60, "f.xml", problems)
  np.testing.assert_array_equal(keep, [True, True, False, False, False])
  np.testing.assert_allclose(boxes, [[10 / 80, 10 / 60, 50 / 80, 40 / 60], [0, 0, 0.5, 1]])
  assert len(problems.counts()) == 4
  assert annotations.path_inside("/data", "a/../../b.jpg") is None
  assert annotations.path_inside("/data", "a/../b.jpg") == os.path.join("/data", "b.jpg")


def _decoded(encoded: bytes) -> np.ndarray:
  from ssd_jax.data.decode import decode
  example = {"image": encoded, "file": "x.png", "boxes": np.zeros([0, 4], np.float32),
             "labels": np.zeros([0], np.int32), "difficult": np.zeros([0], bool)}
  return decode(data.Problems(), read_files=False)(example)["image"].numpy()


def test_transparent_png_pixels_are_composited_on_white():
  rgba = np.zeros((2, 3, 4), np.uint8)
  rgba[0] = [(200, 100, 50, 255), (200, 100, 50, 0), (200, 100, 50, 128)]
  rgba[1] = [(0, 0, 0, 0), (10, 20, 30, 64), (255, 255, 255, 255)]
  buffer = io.BytesIO()
  Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
  rgb, alpha = rgba[..., :3].astype(float), rgba[..., 3:].astype(float) / 255
  expected = np.round(rgb * alpha + 255 * (1 - alpha))  # the README's compositing rule
  np.testing.assert_array_equal(_decoded(buffer.getvalue()), expected)
  np.testing.assert_array_equal(expected[0, :2], [(200, 100, 50), (255, 255, 255)])
  # An opaque 16-bit grey PNG keeps its grey, in 8 bits (the high byte).
  buffer = io.BytesIO()
  Image.fromarray(np.array([[0, 40000]], np.uint16)).save(buffer, "PNG")
  np.testing.assert_array_equal(_decoded(buffer.getvalue())[0, :, 0], [0, 40000 // 256])


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # chroma 4:4:4, 4:2:2, 4:2:0
def test_jpegs_decode_to_pils_pixels(subsampling):
  """Noise (the hardest case for a DCT) at an odd size, colour and grey: every pixel equals
  PIL's (TF's default fast DCT is up to 6 levels off)."""
  rng = np.random.default_rng(subsampling)
  for pixels in (rng.integers(0, 256, (75, 101, 3), np.uint8),
                 rng.integers(0, 256, (33, 47), np.uint8)):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, subsampling=subsampling)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(_decoded(buffer.getvalue()), expected)


def test_a_wrong_declared_image_size_is_repaired_and_reported_once(tmp_path, caplog):
  image = helpers.jpeg_bytes(height=240, width=320)
  xml = helpers.voc_xml([("cat", (32, 24, 160, 120), False)], width=3200, height=2400)
  helpers.write_voc(str(tmp_path / "VOCsize"), {"big": (image, xml), "good": (
      image, helpers.voc_xml(_CAT, width=320, height=240))}, {"all": ["big", "good"]})
  config = helpers.tiny_config("voc_folder", str(tmp_path), _CLASSES, (("VOCsize", "all"),),
                               (("VOCsize", "all"),))
  with caplog.at_level("WARNING"):
    source = data.make_source(config, "eval", 0, 1)
  boxes = {e["image_id"]: e["boxes"] for e in data.examples(source).as_numpy_iterator()}
  np.testing.assert_allclose(boxes[b"big"], [[0.1, 0.1, 0.5, 0.5]], atol=1e-6)  # not 10x smaller
  reason = "image size in the XML differs from the image's, the image's used"
  assert source.problems.counts() == {reason: (1, 1)}
  (message,) = [r.getMessage() for r in caplog.records if reason in r.getMessage()]
  assert "big.xml" in message and "XML 3200x2400, image 320x240" in message
  config.data.on_bad_data = "error"
  with pytest.raises(data.BadDataError, match="big.xml.*differs"):
    data.make_source(config, "eval", 0, 1)
