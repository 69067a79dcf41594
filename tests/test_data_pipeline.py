"""Batching: shapes, padding, determinism, resuming, epochs, evaluation passes, process shards."""

import itertools
import re

import numpy as np
import pytest

from ssd_jax import data
from ssd_jax.data import pipeline
import test_data_helpers as helpers

_NUM_TRAIN, _NUM_TEST = 10, 7


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  config = helpers.tiny_config("synthetic", str(tmp_path_factory.mktemp("synthetic")),
                               ("circle", "square", "triangle"), (("shapes", "train"),),
                               (("shapes", "test"),), batch_size=4, eval_batch_size=3, max_boxes=6)
  config.data.synthetic.update(image_size=48, num_train=_NUM_TRAIN, num_test=_NUM_TEST,
                               max_objects=3)
  return config


def _batches(config, start_step=0, count=5, source=None):
  ds, _ = data.train_dataset(config, start_step, source)
  return list(itertools.islice(ds.as_numpy_iterator(), count))


def test_train_batches_have_the_documented_format(config):
  batch, = _batches(config, count=1)
  assert set(batch) == set(data.TRAIN_KEYS)
  # Decoded 48x48 shapes on the 96x96 canvas, zeros beyond them.
  assert batch["image"].shape == (4, 96, 96, 3) and batch["image"].dtype == np.uint8
  np.testing.assert_array_equal(batch["image_size"], [[48, 48]] * 4)
  assert batch["image"][:, :48, :48].any() and not batch["image"][:, 48:].any()
  assert not batch["image"][:, :, 48:].any()
  assert batch["window"].shape == (4, 4) and batch["window"].dtype == np.float32
  assert batch["method"].shape == (4,) and (batch["method"] >= 0).all()
  assert (batch["method"] < len(config.augment.resize_methods)).all()
  assert batch["photometric"].shape == (4, 5) and batch["channel_order"].shape == (4, 3)
  assert batch["boxes"].shape == (4, 6, 4) and batch["labels"].dtype == np.int32
  assert batch["mask"].dtype == bool and batch["mask"].any(axis=1).all()
  assert (batch["labels"][batch["mask"]] >= 1).all()
  assert (batch["labels"][~batch["mask"]] == 0).all()
  assert (batch["boxes"][~batch["mask"]] == 0).all()
  # Rows are filled from the front, so masks look like [True, ..., True, False, ...].
  assert (np.diff(batch["mask"].astype(int), axis=1) <= 0).all()


def test_a_fixed_seed_gives_identical_batches(config):
  first, second = _batches(config), _batches(config)
  for a, b in zip(first, second):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  config = config.copy_and_resolve_references()
  config.data.seed = 1
  assert not np.array_equal(_batches(config, count=1)[0]["image"], first[0]["image"])


