"""Data sources: tfds VOC/COCO, VOC-format folders, COCO-format json files and synthetic shapes.

A source gives this process's shard of a split as tf.data "records", one per image, in fixed order:
``{"image": encoded bytes (tfds) or file path (folders), "file": where it came from (for warnings),
"image_id": string or int64, "boxes": float32 [N, 4] xyxy in [0, 1], "labels": int32 [N] in 1..C-1,
"difficult": bool [N] (COCO: crowd), "index": int64, the record's position in the whole split as
one process reads it (parts one after another)}``: the same record has the same index whatever the
process count, which is how several processes' results are put back in one process's order.
``ssd_jax.data.pipeline.examples`` decodes them into examples. Nothing is ever downloaded: a missing dataset raises ``DatasetNotFoundError`` saying
what was looked for, where, and how to prepare it.
"""

import dataclasses
import os
from typing import NamedTuple

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ssd_jax import config_utils
from ssd_jax.config_utils import ConfigError
from ssd_jax.data import annotations
from ssd_jax.data import synthetic
from ssd_jax.data.problems import Problems

# COCO category id of each of tfds' 80 contiguous COCO labels (the official json's id order).
COCO_CATEGORY_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
                     24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47,
                     48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70,
                     72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)
SOURCES = ("tfds", "voc_folder", "coco_json", "synthetic")  # config.data.source
ON_BAD_DATA = ("skip", "error")  # config.data.on_bad_data: repair/skip with a warning, or stop


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is not where the config says; the message says how to prepare it."""


@dataclasses.dataclass
class Source:
  """This process's records of one split (one part per dataset in it)."""
  class_names: tuple[str, ...]  # label l is class_names[l - 1]
  category_ids: tuple[int, ...] | None  # COCO category id of label l at [l - 1]; None if not COCO
  parts: tuple[tf.data.Dataset, ...]
  sizes: tuple[int, ...]  # records in each part
  max_process_size: int  # the most records any process gets (evaluation pads to it)
  read_files: bool  # records hold file paths rather than encoded images
  problems: Problems
  process_index: int
  process_count: int

  @property
  def num_examples(self) -> int:
    return sum(self.sizes)


class _Part(NamedTuple):
  """One dataset of a split: this process's records and what is known about them."""
  records: tf.data.Dataset
  positions: np.ndarray  # int64 [n]: where each of the records stands in the whole part
  process_sizes: list[int]  # records of each process
  class_names: tuple[str, ...]
  category_ids: tuple[int, ...] | None


def yxyx_to_xyxy(boxes: tf.Tensor) -> tf.Tensor:
  """tfds BBoxFeature (y_min, x_min, y_max, x_max) -> our (x_min, y_min, x_max, y_max)."""
  return tf.gather(boxes, [1, 0, 3, 2], axis=-1)


def make_source(config: ml_collections.ConfigDict, split: str, process_index: int | None = None,
                process_count: int | None = None) -> Source:
  """The source of ``config.data.train_splits`` (split "train") or ``eval_splits`` ("eval").

  Process index and count default to JAX's; each process gets a disjoint shard.
  """
  if process_index is None or process_count is None:
    import jax  # Only here: tests and tools pass the process explicitly.
    process_index, process_count = jax.process_index(), jax.process_count()
  data = config.data
  if data.source not in SOURCES:
    raise ConfigError(f"config.data.source must be one of {SOURCES}, got {data.source!r}")
  if data.on_bad_data not in ON_BAD_DATA:
    raise ConfigError(f"config.data.on_bad_data must be one of {ON_BAD_DATA}, got "
                     f"{data.on_bad_data!r}")
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  problems = Problems(strict=data.on_bad_data == "error")
  field = f"config.data.{split}_splits"
  entries = [split_entry(entry, field) for entry in
             (data.train_splits if split == "train" else data.eval_splits)]
  make_part = _tfds_part if data.source == "tfds" else _folder_part
  parts = [make_part(config, entry, split == "train", problems, process_index, process_count)
           for entry in entries]
  class_names = parts[0].class_names
  for part, entry in zip(parts, entries):
    if tuple(n.lower() for n in part.class_names) != tuple(n.lower() for n in class_names):
      raise ConfigError(f"{field}: {entry}'s class names {part.class_names} differ from "
                        f"{entries[0]}'s {class_names}")
  config_utils.check_num_classes(config.model.num_classes, class_names)
  process_sizes = np.sum([part.process_sizes for part in parts], axis=0)
  offsets = np.cumsum([0] + [sum(part.process_sizes) for part in parts[:-1]])
  records = tuple(_with_index(part, offset) for part, offset in zip(parts, offsets))
  return Source(tuple(class_names), parts[0].category_ids, records,
                tuple(p.process_sizes[process_index] for p in parts), int(process_sizes.max()),
                data.source != "tfds", problems, process_index, process_count)


