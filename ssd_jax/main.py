r"""ssd_jax command line: ``python -m ssd_jax.main --config=configs/ssd300.py --workdir=DIR``.

Modes: ``train`` (the default; resumes from the latest checkpoint in the workdir and evaluates
periodically), ``eval`` (evaluates a checkpoint: ``--step``, default the latest), ``predict``
(``--images=PATTERN --output=DIR``: draws detections on image files) and ``export``
(``--output=DIR [--format=jax,onnx,savedmodel,tflite]``: the detector as files that run
without ssd_jax). Any config field can be
overridden: ``--config.optimizer.learning_rate=2e-3``.
"""

import functools
import glob
import logging
import os
import sys
from typing import NoReturn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TF's C++ INFO lines say nothing useful here

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict", "export"], "What to run.")
_STEP = flags.DEFINE_integer("step", None,
                             "eval/predict/export: the checkpoint step (default: latest).")
_IMAGES = flags.DEFINE_string("images", None, "predict: image files (a path, folder or glob); "
                              "export: calibration images of int8 TFLite (default: eval split).")
_FORMAT = flags.DEFINE_string("format", "jax", "export: comma-separated formats among jax, onnx, "
                              "savedmodel, tflite.")
_OUTPUT = flags.DEFINE_string("output", None, "predict: folder for the pictures and detections; "
                              "export: folder for the exported detector (new, empty or an "
                              "earlier export, which it replaces).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (multi-host runs); it is also "
                                 "called when the environment describes a cluster (TPU pod, SLURM) "
                                 "or when any of the three flags below is given.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "Several processes: HOST:PORT of process 0, which every "
                                   "process reaches (jax.distributed.initialize).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Several processes: how many take part in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "Several processes: this one's number, 0..num_processes-1.")
flags.mark_flags_as_required(["config", "workdir"])


def _settle_classes(config) -> None:
  """Class names set on the command line set ``model.num_classes`` too, unless it is also set;
  class names and num_classes must then agree."""
  from ssd_jax import config_utils
  config_utils.expand_shorthands(config)
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  names = config.data.class_names
  if "data.class_names" in overrides and "model.num_classes" not in overrides:
    if names is None:  # the dataset's own (tfds, COCO json): read them
      from ssd_jax.data import sources
      names = sources.class_names(config)
    config.model.num_classes = len(names) + 1
  if names is not None:
    config_utils.check_num_classes(config.model.num_classes, tuple(names))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
  from ssd_jax import xla_flags
  xla_flags.apply(_MODE.value)  # the fastest XLA:CPU options, unless XLA_FLAGS sets them
  from ssd_jax import config_utils, console
  from ssd_jax.config_utils import ConfigError
  console.setup()
  config = _CONFIG.value
  # Reading a dataset's class names may start TF; validation imports the modules whose constants
  # it checks (JAX and TF among them).
  with console.native_notices_dropped():
    from ssd_jax import config_validation
    _settle_classes(config)
    config_validation.validate(config)
  if _MODE.value == "export" and not _OUTPUT.value:
    raise ConfigError("--mode=export needs --output=DIR")
  if _MODE.value == "predict" and not (_IMAGES.value and _OUTPUT.value):
    raise ConfigError("--mode=predict needs --images=PATTERN and --output=DIR")
  blocker = _MODE.value in ("export", "predict") and config_utils.file_in_the_way(_OUTPUT.value)
  if blocker:
    raise ConfigError(f"--output={_OUTPUT.value}: {blocker} is a file; expected a folder")
  # Imported here so that --help and config errors do not wait for JAX and TF.
  with console.native_notices_dropped():
    import jax
    from ssd_jax import evaluate, export, parallel, predict, progress, train

  parallel.maybe_initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value,
                                        _NUM_PROCESSES.value, _PROCESS_ID.value)
  workdir, mode = _WORKDIR.value, _MODE.value
  lead = jax.process_index() == 0  # writes what is written once, logs the closing summary
  if lead:
    os.makedirs(workdir, exist_ok=True)
    console.log_to_file(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    console.to_file_only(f"config:\n{config}")
  config_name = [value for name, value in _flag_values(sys.argv, "config") if name == "config"]
  logging.info("%s", progress.startup_summary(config, mode, config_name[-1] if config_name else "",
                                              workdir))
  logging.info(xla_flags.summary())
  if mode == "train":
    train.train_and_evaluate(config, workdir, functools.partial(evaluate.periodic, config, workdir))
    if lead:
      logging.info("%s", progress.train_summary(workdir))
  elif mode == "eval":
    evaluate.evaluate_checkpoint(config, workdir, _STEP.value)
    if lead:
      folders = glob.glob(os.path.join(workdir, "eval", "step_*"))
      logging.info("evaluation done\n%s",
                   progress.eval_summary(max(folders, key=os.path.getmtime)))
    else:
      logging.info("evaluation done (process 0 wrote the results)")
  elif mode == "export":
    try:
      export.export_detector(config, workdir, _OUTPUT.value, _STEP.value,
                             export.parse_formats(_FORMAT.value), calibration=_IMAGES.value)
    except export.ExportError as error:  # one line per format not written, exit status 1
      print("\n".join("error: " + line for line in str(error).splitlines()), file=sys.stderr)
      sys.exit(1)
    finally:
      parallel.barrier("ssd_jax export")  # the other processes wait for process 0's files
    if lead:
      logging.info("export done: %s (%s)", _OUTPUT.value,
                   ", ".join(sorted(os.listdir(_OUTPUT.value))))
  else:
    written = predict.predict(config, workdir, _IMAGES.value, _OUTPUT.value, _STEP.value)
    if lead:
      logging.info("prediction done: %d pictures (<name>.png) and detections.jsonl in %s",
                   written, _OUTPUT.value)
    else:
      logging.info("prediction done (this process drew its share of the pictures)")


def _fail(message: str) -> NoReturn:
  """Exits with status 2 after one line on stderr: what was wrong and what was expected."""
  print("error: " + "; ".join(line.strip() for line in message.splitlines() if line.strip()),
        file=sys.stderr)
  sys.exit(2)


def _flag_values(argv: list[str], prefix: str) -> list[tuple[str, str]]:
  """(name, value) of the ``--<prefix>...=value`` (or ``--<prefix>... value``) arguments."""
  found = []
  for index, arg in enumerate(argv):
    name, equals, value = arg.partition("=")
    if name == "--" + prefix or name.startswith("--" + prefix + "."):
      if not equals:
        value = argv[index + 1] if index + 1 < len(argv) else ""
      found.append((name[2:], value))
  return found


def _check_config_arguments(argv: list[str]) -> None:
  """One line for what ml_collections reports as tracebacks: a config file that is missing or
  fails to load (e.g. an unknown variant), and an override of a field that does not exist."""
  from ssd_jax import config_utils
  configs = _flag_values(argv, "config")
  files = [value for name, value in configs if name == "config"]
  if not files:
    return  # absl reports the missing required flag
  path = files[-1].split(":")[0]
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    known = sorted(n for n in os.listdir(folder) if n.endswith(".py")) if os.path.isdir(
        folder) else []
    _fail(f"--config={files[-1]}: no config file {path}"
          + (f" (in {folder}: {', '.join(known)})" if known else
             " (expected an experiment file such as configs/quickstart.py)"))
  try:
    config = config_utils.load_config_argument(files[-1])
  except Exception as error:  # noqa: BLE001 -- any failure of the user's config file is reported
    _fail(f"--config={files[-1]}: {type(error).__name__}: {error}")
  for name, value in configs:
    problem = name != "config" and config_utils.unknown_field(config, name.split(".", 1)[1])
    if problem:
      _fail(f"--{name}={value}: {problem}")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing; every flag or config override error is one line and exit status 2."""
  _check_config_arguments(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    _fail(str(error).splitlines()[0] + " (pass --helpfull to see the flags)")
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    overrides = " ".join(f"--{name}={value}" for name, value in _flag_values(argv, "config")
                         if name != "config")
    _fail(f"bad config override {overrides}: {str(error).strip(chr(39))}")


def run() -> None:
  """Entry point; configuration, missing-data and strict bad-data errors are one line, exit 2."""
  from ssd_jax.config_utils import ConfigError  # light: flag errors do not wait for JAX and TF
  try:
    app.run(main, flags_parser=_parse_flags)
  except (ConfigError, FileNotFoundError) as error:
    _fail(str(error))
  except ValueError as error:
    # Strict bad data (config.data.on_bad_data="error"); its module is imported only with TF.
    problems = sys.modules.get("ssd_jax.data.problems")
    if problems is None or not isinstance(error, problems.BadDataError):
      raise
    _fail(str(error))


if __name__ == "__main__":
  run()
