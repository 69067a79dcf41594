"""Bad-data bookkeeping: every repair or skip is warned about once per file, counted and summarised.

Sources report problems while indexing annotations (plain Python) and while decoding and padding
inside tf.data (through ``report_if``, which calls back into Python only when something is wrong).
With ``strict=True`` (``config.data.on_bad_data == "error"``) the first problem raises instead.
"""

import collections
import threading
from typing import Iterator, TypeVar

from absl import logging
import tensorflow as tf


class BadDataError(ValueError):
  """Raised for bad data when ``config.data.on_bad_data == "error"``."""


T = TypeVar("T")


class Problems:
  """Counts problems per reason and per file; thread-safe (tf.data calls back from its threads)."""

  def __init__(self, strict: bool = False):
    self.strict = strict
    self._lock = threading.Lock()
    # reason -> file -> number of occurrences in that file (e.g. objects dropped).
    self._files: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    self._failure: str | None = None  # strict mode: the first report, raised

  def report(self, reason: str, file: str, detail: str = "", count: int = 1) -> None:
    """Records ``count`` occurrences (e.g. boxes) of ``reason`` in ``file`` and warns, the first
    time only: tf.data meets the same file again every epoch."""
    message = f"{file}: {reason}" + (f" ({detail})" if detail else "")
    if self.strict:
      failure = message + "; set config.data.on_bad_data = 'skip' to repair or skip"
      with self._lock:
        self._failure = self._failure or failure
      raise BadDataError(failure)
    with self._lock:
      first = file not in self._files[reason]
      if first:
        self._files[reason][file] = count
    if first:
      logging.warning("ssd_jax.data: %s", message)

  def raising(self, items: Iterator[T]) -> Iterator[T]:
    """``items`` (batches of a tf.data pipeline), where a strict-mode report from inside tf.data,
    which reaches the caller wrapped in a TF error and its traceback, is raised as the one-line
    BadDataError it was."""
    try:
      yield from items
    except tf.errors.OpError:
      if self._failure is None:
        raise
      raise BadDataError(self._failure) from None

  def counts(self) -> dict[str, tuple[int, int]]:
    """reason -> (number of files, number of occurrences)."""
    with self._lock:
      return {reason: (len(files), sum(files.values())) for reason, files in self._files.items()}

  def summary(self) -> str:
    """One line per reason, e.g. ``box clipped to the image: 3 in 2 files``; empty if none."""
    return "\n".join(f"  {reason}: {total} in {num_files} file(s)"
                     for reason, (num_files, total) in sorted(self.counts().items()))

  def log_summary(self, when: str) -> None:
    """Logs the summary (if anything went wrong) with ``when``, e.g. ``"after epoch 3"``."""
    summary = self.summary()
    if summary:
      logging.warning("ssd_jax.data: bad data so far (%s), repaired or skipped:\n%s", when, summary)

  def report_if(self, condition: tf.Tensor, reason: str | tf.Tensor, file: tf.Tensor,
                detail: str | tf.Tensor = "") -> tf.Tensor:
    """In-graph: reports ``reason`` for ``file`` when the scalar bool ``condition`` holds.

    Returns ``condition``; callers make their outputs depend on it so the report always runs.
    """

    def call_python(*texts: tf.Tensor) -> bool:
      self.report(*(text.numpy().decode("utf-8", "replace") for text in texts))
      return True

    texts = [tf.convert_to_tensor(text, tf.string) for text in (reason, file, detail)]
    return tf.cond(condition,
                   lambda: tf.ensure_shape(tf.py_function(call_python, texts, tf.bool), []),
                   lambda: tf.constant(False))