def _with_index(part: _Part, offset: int) -> tf.data.Dataset:
  """The part's records with their ``index`` in the whole split (the part starts at ``offset``)."""
  indices = tf.data.Dataset.from_tensor_slices(offset + part.positions.astype(np.int64))
  return tf.data.Dataset.zip(part.records, indices).map(
      lambda record, index: {**record, "index": index})


def split_entry(entry, field: str) -> tuple[str, str]:
  """A split entry, ``(where, which)`` or its short spelling ``"where:which"``, as a pair."""
  if isinstance(entry, str) and ":" in entry:
    return tuple(entry.rsplit(":", 1))
  if not isinstance(entry, str) and len(entry) == 2 and all(isinstance(e, str) for e in entry):
    return tuple(entry)
  raise ConfigError(f"{field}: entry {entry!r}: expected (where, which) or 'where:which', e.g. "
                    f"--{field}=boxes:train (repeat the flag for several)")


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The config's class names or, when it defers to the dataset's (None), those of the first
  eval split: the tfds builder's label names or the COCO json's categories, sorted by id."""
  data = config.data
  if data.class_names is not None:
    return tuple(data.class_names)
  where, which = split_entry(data.eval_splits[0], "config.data.eval_splits")
  if data.source == "tfds":
    return tuple(_prepared_builder(config, where).info.features["objects"]["label"].names)
  if data.source == "coco_json":
    json_path = os.path.join(os.path.expanduser(data.data_dir or ""), where)
    return annotations.coco_json_class_names(json_path)
  raise ConfigError(f"config.data.class_names must list the classes for source {data.source!r}")


def _prepared_builder(config: ml_collections.ConfigDict, name: str) -> tfds.core.DatasetBuilder:
  """The tfds builder of ``name`` in ``config.data.data_dir``; raises if it is not prepared."""
  data_dir = config.data.data_dir and os.path.expanduser(config.data.data_dir)
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise DatasetNotFoundError(
        f"tfds dataset {name!r} (version {builder.version}) is not prepared in data_dir "
        f"{config.data.data_dir or '(tfds default)'}: looked for {builder.data_dir}. ssd_jax never "
        f"downloads data. On a machine with internet run `tfds build {name} --data_dir=DIR`, copy "
        f"DIR here and set config.data.data_dir=DIR.")
  return builder


def _tfds_part(config: ml_collections.ConfigDict, entry: tuple[str, str], train: bool,
               problems: Problems, process_index: int, process_count: int) -> _Part:
  """This process's part of a tfds split."""
  name, split = entry
  builder = _prepared_builder(config, name)
  if builder.name not in ("voc", "coco"):
    raise ConfigError(f"tfds source supports the voc and coco builders, got {name!r}")
  class_names = tuple(builder.info.features["objects"]["label"].names)
  if config.data.class_names is not None and tuple(
      n.lower() for n in config.data.class_names) != tuple(n.lower() for n in class_names):
    raise ConfigError(f"config.data.class_names {tuple(config.data.class_names)} differ from "
                      f"{name}'s {class_names}; leave them out (None) to take {name}'s")
  shard_sizes = [builder.info.splits[tfds.split_for_jax_process(
      split, process_index=p, process_count=process_count)].num_examples
                 for p in range(process_count)]
  shard = tfds.split_for_jax_process(split, process_index=process_index,
                                     process_count=process_count)
  records = builder.as_dataset(split=shard, shuffle_files=False,
                               decoders={"image": tfds.decode.SkipDecoding()})
  is_voc = builder.name == "voc"
  keep_flagged = not train or (config.data.train_difficult if is_voc else config.data.train_crowd)

  def to_record(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    objects, filename = example["objects"], example["image/filename"]
    boxes = yxyx_to_xyxy(objects["bbox"])
    flagged = objects["is_difficult"] if is_voc else objects["is_crowd"]
    record = {"image": example["image"], "file": tf.strings.join([name, "/", filename]),
              "image_id": (tf.strings.regex_replace(filename, r"\.[^.]*$", "") if is_voc
                           else example["image/id"])}
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    empty = tf.boolean_mask(objects["bbox"], ~nonempty)  # as tfds holds them: yxyx in [0, 1]
    reported = problems.report_if(
        tf.reduce_any(~nonempty), "empty box, object dropped", record["file"],
        tf.strings.format("{} box(es): bbox (ymin, xmin, ymax, xmax) {}",
                          (tf.shape(empty)[0], empty), summarize=-1))
    keep = nonempty if keep_flagged else nonempty & ~flagged
    with tf.control_dependencies([reported]):
      record.update(boxes=tf.boolean_mask(boxes, keep),
                    labels=tf.boolean_mask(tf.cast(objects["label"], tf.int32) + 1, keep),
                    difficult=tf.boolean_mask(flagged, keep))
    return record

  category_ids = COCO_CATEGORY_IDS if not is_voc and len(class_names) == 80 else None
  return _Part(records.map(to_record), tfds_positions(shard, split, builder.info.splits),
               shard_sizes, class_names, category_ids)


def tfds_positions(shard, split: str, split_infos) -> np.ndarray:
  """Where the records of ``shard`` (``tfds.split_for_jax_process`` of ``split``) stand in
  ``split`` read whole, in tfds' reading order (``shuffle_files=False``): each sub-split of a
  ``split`` such as "train+validation" is cut evenly over the processes, so a process holds a
  contiguous run of each."""
  def runs(instructions) -> list[tuple[str, int, int]]:  # (split name, first, end)
    return [(i.splitname, i.from_ or 0,
             split_infos[i.splitname].num_examples if i.to is None else i.to)
            for i in instructions]

  whole = runs(shard.from_spec(split).to_absolute(split_infos))
  starts = np.cumsum([0] + [end - first for _, first, end in whole[:-1]])
  positions = [np.zeros(0, np.int64)]
  for name, first, end in runs(shard.to_absolute(split_infos)):
    start, part_first = next((start, f) for (n, f, e), start in zip(whole, starts)
                             if n == name and f <= first and end <= e)
    positions.append(start + np.arange(first - part_first, end - part_first))
  return np.concatenate(positions).astype(np.int64)


def _folder_part(config: ml_collections.ConfigDict, entry: tuple[str, str], train: bool,
                 problems: Problems, process_index: int, process_count: int) -> _Part:
  """This process's part of a VOC-format folder, COCO-format json or synthetic split."""
  data, (where, which) = config.data, entry
  data_dir = os.path.expanduser(data.data_dir or
                                ("~/.cache/ssd_jax" if data.source == "synthetic" else ""))
  if not data_dir:
    raise ConfigError(f"config.data.data_dir must be set for source {data.source!r}")
  class_names = None if data.class_names is None else tuple(data.class_names)
  category_ids = None
  if data.source == "coco_json":
    json_path, image_dir = os.path.join(data_dir, where), os.path.join(data_dir, which)
    if not (os.path.isfile(json_path) and os.path.isdir(image_dir)):
      raise DatasetNotFoundError(
          f"COCO-format data not found: looked for the json {json_path} and the image folder "
          f"{image_dir} (config.data.data_dir={data.data_dir!r}, split entry {entry}). Expected: a "
          f"COCO instances json whose images' file_name are relative to the image folder.")
    records, class_names, category_ids = annotations.coco_json_records(
        json_path, image_dir, class_names, problems, keep_crowd=not train or data.train_crowd,
        drop_empty=train)
  else:
    if class_names is None:
      raise ConfigError(f"config.data.class_names must list the classes for source {data.source!r}")
    root = os.path.join(data_dir, where)
    if data.source == "synthetic":
      root = synthetic.prepare(data.synthetic, class_names, data_dir, where)
    image_set = os.path.join(root, "ImageSets", "Main", which + ".txt")
    if not os.path.isfile(image_set):
      raise DatasetNotFoundError(
          f"VOC-format folder not found: looked for {image_set} (config.data.data_dir="
          f"{data.data_dir!r}, split entry {entry}). Expected: {root}/JPEGImages/<id>.jpg, "
          f"{root}/Annotations/<id>.xml and ImageSets/Main/{which}.txt listing the ids, one a "
          f"line; class names from config.data.class_names.")
    records = annotations.voc_folder_records(root, which, class_names, problems,
                                             keep_difficult=not train or data.train_difficult,
                                             drop_empty=train)
  if not records:
    raise DatasetNotFoundError(f"no usable images in {entry} under {data_dir} (see the warnings "
                               "above)")
  shard_sizes = [len(records[p::process_count]) for p in range(process_count)]
  # The ids' type from every record: a process whose share is empty (more processes than
  # images) still yields records of the others' types.
  id_dtype = np.array([record.image_id for record in records]).dtype
  return _Part(records_dataset(records[process_index::process_count], id_dtype),
               np.arange(len(records))[process_index::process_count], shard_sizes, class_names,
               category_ids)


def records_dataset(records: list[annotations.Record], id_dtype: np.dtype) -> tf.data.Dataset:
  """In-memory records (file paths and annotations; image ids of ``id_dtype``) -> tf.data
  records (none is fine)."""
  lengths = [len(record.labels) for record in records]

  def ragged(values: list[np.ndarray], shape: tuple[int, ...], dtype) -> tf.RaggedTensor:
    flat = np.concatenate([np.zeros(shape, dtype)] + [np.asarray(v, dtype) for v in values])
    return tf.RaggedTensor.from_row_lengths(flat, lengths)

  paths = tf.constant([record.image_path for record in records], tf.string)
  return tf.data.Dataset.from_tensor_slices({
      "image": paths, "file": paths,
      "image_id": np.array([record.image_id for record in records], id_dtype),
      "boxes": ragged([r.boxes for r in records], (0, 4), np.float32),
      "labels": ragged([r.labels for r in records], (0,), np.int32),
      "difficult": ragged([r.difficult for r in records], (0,), bool)})