@pytest.mark.parametrize("start_step", [1, 3])  # record 4 (inside epoch 0), 12 (inside epoch 1)
def test_resuming_at_a_step_reproduces_the_stream(config, start_step):
  source = data.make_source(config, "train", 0, 1)
  reference = _batches(config, 0, start_step + 2, source)[start_step:]
  for a, b in zip(reference, _batches(config, start_step, 2, source)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_each_epoch_is_a_new_permutation_of_the_records(config):
  source = data.make_source(config, "train", 0, 1)
  config.data.shuffle_buffer = 4
  records = pipeline._train_records(source, 0, 4, 0).map(lambda r: r["index"])
  stream = list(itertools.islice(records.as_numpy_iterator(), 3 * _NUM_TRAIN))
  epochs = [stream[i * _NUM_TRAIN:(i + 1) * _NUM_TRAIN] for i in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(_NUM_TRAIN))
  assert epochs[0] != epochs[1] != epochs[2]


def test_two_datasets_are_interleaved_in_a_random_order(config):
  config = config.copy_and_resolve_references()
  config.data.train_splits = (("shapes", "train"), ("shapes", "test"))
  source = data.make_source(config, "train", 0, 1)
  assert source.sizes == (_NUM_TRAIN, _NUM_TEST)
  indices = pipeline._train_records(source, 0, 100, 0).map(lambda r: r["index"])
  epoch = list(itertools.islice(indices.as_numpy_iterator(), _NUM_TRAIN + _NUM_TEST))
  assert sorted(epoch) == list(range(_NUM_TRAIN + _NUM_TEST))
  assert max(epoch[:_NUM_TRAIN]) >= _NUM_TRAIN  # not all of the first dataset first


def test_objects_beyond_max_boxes_are_dropped_and_counted(config, caplog):
  config = config.copy_and_resolve_references()
  config.data.max_boxes = 1
  source = data.make_source(config, "train", 0, 1)
  with caplog.at_level("WARNING"):
    batches = _batches(config, count=3, source=source)
  assert all(b["mask"].sum(axis=1).max() == 1 for b in batches)
  reason = "more objects than config.data.max_boxes, the extra ones dropped"
  files, objects = source.problems.counts()[reason]
  assert files >= 1 and objects >= files
  messages = [r.getMessage() for r in caplog.records if reason in r.getMessage()]
  assert len(messages) == files  # one per image file, naming it and its number of objects
  for message in messages:
    found = re.fullmatch(rf"ssd_jax\.data: \S+/JPEGImages/train_\d+\.jpg: {reason} \((\d+)\)",
                         message)
    assert found and int(found[1]) > 1, message


def test_evaluation_yields_every_example_once_and_pads_the_last_batch(config):
  batches = list(data.eval_iterator(config))
  ds, num_batches, _ = data.eval_dataset(config)
  assert len(batches) == num_batches == 3  # 7 examples, batches of 3
  valid = np.concatenate([b["valid"] for b in batches])
  np.testing.assert_array_equal(valid, [True] * 7 + [False] * 2)
  ids = np.concatenate([b["image_id"] for b in batches])[valid]
  assert sorted(ids) == [f"test_{i:06d}".encode() for i in range(7)]
  assert set(batches[0]) == set(data.EVAL_KEYS)
  assert (np.concatenate([b["size"] for b in batches])[valid] == 48).all()
  last = batches[-1]
  assert not last["mask"][~last["valid"]].any() and (last["image"][~last["valid"]] == 0).all()


def test_evaluation_boxes_are_the_original_ones(config):
  source = data.make_source(config, "eval", 0, 1)
  originals = {e["image_id"]: e for e in data.examples(source).as_numpy_iterator()}
  for batch in data.eval_iterator(config):
    for i in np.flatnonzero(batch["valid"]):
      original = originals[batch["image_id"][i]]
      np.testing.assert_array_equal(batch["boxes"][i][batch["mask"][i]], original["boxes"])
      np.testing.assert_array_equal(batch["labels"][i][batch["mask"][i]], original["labels"])


def test_processes_read_disjoint_shards_and_step_together(config):
  ids, steps = [], []
  for process in range(3):
    source = data.make_source(config, "eval", process, 3)
    config.data.eval_batch_size = 3  # one example per process and step
    ds, num_batches, _ = data.eval_dataset(config, source)
    batches = list(ds.as_numpy_iterator())
    steps.append(len(batches))
    assert len(batches) == num_batches == 3  # the largest shard has 3 of the 7 examples
    valid = np.concatenate([b["valid"] for b in batches])
    ids.extend(np.concatenate([b["image_id"] for b in batches])[valid])
    train = data.make_source(config, "train", process, 3)
    assert train.num_examples in (3, 4)
  assert sorted(ids) == [f"test_{i:06d}".encode() for i in range(7)]


def test_train_iterator_reports_bad_data_after_each_epoch(config, caplog):
  config = config.copy_and_resolve_references()
  config.data.max_boxes = 1
  with caplog.at_level("WARNING"):
    batches = list(itertools.islice(data.train_iterator(config), 3))  # 12 records: one epoch
  assert len(batches) == 3 and isinstance(batches[0]["image"], np.ndarray)
  assert "after training epoch 1" in caplog.text and "max_boxes" in caplog.text
