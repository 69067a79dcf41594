"""Input pipelines: decoded examples, endless training batches and one pass of evaluation batches.

Training order is a pure function of (config.data.seed, process, epoch): per epoch the datasets of
the split are interleaved in a seeded random order, cut into blocks of ``shuffle_buffer`` records
(the first block of seeded random length, so the blocks differ between epochs) and each block is
permuted; augmentation draws from a seed of (seed, process, epoch, example index). Step s of a run
therefore starts at record ``s * batch`` of the stream, and ``train_dataset(config, start_step=s)``
resumes exactly there, reading (not decoding) at most one epoch of records to get there.

Batches (numpy from the iterators) hold ``boxes`` float32 [B, max_boxes, 4] xyxy in [0, 1],
``labels`` int32 [B, max_boxes] and ``mask`` bool [B, max_boxes]. Training batches hold the decoded
images and the augmentation's drawn parameters, for ``ssd_jax.pixel_augment`` to turn into the
model's input on the device: ``image`` uint8 [B, M, M, 3] (each image in the top-left
``image_size`` int32 [B, 2] pixels, M = config.data.max_image_size), ``window`` float32 [B, 4],
``method`` int32 [B], ``photometric`` float32 [B, 5], ``channel_order`` int32 [B, 3], with boxes as
the window shows them. Evaluation batches hold ``image`` float32 [B, S, S, 3] normalised as
config.model says and add ``difficult`` bool [B, max_boxes], ``image_id`` [B], ``index`` int64 [B]
(the example's position in the split, the same on any number of processes), ``size`` int32 [B, 2]
(original height, width) and ``valid`` bool [B] (False for padding and unreadable images). B is
the per-process batch, config batch size / process count.
"""

from collections.abc import Iterator
import math

from absl import logging
import ml_collections
import numpy as np
import tensorflow as tf

from ssd_jax.data import augment
from ssd_jax.data.decode import decode
from ssd_jax.data.problems import Problems
from ssd_jax.data.sources import DatasetNotFoundError, make_source, Source

Example = dict[str, tf.Tensor]
_TARGET_KEYS = ("boxes", "labels", "mask")
TRAIN_KEYS = ("image", "image_size", "window", "method", "photometric", "channel_order"
              ) + _TARGET_KEYS
EVAL_KEYS = ("image",) + _TARGET_KEYS + ("difficult", "image_id", "index", "size", "valid")


