"""The training loop: ``train_and_evaluate(config, workdir)``.

Sections: mesh, input, model and optimiser (built once into a frozen ``Bundle`` that the step and
the periodic evaluation share), restore, loop. The loop resumes from the latest
checkpoint in ``workdir``, saves every ``config.train.checkpoint_every`` steps and at the end,
saves and returns on SIGTERM (preemption), and stops on a non-finite loss without saving it.
"""

import dataclasses
import logging
import os
import signal
import threading
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from ssd_jax import checkpoint, data, models, optimizer, parallel, priors, progress
from ssd_jax import train_step as step_lib
from ssd_jax.config_validation import ConfigError


@dataclasses.dataclass(frozen=True)
class Bundle:
  """What a run builds once from its config, for the train step and the periodic evaluation."""
  mesh: Mesh
  graphdef: nnx.GraphDef  # the model's graph in training mode
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  priors: np.ndarray  # [P, 4] cxcywh


EvaluateFn = Callable[[step_lib.TrainState, int], dict[str, float]]
# Builds the periodic evaluation once, from the run's bundle (e.g. ``evaluate.periodic``).
MakeEvaluateFn = Callable[[Bundle], EvaluateFn]


class NonFiniteLossError(RuntimeError):
  """The loss or the gradients became NaN or infinite."""


class _Preemption:
  """Turns SIGTERM into a flag the loop polls between steps (main thread only)."""

  def __init__(self):
    self.requested = threading.Event()
    self.previous = None
    if threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, lambda *_: self.requested.set())

  def close(self) -> None:
    """Gives SIGTERM back to whoever handled it before (matters when called from a notebook)."""
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:  # every process must stop at the same step
      from jax.experimental import multihost_utils
      return self.requested.is_set() or multihost_utils.reached_preemption_sync_point(step)
    return self.requested.is_set()


def _host_metrics(metrics: dict[str, jax.Array]) -> dict[str, float]:
  return {name: float(value) for name, value in jax.device_get(metrics).items()}


SCRATCH = "scratch"  # config.train.init_from: random weights, asked for explicitly


