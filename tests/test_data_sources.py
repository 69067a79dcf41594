"""Sources: real tfds VOC and COCO builders run offline on tiny trees; folders; json; shapes."""

import os
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ssd_jax import data
from ssd_jax.data import synthetic
import test_data_helpers as helpers


def _build_offline(name: str, data_dir: str, extracted: str) -> None:
  """Builds tfds ``name`` with its download step pointed at the local folder ``extracted``."""
  builder = tfds.builder(name, data_dir=data_dir)
  with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                         new=lambda self, urls: {key: extracted for key in urls}):
    builder.download_and_prepare(
        download_dir=os.path.join(data_dir, "downloads"),
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))


@pytest.fixture(scope="module")
def voc_tree(tmp_path_factory) -> str:
  """A tiny VOCdevkit; returns the folder holding VOCdevkit/."""
  root = str(tmp_path_factory.mktemp("voc_download"))
  helpers.write_tiny_voc(os.path.join(root, "VOCdevkit", "VOC2007"))
  return root


@pytest.fixture(scope="module")
def tfds_dir(voc_tree, tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  _build_offline("voc/2007", data_dir, voc_tree)
  return data_dir


def _all(source: data.Source) -> list[dict]:
  return list(data.examples(source).as_numpy_iterator())


def _ids(examples: list[dict]) -> list[str]:
  return sorted(e["image_id"].decode() for e in examples)


def _expected(image_id: str, keep_difficult: bool = True):
  objects = [o for o in helpers.VOC_OBJECTS[image_id] if (keep_difficult or not o[2])
             and o[1][0] < o[1][2] and o[1][1] < o[1][3]]  # empty boxes are dropped
  boxes = np.array([box for _, box, _ in objects], np.float32).reshape(-1, 4) / [80, 60, 80, 60]
  labels = [helpers.VOC_NAMES.index(name) + 1 for name, _, _ in objects]
  return boxes, labels, [difficult for _, _, difficult in objects]


def _check(example: dict, keep_difficult: bool = True) -> None:
  image_id = example["image_id"].decode()
  boxes, labels, difficult = _expected(image_id, keep_difficult)
  order = np.lexsort(example["boxes"].T[::-1])  # tfds keeps file order; compare as sets
  expected = np.lexsort(boxes.T[::-1])
  np.testing.assert_allclose(example["boxes"][order], boxes[expected], atol=1e-6)
  np.testing.assert_array_equal(example["labels"][order], np.array(labels)[expected])
  np.testing.assert_array_equal(example["difficult"][order], np.array(difficult)[expected])
  assert example["image"].shape == (60, 80, 3) and example["image"].dtype == np.uint8
  np.testing.assert_array_equal(example["size"], [60, 80])
  assert example["valid"]


def test_tfds_voc_train_and_test_splits(tfds_dir, caplog):
  config = helpers.tiny_config("tfds", tfds_dir, helpers.VOC_NAMES,
                               (("voc/2007", "train+validation"),), (("voc/2007", "test"),))
  train = _all(data.make_source(config, "train", 0, 1))
  assert sorted(e["image_id"].decode() for e in train) == ["000001", "000002", "000003"]
  for example in train:
    _check(example)
  evaluation = data.make_source(config, "eval", 0, 1)
  assert evaluation.class_names == helpers.VOC_NAMES and evaluation.category_ids is None
  with caplog.at_level("WARNING"):
    examples = _all(evaluation)
  assert _ids(examples) == ["000004", "000005"]
  for example in examples:
    _check(example)
  reason = "empty box, object dropped"
  assert evaluation.problems.counts() == {reason: (1, 1)}
  (message,) = [r.getMessage() for r in caplog.records if reason in r.getMessage()]
  # The box (40, 30, 40, 45) px of an 80 x 60 image, as tfds holds it: yxyx in [0, 1].
  assert message == ("ssd_jax.data: voc/2007/000004.jpg: empty box, object dropped (1 box(es): "
                     "bbox (ymin, xmin, ymax, xmax) [[0.5 0.5 0.75 0.5]])")


def test_tfds_voc_process_shards_and_batches(tfds_dir):
  config = helpers.tiny_config("tfds", tfds_dir, helpers.VOC_NAMES,
                               (("voc/2007", "train+validation"),), (("voc/2007", "test"),),
                               batch_size=2, eval_batch_size=2)
  shards = [[e["image_id"] for e in _all(data.make_source(config, "train", p, 2))] for p in (0, 1)]
  assert sorted(shards[0] + shards[1]) == [b"000001", b"000002", b"000003"]
  assert not set(shards[0]) & set(shards[1])
  # Each record's index is its place in the split as one process reads it: train (2 records)
  # then validation (1), each sub-split cut over the processes on its own.
  whole = data.make_source(config, "train", 0, 1).parts[0]
  one = {int(r["index"]): r["image_id"] for r in whole.as_numpy_iterator()}
  assert sorted(one) == [0, 1, 2]
  for p in (0, 1):
    part = data.make_source(config, "train", p, 2).parts[0]
    assert all(one[int(r["index"])] == r["image_id"] for r in part.as_numpy_iterator())
  indices = [sorted(int(r["index"]) for r in data.make_source(config, "train", p, 2).parts[0]
                    .as_numpy_iterator()) for p in (0, 1)]
  assert indices == [[0, 2], [1]]
  source = data.make_source(config, "train", 1, 2)
  batch = next(data.train_dataset(config, 0, source)[0].as_numpy_iterator())
  assert batch["image"].shape == (1, 96, 96, 3) and batch["mask"].any()  # the 80x60 JPEG, padded
  np.testing.assert_array_equal(batch["image_size"], [[60, 80]])
  ds, num_batches, _ = data.eval_dataset(config, data.make_source(config, "eval", 0, 2))
  assert num_batches == 1 and sum(b["valid"].sum() for b in ds.as_numpy_iterator()) == 1


def test_tfds_voc_can_leave_difficult_out_of_training(tfds_dir):
  config = helpers.tiny_config("tfds", tfds_dir, helpers.VOC_NAMES,
                               (("voc/2007", "train"),), (("voc/2007", "test"),),
                               train_difficult=False)
  train = _all(data.make_source(config, "train", 0, 1))
  assert _ids(train) == ["000001", "000002"]  # 000001 has a difficult person
  for example in train:
    _check(example, keep_difficult=False)
  assert [len(e["labels"]) for e in train if e["image_id"] == b"000001"] == [1]
  evaluation = _all(data.make_source(config, "eval", 0, 1))
  assert _ids(evaluation) == ["000004", "000005"]  # 000005 has a difficult boat
  for example in evaluation:  # evaluation keeps them
    _check(example)
  assert [list(e["difficult"]) for e in evaluation if e["image_id"] == b"000005"] == [
      [False, True]]


def test_voc_folder_reads_the_same_as_tfds(voc_tree, tfds_dir):
  config = helpers.tiny_config("voc_folder", os.path.join(voc_tree, "VOCdevkit"), helpers.VOC_NAMES,
                               (("VOC2007", "trainval"),), (("VOC2007", "test"),))
  folder = {e["image_id"]: e for e in _all(data.make_source(config, "train", 0, 1))}
  assert sorted(folder) == [b"000001", b"000002", b"000003"]
  for example in folder.values():
    _check(example)
  config.data.update(source="tfds", data_dir=tfds_dir,
                     train_splits=(("voc/2007", "train+validation"),))
  from_tfds = _all(data.make_source(config, "train", 0, 1))
  assert _ids(from_tfds) == ["000001", "000002", "000003"]
  for example in from_tfds:
    np.testing.assert_array_equal(example["image"], folder[example["image_id"]]["image"])


def test_tfds_missing_dataset_is_never_downloaded(tmp_path):
  config = helpers.tiny_config("tfds", str(tmp_path), helpers.VOC_NAMES,
                               (("voc/2012", "train"),), (("voc/2007", "test"),))
  with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare",
                         side_effect=AssertionError("must not download")):
    with pytest.raises(data.DatasetNotFoundError, match=r"tfds build voc/2012") as error:
      data.make_source(config, "train", 0, 1)
  assert str(tmp_path) in str(error.value) and "voc/2012/5.0.0" in str(error.value)