def examples(source: Source, num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
  """Every record of ``source``, in order, decoded to the common example format: ``image`` uint8
  [H, W, 3], ``boxes``, ``labels``, ``difficult``, ``image_id``, ``size`` int32 [2], plus ``file``
  and ``valid`` (False when the image could not be decoded)."""
  records = source.parts[0]
  for part in source.parts[1:]:
    records = records.concatenate(part)
  return _decoded(records, source, num_parallel_calls)


def _decoded(records: tf.data.Dataset, source: Source, num_parallel_calls: int) -> tf.data.Dataset:
  ds = records.map(decode(source.problems, source.read_files),
                   num_parallel_calls=num_parallel_calls)
  # Last resort for files that pass the checks in decode and still fail (or vanished after
  # indexing): tf.data drops them with its own warning. Never in strict mode.
  return ds if source.problems.strict else ds.ignore_errors(log_warning=True)


def pad(max_boxes: int, problems: Problems) -> augment.Op:
  """Op: pads ``boxes``, ``labels``, ``difficult`` to ``max_boxes`` rows and adds ``mask``.

  Objects beyond ``max_boxes`` are dropped and reported.
  """

  def op(example: Example) -> Example:
    count = tf.shape(example["labels"])[0]
    reported = problems.report_if(
        count > max_boxes, "more objects than config.data.max_boxes, the extra ones dropped",
        example["file"], tf.strings.as_string(count))
    padded = {}
    with tf.control_dependencies([reported]):
      for key in ("boxes", "labels", "difficult"):
        value = example[key][:max_boxes]
        extra = [[0, max_boxes - tf.shape(value)[0]]] + [[0, 0]] * (value.shape.rank - 1)
        padded[key] = tf.ensure_shape(tf.pad(value, extra), [max_boxes] + value.shape[1:])
    return {**example, **padded, "mask": tf.range(max_boxes) < count}

  return op


def _key(seed: int, *data) -> tf.Tensor:
  """A stateless seed [2] from ``seed`` folded with each of ``data`` in turn."""
  key = tf.constant([seed, 0], tf.int64)
  for value in data:
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
  return key


def _merged(parts: list[tf.data.Dataset], sizes: tuple[int, ...], key: tf.Tensor,
            ) -> tf.data.Dataset:
  """The parts' records interleaved in the random order of ``key``, each part in its own order."""
  if len(parts) == 1:
    return parts[0]
  choices = tf.repeat(tf.range(len(parts), dtype=tf.int64), sizes)
  order = tf.data.Dataset.from_tensor_slices(tf.random.experimental.stateless_shuffle(choices, key))
  return tf.data.Dataset.choose_from_datasets(parts, order)


def _block_shuffled(records: tf.data.Dataset, block: int, key: tf.Tensor) -> tf.data.Dataset:
  """Records permuted within consecutive blocks of ``block``, the first of random length."""
  first = tf.random.stateless_uniform([], key, 0, block, dtype=tf.int64)
  blocks = records.take(first).ragged_batch(block).concatenate(
      records.skip(first).ragged_batch(block))

  def permute(number: tf.Tensor, batch: dict) -> dict:
    count = tf.shape(batch["index"], out_type=tf.int64)[0]
    order = tf.random.experimental.stateless_shuffle(
        tf.range(count), tf.random.experimental.stateless_fold_in(key, number))
    return tf.nest.map_structure(lambda value: tf.gather(value, order), batch)

  return blocks.enumerate().map(permute).prefetch(1).unbatch()


def _train_records(source: Source, seed: int, block: int, start: int) -> tf.data.Dataset:
  """Endless records from record ``start`` of the stream, each with ``seed`` for augmentation."""
  num = source.num_examples
  start_epoch, offset = divmod(start, num)

  def epoch_records(epoch: tf.Tensor) -> tf.data.Dataset:
    key = _key(seed, source.process_index, epoch)
    records = _merged(list(source.parts), source.sizes, tf.random.experimental.stateless_fold_in(key, -1))
    records = _block_shuffled(records, min(block, num),
                              tf.random.experimental.stateless_fold_in(key, -2))
    records = records.skip(tf.where(epoch == start_epoch, tf.constant(offset, tf.int64), 0))
    return records.map(lambda record: {
        **record, "seed": tf.random.experimental.stateless_fold_in(key, record["index"])})

  return tf.data.Dataset.counter(start_epoch).flat_map(epoch_records)


def _local_batch(batch_size: int, source: Source) -> int:
  if batch_size % source.process_count:
    raise ValueError(f"batch size {batch_size} is not a multiple of the {source.process_count} "
                     f"processes")
  return batch_size // source.process_count


def _preprocess(ops: list[augment.Op], keys: tuple[str, ...]) -> augment.Op:
  def fn(example: Example) -> Example:
    example = augment.apply(ops, example)
    return {key: example[key] for key in keys}

  return fn


def _options(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True  # a seed gives one stream, however the threads are scheduled
  return ds.with_options(options)


def train_dataset(config: ml_collections.ConfigDict, start_step: int = 0,
                  source: Source | None = None) -> tuple[tf.data.Dataset, Source]:
  """Endless per-process training batches (TRAIN_KEYS), the stream from step ``start_step`` on.

  The same config and start step give the same batches, so a resumed run continues the stream.
  """
  data = config.data
  source = source or make_source(config, "train")
  if not source.num_examples:
    raise DatasetNotFoundError(
        f"process {source.process_index} of {source.process_count} has no training image: "
        f"config.data.train_splits hold fewer images than there are processes")
  batch = _local_batch(data.batch_size, source)
  records = _train_records(source, data.seed, data.shuffle_buffer, start_step * batch)
  ops = augment.train_ops(config) + [pad(data.max_boxes, source.problems)]
  ds = _decoded(records, source, data.num_parallel_calls).map(
      _preprocess(ops, TRAIN_KEYS), num_parallel_calls=data.num_parallel_calls)
  # Images of any size up to the canvas, padded to it as they are batched (one copy).
  canvas = {"image": [data.max_image_size, data.max_image_size, 3]}
  ds = ds.padded_batch(batch, padded_shapes={key: canvas.get(key, spec.shape)
                                             for key, spec in ds.element_spec.items()},
                       drop_remainder=True)
  return _options(ds.prefetch(data.prefetch)), source


def eval_dataset(config: ml_collections.ConfigDict, source: Source | None = None,
                 ) -> tuple[tf.data.Dataset, int, Source]:
  """One pass of per-process evaluation batches (EVAL_KEYS) and their number.

  Every example of this process's shard comes once, in order; the last batches are padded with
  ``valid`` False examples so that every process yields the same number of batches.
  """
  data = config.data
  source = source or make_source(config, "eval")
  batch = _local_batch(data.eval_batch_size, source)
  num_batches = math.ceil(source.max_process_size / batch)
  ops = augment.eval_ops(config) + [pad(data.max_boxes, source.problems)]
  ds = examples(source, data.num_parallel_calls).map(
      _preprocess(ops, EVAL_KEYS), num_parallel_calls=data.num_parallel_calls)
  ds = ds.concatenate(blanks(ds))
  ds = ds.batch(batch, drop_remainder=True).take(num_batches).prefetch(data.prefetch)
  return _options(ds), num_batches, source


def blanks(ds: tf.data.Dataset, count: int = -1) -> tf.data.Dataset:
  """``count`` (-1: endless) all-zero examples shaped like ``ds``'s (a dimension of unknown size
  is 1), to pad a last batch; their ``valid`` is False, so evaluation and prediction skip them."""
  blank = tf.nest.map_structure(
      lambda spec: tf.zeros([1 if n is None else n for n in spec.shape], spec.dtype),
      ds.element_spec)
  return tf.data.Dataset.from_tensors(blank).repeat(count)


def train_iterator(config: ml_collections.ConfigDict, start_step: int = 0,
                   source: Source | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Numpy training batches from step ``start_step``; logs bad-data counts after each epoch."""
  ds, source = train_dataset(config, start_step, source)
  per_step = _local_batch(config.data.batch_size, source)
  for step, batch in enumerate(source.problems.raising(ds.as_numpy_iterator()),
                               start=start_step + 1):
    epoch = step * per_step // source.num_examples  # epochs complete after this batch
    if epoch > (step - 1) * per_step // source.num_examples:
      logging.info("ssd_jax.data: step %d ends epoch %d of the training data", step, epoch)
      source.problems.log_summary(f"after training epoch {epoch}")
    yield batch


def eval_iterator(config: ml_collections.ConfigDict, source: Source | None = None,
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Numpy evaluation batches, one pass; logs bad-data counts at the end."""
  ds, _, source = eval_dataset(config, source)
  yield from source.problems.raising(ds.as_numpy_iterator())
  source.problems.log_summary("after the evaluation pass")
