r"""ssd_jax command line: ``python -m ssd_jax.main --config=configs/ssd300.py --workdir=DIR``.

Modes: ``train`` (the default; resumes from the latest checkpoint in the workdir and evaluates
periodically), ``eval`` (evaluates a checkpoint: ``--step``, default the latest), ``predict``
(``--images=PATTERN --output=DIR``: draws detections on image files) and ``export``
(``--output=DIR``: the whole detector as one ``jax.export`` file). Any config field can be
overridden: ``--config.optimizer.learning_rate=2e-3``.
"""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TF's C++ INFO lines say nothing useful here

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict", "export"], "What to run.")
_STEP = flags.DEFINE_integer("step", None,
                             "eval/predict/export: the checkpoint step (default: latest).")
_IMAGES = flags.DEFINE_string("images", None, "predict: image files (a path, folder or glob).")
_OUTPUT = flags.DEFINE_string("output", None, "predict: folder for the pictures and detections; "
                              "export: folder for the exported detector.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (multi-host runs); it is also "
                                 "called when the environment describes a cluster.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax(logging.Filter):
  """Drops orbax's per-file INFO chatter (dozens of lines per checkpoint); keeps its warnings."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def _log_to_file(workdir: str) -> None:
  """Copies the log to ``<workdir>/log.txt`` (process 0 only)."""
  handler = logging.FileHandler(os.path.join(workdir, "log.txt"))
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  logging.getLogger().addHandler(handler)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from ssd_jax import xla_flags
  xla_flags.apply(_MODE.value)  # the fastest XLA:CPU options, unless XLA_FLAGS sets them
  # Imported here so that --help and flag errors do not wait for JAX and TF.
  import jax
  from ssd_jax import config_validation, evaluate, export, parallel, predict, train
  from ssd_jax.config_validation import ConfigError

  logging.getLogger("absl").addFilter(_QuietOrbax())  # orbax logs through absl
  parallel.maybe_initialize_distributed(force=_DISTRIBUTED.value)
  config = _CONFIG.value
  config_validation.validate(config)
  workdir = _WORKDIR.value
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    _log_to_file(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  logging.info("config:\n%s", config)
  logging.info(xla_flags.summary())
  if _MODE.value == "train":
    train.train_and_evaluate(config, workdir, evaluate=evaluate.periodic(config, workdir))
  elif _MODE.value == "eval":
    evaluate.evaluate_checkpoint(config, workdir, _STEP.value)
  elif _MODE.value == "export":
    if not _OUTPUT.value:
      raise ConfigError("--mode=export needs --output=DIR")
    export.export_detector(config, workdir, _OUTPUT.value, _STEP.value)
  else:
    if not _IMAGES.value or not _OUTPUT.value:
      raise ConfigError("--mode=predict needs --images=PATTERN and --output=DIR")
    predict.predict(config, workdir, _IMAGES.value, _OUTPUT.value, _STEP.value)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config override errors (unknown field, wrong type) as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    sys.exit(f"error: {error}\nPass --helpfull to see the flags.")
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    overrides = [arg for arg in argv[1:] if arg.startswith("--config.")]
    sys.exit(f"error: bad config override among {overrides}: {error}")


def run() -> None:
  """Entry point; turns configuration and missing-data errors into one line and exit status 2."""
  from ssd_jax.config_validation import ConfigError
  try:
    app.run(main, flags_parser=_parse_flags)
  except (ConfigError, FileNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