def test_missing_folders_say_where_and_what(tmp_path):
  config = helpers.tiny_config("voc_folder", str(tmp_path), ("cat",), (("VOC2007", "trainval"),),
                               (("VOC2007", "test"),))
  with pytest.raises(data.DatasetNotFoundError, match=r"ImageSets/Main/trainval.txt.*JPEGImages"):
    data.make_source(config, "train", 0, 1)
  config.data.update(source="coco_json", train_splits=(("ann/train.json", "images"),))
  with pytest.raises(data.DatasetNotFoundError, match=r"ann/train.json.*images"):
    data.make_source(config, "train", 0, 1)


def _coco_tree(root: str, split: str, folder: str) -> None:
  """COCO download layout: <root>/annotations/instances_<folder>.json, <root>/<folder>/."""
  images = {1: ("a.jpg", helpers.jpeg_bytes(seed=1)), 2: ("b.jpg", helpers.jpeg_bytes(seed=2)),
            3: ("c.jpg", helpers.jpeg_bytes(seed=3))}
  annotations = [{"image_id": 1, "category_id": 1, "bbox": [8, 6, 40, 30]},
                 {"image_id": 1, "category_id": 13, "bbox": [0, 0, 80, 60], "iscrowd": 1},
                 {"image_id": 2, "category_id": 90, "bbox": [10, 10, 20, 20]}]
  name = "image_info" if split == "test" else "instances"
  helpers.write_coco(os.path.join(root, "annotations", f"{name}_{folder}.json"),
                     os.path.join(root, folder), images, [] if split == "test" else annotations,
                     helpers.coco_categories())


