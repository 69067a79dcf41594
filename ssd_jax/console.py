"""What the command line prints: short log lines, no known-harmless third-party notices.

The console gets ``HH:MM:SS message`` lines (warnings and errors say so); ``<workdir>/log.txt`` gets
every line with its date, level and source, and the full config. Silenced on the console only,
because they say nothing a user can act on: TensorFlow's oneDNN notice (printed by its C++ code
while it is imported, twice, before its log settings apply), JAX's probe for a TPU library on
machines without one, orbax's warnings that a checkpoint folder opened read-only (eval, predict and
export open it so on purpose) and TensorFlow's INFO lines while it writes a SavedModel. Orbax's
per-file INFO chatter is dropped everywhere. While the export's converters run
(``converters_to_log``), everything they say goes to ``log.txt`` only.
"""

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator

from absl import logging as absl_logging

# Lines of C++ start-up notices (matched as substrings), dropped from stderr while TF is imported.
NATIVE_NOTICES = ("oneDNN custom operations are on",
                  "All log messages before absl::InitializeLog() is called")
_FILE_LOGGER = "ssd_jax.log_file"


def _harmless(record: logging.LogRecord) -> bool:
  message, path = record.getMessage(), record.pathname
  tpu_probe = record.name.startswith("jax") and "Unable to initialize backend" in message
  read_only = "orbax" in path and ("read_only=True" in message or "read only" in message)
  # TF's SavedModel writer and jax2tf narrate each file and callback (export).
  tf_info = record.levelno <= logging.INFO and os.sep + "tensorflow" + os.sep in path
  return tpu_probe or read_only or tf_info


class _ConsoleFilter(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not _harmless(record)


class _QuietOrbax(logging.Filter):
  """Drops orbax's per-file INFO chatter (dozens of lines per checkpoint); keeps its warnings."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


class _Short(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    level = "" if record.levelno == logging.INFO else record.levelname + " "
    return f"{self.formatTime(record, '%H:%M:%S')} {level}{record.getMessage()}"


def setup() -> None:
  """Short console lines without the known-harmless notices (call once absl has started)."""
  handler = absl_logging.get_absl_handler()
  handler.setFormatter(_Short())
  handler.addFilter(_ConsoleFilter())
  logging.getLogger("absl").addFilter(_QuietOrbax())  # orbax logs through absl


def log_to_file(workdir: str) -> None:
  """Copies every log line to ``<workdir>/log.txt`` (process 0 only)."""
  handler = logging.FileHandler(os.path.join(workdir, "log.txt"))
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
  logging.getLogger().addHandler(handler)
  file_only = logging.getLogger(_FILE_LOGGER)
  file_only.propagate = False
  file_only.setLevel(logging.INFO)
  file_only.addHandler(handler)


def to_file_only(message: str) -> None:
  """Writes ``message`` to log.txt but not to the console (e.g. the full config)."""
  logging.getLogger(_FILE_LOGGER).info(message)


@contextlib.contextmanager
def _stderr_captured(handle: Callable[[list[str]], None]) -> Iterator[None]:
  """Captures what is written to file descriptor 2 inside the block (C++ code included) and
  gives its lines (with their line ends) to ``handle`` when the block ends."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      handle(captured.read().decode(errors="replace").splitlines(keepends=True))


def _write_to_stderr(lines: list[str]) -> None:
  sys.stderr.write("".join(lines))
  sys.stderr.flush()


def native_notices_dropped() -> contextlib.AbstractContextManager[None]:
  """Drops ``NATIVE_NOTICES`` lines that C++ code writes to stderr (file descriptor 2) inside the
  block, e.g. while TensorFlow is imported; every other line is passed on when the block ends."""
  return _stderr_captured(lambda lines: _write_to_stderr(
      [line for line in lines if not any(notice in line for notice in NATIVE_NOTICES)]))


@contextlib.contextmanager
def converters_to_log() -> Iterator[None]:
  """Nothing reaches the console inside the block: log records go to log.txt only and what C++
  code writes to stderr is copied there, for converters (jax2onnx, TF's SavedModel writer and
  TFLite converter) that narrate their work in dozens of lines."""
  console = absl_logging.get_absl_handler()
  console.addFilter(_mute)
  try:
    with _stderr_captured(lambda lines: [to_file_only(line.rstrip()) for line in lines
                                         if line.strip()]):
      yield
  finally:
    console.removeFilter(_mute)


def _mute(record: logging.LogRecord) -> bool:  # pylint: disable=unused-argument
  return False