def check_init_from(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError / FileNotFoundError for an unusable ``config.train.init_from``.

  Cheap (no file is read): called before anything is built. A config with
  ``train.requires_pretrained`` needs weights, or ``scratch`` said explicitly.
  """
  init_from = config.train.init_from
  if not init_from:
    if config.train.requires_pretrained:
      from ssd_jax import convert  # pylint: disable=g-import-not-at-top  (the weights it takes)
      expected = convert.PRETRAINED.get(config.model.name, "a converted weights checkpoint")
      raise ConfigError(
          f"{config.model.name} starts from pretrained weights: pass --config.train.init_from="
          f"FILE with FILE {expected}, saved beforehand on a machine with internet (see README, "
          f"Experiments; nothing is downloaded), or --config.train.init_from={SCRATCH} to train "
          "from random weights")
  elif init_from != SCRATCH:
    if not os.path.exists(init_from):
      raise FileNotFoundError(f"config.train.init_from={init_from!r}: no such file or folder")
    if os.path.isdir(init_from):
      return
    from ssd_jax import convert  # pylint: disable=g-import-not-at-top  (a weight file)
    if not init_from.endswith(convert.STATE_DICT_SUFFIXES):
      raise ConfigError(f"config.train.init_from={init_from!r}: expected {SCRATCH!r}, a folder "
                        "written by `python -m ssd_jax.convert`, or a state_dict file ending in "
                        f"{' or '.join(convert.STATE_DICT_SUFFIXES)}")


def initial_model(config: ml_collections.ConfigDict) -> models.SSD:
  """``config``'s model, initialised with ``config.train.seed`` and then, per
  ``config.train.init_from``: nothing more ("" or "scratch"), a weights checkpoint folder
  (``checkpoint.load_weights``), or a ``.pth`` / ``.npz`` state_dict converted on the fly (checked
  against the model's shapes before the model is built)."""
  check_init_from(config)
  init_from = config.train.init_from
  build = lambda: models.create_model(config, nnx.Rngs(config.train.seed))  # noqa: E731
  try:
    if init_from in ("", SCRATCH):
      return build()
    if os.path.isdir(init_from):
      # The folder holds every weight: no initialisation to compute, only shapes.
      model = nnx.eval_shape(build)
      checkpoint.load_weights(init_from, model)
    else:
      from ssd_jax import convert  # pylint: disable=g-import-not-at-top  (only for weight files)
      model = convert.model_with(config, convert.converted_weights(config, init_from),
                                 config.train.seed)
  except checkpoint.WeightsMismatchError as error:
    raise ConfigError(f"config.train.init_from={init_from!r}: {error}") from error
  logging.info("initialised the weights from %s", init_from)
  return model


def initial_state(config: ml_collections.ConfigDict, mesh) -> tuple:
  """(graphdef, replicated fresh state, tx, schedule) of ``config``'s model and optimiser."""
  model = initial_model(config)
  tx, schedule = optimizer.create_optimizer(config)
  graphdef, state = step_lib.create_train_state(model, tx)
  state = jax.device_put(state, parallel.replicated(mesh))
  return graphdef, state, tx, schedule


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       make_evaluate: MakeEvaluateFn | None = None) -> step_lib.TrainState:
  """Trains ``config`` in ``workdir`` (resuming there) and returns the final train state.

  ``make_evaluate(bundle)``, when given, is called once and returns ``evaluate(state, step)``,
  which runs every ``config.train.eval_every`` steps and at the end; its metrics are logged and
  written to TensorBoard.
  """
  check_init_from(config)  # a missing backbone file stops here, before anything is built

  # Mesh.
  mesh = parallel.create_mesh(config)
  parallel.check_batch_size(config.data.batch_size, mesh)

  # Input: the source first, so that a missing dataset is reported before any model is built.
  source = data.make_source(config, "train")

  # Model and optimiser.
  graphdef, state, tx, schedule = initial_state(config, mesh)
  bundle = Bundle(mesh, graphdef, tx, schedule, priors.from_config(config))
  progress.log_startup(state.params, mesh, config.data.batch_size)

  # Restore.
  manager = checkpoint.create_manager(workdir, config.train.keep_checkpoints)
  restored = checkpoint.restore(manager, state)
  if restored is not None:
    state, _ = restored
  start_step = int(jax.device_get(state.step))
  total_steps = config.train.num_steps

  batches: Iterator[dict[str, np.ndarray]] = data.train_iterator(config, start_step, source)

  step_fn = step_lib.jit_train_step(mesh, state, graphdef=bundle.graphdef, tx=bundle.tx,
                                    schedule=bundle.schedule, priors=bundle.priors,
                                    options=step_lib.StepOptions.from_config(config))
  evaluate = make_evaluate(bundle) if make_evaluate is not None else None
  report = progress.Progress(workdir, total_steps, config.data.batch_size,
                             config.train.log_every_seconds, start_step)
  preemption = _Preemption()
  best = checkpoint.BestKeeper(workdir)
  meta = lambda step: {"step": step, "examples_seen": step * config.data.batch_size}

  # Loop.
  step = start_step
  while step < total_steps:
    batch = parallel.global_batch(next(batches), mesh)
    state, metrics = step_fn(state, batch)
    step += 1
    # One host sync per step: a non-finite step must be caught before any checkpoint saves it.
    # The input pipeline keeps prefetching in its own threads meanwhile.
    host = _host_metrics(metrics)
    if not host["finite"]:
      raise NonFiniteLossError(
          f"non-finite loss or gradients at step {step} (loss {host['loss']}); nothing was saved "
          f"for it. Last good checkpoint: step {manager.latest_step()} in {manager.directory}. "
          "Lower config.optimizer.learning_rate, or set config.train.skip_nonfinite=True.")
    if report.due() or step == total_steps:
      report.report(step, host)
    if step % config.train.checkpoint_every == 0 or step == total_steps:
      checkpoint.save(manager, state, meta(step))
    if evaluate is not None and (step % config.train.eval_every == 0 or step == total_steps):
      summary = evaluate(state, step)
      report.write(step, summary, prefix="eval")
      best.consider(state, summary, meta(step))
    if preemption.reached(step):
      logging.warning("SIGTERM: saving step %d and stopping; run again to resume", step)
      checkpoint.save(manager, state, meta(step))
      break
  preemption.close()
  manager.close()
  best.manager.close()
  return state