def _check_coco(examples: dict, train: bool) -> None:
  """Image 1: person + crowd stop sign (label 12, id 13); 2: toothbrush (80, id 90); 3: none."""
  first = examples[1]
  expected = [[0.1, 0.1, 0.6, 0.6]] + ([] if train else [[0, 0, 1, 1]])
  np.testing.assert_allclose(first["boxes"], expected, atol=1e-6)
  np.testing.assert_array_equal(first["labels"], [1] + ([] if train else [12]))
  np.testing.assert_array_equal(first["difficult"], [False] + ([] if train else [True]))
  np.testing.assert_array_equal(examples[2]["labels"], [80])


def test_tfds_coco_contiguous_labels_and_crowd(tmp_path):
  extracted = str(tmp_path / "coco_download")
  for split, folder in (("train", "train2017"), ("validation", "val2017"), ("test", "test2017")):
    _coco_tree(extracted, split, folder)
  _build_offline("coco/2017", str(tmp_path / "tfds"), extracted)
  config = helpers.tiny_config("tfds", str(tmp_path / "tfds"), None, (("coco/2017", "train"),),
                               (("coco/2017", "validation"),))
  config.model.num_classes = 81
  source = data.make_source(config, "train", 0, 1)
  assert source.category_ids[11] == 13 and source.category_ids[79] == 90
  _check_coco({e["image_id"]: e for e in _all(source)}, train=True)
  evaluation = {e["image_id"]: e for e in _all(data.make_source(config, "eval", 0, 1))}
  assert sorted(evaluation) == [1, 2, 3]  # evaluation keeps the image without objects
  _check_coco(evaluation, train=False)


def test_coco_json_folder(tmp_path):
  _coco_tree(str(tmp_path), "train", "train2017")
  config = helpers.tiny_config("coco_json", str(tmp_path), None,
                               (("annotations/instances_train2017.json", "train2017"),),
                               (("annotations/instances_train2017.json", "train2017"),))
  config.model.num_classes = 81
  source = data.make_source(config, "train", 0, 1)
  train = {e["image_id"]: e for e in _all(source)}
  assert sorted(train) == [1, 2]  # training skips the image without objects
  _check_coco(train, train=True)
  assert source.category_ids == data.sources.COCO_CATEGORY_IDS
  _check_coco({e["image_id"]: e for e in _all(data.make_source(config, "eval", 0, 1))}, train=False)
  # With class names from the config, labels follow them and other categories are dropped.
  config.data.class_names = ("class90", "class1")
  config.model.num_classes = 3
  source = data.make_source(config, "eval", 0, 1)
  assert source.category_ids == (90, 1)
  labels = {e["image_id"]: list(e["labels"]) for e in _all(source)}
  assert labels == {1: [2], 2: [1], 3: []}


def _synthetic_config(data_dir: str, **synthetic_fields):
  config = helpers.tiny_config("synthetic", data_dir, ("circle", "square", "triangle"),
                               (("shapes", "train"),), (("shapes", "test"),))
  config.data.synthetic.update(image_size=64, num_train=12, num_test=4, **synthetic_fields)
  return config


def test_synthetic_shapes_are_deterministic_and_read_as_voc(tmp_path):
  sources = [data.make_source(_synthetic_config(str(tmp_path / name)), "train", 0, 1)
             for name in ("a", "b")]
  first, second = (_all(source) for source in sources)
  assert len(first) == len(second) == 12
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["boxes"], b["boxes"])
  for example in first:
    boxes = example["boxes"]
    assert len(boxes) >= 1 and set(example["labels"]) <= {1, 2, 3}
    assert (boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) * 64 >= 0.25 * 64 * np.sqrt(0.75) - 1).all()
  test = _all(data.make_source(_synthetic_config(str(tmp_path / "a")), "eval", 0, 1))
  assert len(test) == 4 and test[0]["image_id"] == b"test_000000"


def test_synthetic_data_is_written_once_per_parameters(tmp_path):
  config = _synthetic_config(str(tmp_path))
  data.make_source(config, "train", 0, 1)
  (root,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
  stamp = os.path.getmtime(root / "JPEGImages" / "train_000000.jpg")
  data.make_source(config, "train", 0, 1)
  assert os.path.getmtime(root / "JPEGImages" / "train_000000.jpg") == stamp
  data.make_source(_synthetic_config(str(tmp_path), seed=1), "train", 0, 1)
  assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_synthetic_rejects_unknown_shapes(tmp_path):
  config = _synthetic_config(str(tmp_path))
  config.data.class_names = ("circle", "hexagon")
  config.model.num_classes = 3
  with pytest.raises(ValueError, match="hexagon"):
    data.make_source(config, "train", 0, 1)
  assert set(synthetic.SHAPES) >= {"circle", "square", "triangle"}


def _two_class_coco(root: str) -> None:
  images = {1: ("a.jpg", helpers.jpeg_bytes(seed=1)), 2: ("b.jpg", helpers.jpeg_bytes(seed=2))}
  objects = [{"image_id": 1, "category_id": 7, "bbox": [8, 6, 40, 30]},
             {"image_id": 2, "category_id": 3, "bbox": [0, 0, 20, 20]},
             {"image_id": 2, "category_id": 7, "bbox": [30, 30, 20, 20]}]
  helpers.write_coco(os.path.join(root, "train.json"), os.path.join(root, "images"), images,
                     objects, [{"id": 7, "name": "redbox"}, {"id": 3, "name": "bluebox"}])


def test_coco_json_class_names_come_from_its_categories(tmp_path):
  _two_class_coco(str(tmp_path))
  config = helpers.tiny_config("coco_json", str(tmp_path), None, ("train.json:images",),
                               ("train.json:images",))
  assert data.sources.class_names(config) == ("bluebox", "redbox")  # sorted by category id
  config.model.num_classes = 3
  source = data.make_source(config, "train", 0, 1)
  assert source.class_names == ("bluebox", "redbox") and source.category_ids == (3, 7)
  labels = {e["image_id"]: sorted(e["labels"]) for e in _all(source)}
  assert labels == {1: [2], 2: [1, 2]}


def test_coco_categories_that_do_not_fit_the_names_are_said_once(tmp_path, caplog):
  _two_class_coco(str(tmp_path))
  config = helpers.tiny_config("coco_json", str(tmp_path), ("redbox", "greenbox"),
                               (("train.json", "images"),), (("train.json", "images"),))
  with caplog.at_level("WARNING"):
    source = data.make_source(config, "train", 0, 1)
  warnings = [r.getMessage() for r in caplog.records if "categories" in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert "('bluebox', 'redbox')" in warnings[0] and "('redbox', 'greenbox')" in warnings[0]
  assert "1 object(s) of other categories left out" in warnings[0]
  assert "no category for ['greenbox']" in warnings[0]
  assert sorted(len(e["labels"]) for e in _all(source)) == [1, 1]
  config.data.class_names = ("cat", "dog")
  with pytest.raises(data.sources.ConfigError, match=r"none of its categories.*class_names=None"):
    data.make_source(config, "train", 0, 1)


def test_num_classes_must_fit_the_class_names(tmp_path):
  _two_class_coco(str(tmp_path))
  config = helpers.tiny_config("coco_json", str(tmp_path), None, (("train.json", "images"),),
                               (("train.json", "images"),))
  config.model.num_classes = 5
  with pytest.raises(data.sources.ConfigError,
                     match=r"num_classes=5 does not fit the 2 class names .*= 3"):
    data.make_source(config, "train", 0, 1)


def test_short_spellings_of_class_names_and_splits():
  from ssd_jax import config_utils
  config = helpers.tiny_config("voc_folder", "/x", ("redbox,bluebox",), ("boxes:train",),
                               (("boxes", "test"),))
  config_utils.expand_shorthands(config)
  assert config.data.class_names == ("redbox", "bluebox")
  assert data.sources.split_entry(config.data.train_splits[0], "f") == ("boxes", "train")
  assert data.sources.split_entry("voc/2007:train+validation", "f") == ("voc/2007",
                                                                        "train+validation")
  with pytest.raises(data.sources.ConfigError, match=r"expected \(where, which\) or 'where:wh"):
    data.sources.split_entry("boxes", "config.data.train_splits")
  config.data.class_names = (None,)
  config_utils.expand_shorthands(config)
  assert config.data.class_names is None
