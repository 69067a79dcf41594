"""The training loop: ``train_and_evaluate(config, workdir)``.

Sections: mesh, input, model and optimiser (built once into a frozen ``Bundle`` that the step and
the periodic evaluation share), restore, loop. The loop resumes from the latest
checkpoint in ``workdir``, saves every ``config.train.checkpoint_every`` steps and at the end,
saves and returns on SIGTERM (preemption), and stops on a non-finite loss without saving it.

The host never waits for the device except where it must: it dispatches up to
``config.train.dispatch_ahead`` steps beyond the last finished one, and reads values only to log,
checkpoint, evaluate or stop. Whether every step was finite is accumulated on the device
(``_track``) and read before each of those, so a non-finite step is caught before any checkpoint
or evaluation could see it. Checkpoints are written in the background (``checkpoint.save``).
"""

import collections
import logging
import os
import signal
import threading
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from ssd_jax import checkpoint, models, parallel, progress
from ssd_jax import train_step as step_lib
from ssd_jax.config_utils import ConfigError


Bundle = step_lib.Bundle  # what the periodic evaluation is built from (``MakeEvaluateFn``)
# The host batches of the steps after ``start_step``, given ``start_step``.
InputFn = Callable[[int], Iterator[step_lib.Batch]]
EvaluateFn = Callable[[step_lib.TrainState, int], dict[str, float]]
# Builds the periodic evaluation once, from the run's bundle (e.g. ``evaluate.periodic``).
MakeEvaluateFn = Callable[[Bundle], EvaluateFn]


class NonFiniteLossError(RuntimeError):
  """The loss or the gradients became NaN or infinite."""


class _Preemption:
  """SIGTERM -> the loop saves at a step and returns (the command then exits 0).

  One process: a Python SIGTERM handler sets a flag the loop polls between steps (main thread
  only). Several processes: JAX's preemption service, started by ``jax.distributed.initialize``,
  catches SIGTERM itself, and orbax's ``manager.reached_preemption(step)`` (JAX's preemption sync
  point) makes every process stop at the same step; a Python handler there would replace JAX's.
  """

  def __init__(self, manager):
    self.manager, self.requested, self.previous = manager, threading.Event(), None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, lambda *_: self.requested.set())

  def close(self) -> None:
    """Gives SIGTERM back to whoever handled it before (matters when called from a notebook)."""
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)

  def reached(self, step: int) -> bool:
    """Every process calls this after every step, in the same order."""
    if jax.process_count() > 1:
      return self.manager.reached_preemption(step)
    return self.requested.is_set()


class _Profiler:
  """A ``jax.profiler`` trace of steps start+1..stop (``config.train.profile_steps``) in
  ``<workdir>/plugins/profile``, where TensorBoard's profile tab finds it, plus a Perfetto trace."""

  def __init__(self, steps: tuple, workdir: str):
    steps = tuple(steps)
    if steps and not (len(steps) == 2 and all(isinstance(s, int) for s in steps)
                      and 0 <= steps[0] < steps[1]):
      raise ConfigError(f"config.train.profile_steps={steps}: expected () or (start, stop) with "
                        "0 <= start < stop")
    self.start, self.stop = steps or (-1, -1)
    self.workdir, self.active = workdir, False

  def before_step(self, step: int) -> None:
    """Starts the trace before step ``step + 1`` when it is in the profiled range."""
    if not self.active and self.start <= step < self.stop:
      jax.profiler.start_trace(self.workdir, create_perfetto_trace=True)
      self.active = True

  def after_step(self, step: int, state: step_lib.TrainState) -> None:
    """Stops the trace once step ``stop`` has been computed (not only dispatched)."""
    if self.active and step >= self.stop:
      self.close(state)

  def close(self, state: step_lib.TrainState) -> None:
    if self.active:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      logging.info("profile of steps %d..%d written to %s", self.start + 1, self.stop,
                   os.path.join(self.workdir, "plugins", "profile"))


Health = dict[str, jax.Array]


def _fresh_health(mesh) -> Health:
  """No step seen yet: ``first_bad`` 0 (no non-finite step), its loss, the non-finite count."""
  zeros = {"first_bad": jnp.zeros((), jnp.int32), "bad_loss": jnp.zeros((), jnp.float32),
           "nonfinite": jnp.zeros((), jnp.int32)}
  return jax.device_put(zeros, parallel.replicated(mesh))


@jax.jit
def _track(health: Health, metrics: dict[str, jax.Array], step: jax.Array) -> Health:
  """Folds step ``step``'s finite flag into ``health``, on the device (no host sync)."""
  bad = ~metrics["finite"]
  first = bad & (health["first_bad"] == 0)
  return {"first_bad": jnp.where(first, step, health["first_bad"]),
          "bad_loss": jnp.where(first, metrics["loss"].astype(jnp.float32), health["bad_loss"]),
          "nonfinite": health["nonfinite"] + bad.astype(jnp.int32)}


def _host(tree) -> dict:
  """One device-to-host copy of a dict of scalars (waits for the steps that made them)."""
  return {name: value.item() for name, value in jax.device_get(tree).items()}


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


def initial_state(config: ml_collections.ConfigDict, mesh: Mesh,
                  ) -> tuple[Bundle, step_lib.TrainState, step_lib.StepFn]:
  """``train_step.make_step`` of ``config``'s initial model (``initial_model``: ``init_from``)."""
  return step_lib.make_step(config, mesh, initial_model(config))


def pipeline_input(config: ml_collections.ConfigDict) -> InputFn:
  """The tf.data pipeline's training batches. Its source is opened here, so that a missing
  dataset is reported before any model is built; TF is imported here only, so that the loop
  runs without it on batches from elsewhere (``train_and_evaluate``'s ``input_fn``)."""
  from ssd_jax import data  # pylint: disable=g-import-not-at-top
  source = data.make_source(config, "train")
  return lambda start_step: data.train_iterator(config, start_step, source)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       make_evaluate: MakeEvaluateFn | None = None,
                       input_fn: InputFn | None = None) -> step_lib.TrainState:
  """Trains ``config`` in ``workdir`` (resuming there) and returns the final train state.

  ``make_evaluate(bundle)``, when given, is called once and returns ``evaluate(state, step)``,
  which runs every ``config.train.eval_every`` steps and at the end; its metrics are logged and
  written to TensorBoard. ``input_fn`` gives the batches (default: ``pipeline_input(config)``;
  the benchmarks pass batches held in memory).
  """
  check_init_from(config)  # a missing backbone file stops here, before anything is built

  # Mesh.
  mesh = parallel.create_mesh(config)
  parallel.check_batch_size(config.data.batch_size, mesh)
  profiler = _Profiler(config.train.profile_steps, workdir)
  if config.train.dispatch_ahead < 0:
    raise ConfigError(f"config.train.dispatch_ahead={config.train.dispatch_ahead}: expected 0 or "
                      "more steps")

  # Input: the source first, so that a missing dataset is reported before any model is built.
  if input_fn is None:
    input_fn = pipeline_input(config)

  # Model, optimiser and step (compiled at its first call).
  bundle, state, step_fn = initial_state(config, mesh)
  progress.log_startup(state.params, mesh, config.data.batch_size)

  # Restore.
  manager = checkpoint.create_manager(workdir, config.train.keep_checkpoints)
  restored = checkpoint.restore(manager, state)
  if restored is not None:
    state, _ = restored
  start_step = int(jax.device_get(state.step))
  total_steps = config.train.num_steps

  batches: Iterator[step_lib.Batch] = parallel.device_batches(
      input_fn(start_step), mesh, config.data.device_prefetch)

  evaluate = make_evaluate(bundle) if make_evaluate is not None else None
  report = progress.Progress(workdir, total_steps, config.data.batch_size,
                             config.train.log_every_seconds, start_step)
  preemption = _Preemption(manager)
  best = checkpoint.create_best_manager(workdir)
  meta = lambda step: {"step": step, "examples_seen": step * config.data.batch_size}

  def check(health: dict[str, float]) -> None:
    """Stops the run at its first non-finite step, unless those updates were skipped."""
    if health["first_bad"] and not config.train.skip_nonfinite:
      manager.wait_until_finished()  # the last good checkpoint is complete before we name it
      raise NonFiniteLossError(
          f"non-finite loss or gradients at step {health['first_bad']} (loss "
          f"{health['bad_loss']}); nothing was saved for it or after it. Last good checkpoint: "
          f"step {manager.latest_step()} in {manager.directory}. Lower "
          "config.optimizer.learning_rate, or set config.train.skip_nonfinite=True.")

  # Loop.
  step, health, skipped = start_step, _fresh_health(mesh), 0
  in_flight: collections.deque = collections.deque()  # finite flags of unfinished steps
  try:
    while step < total_steps:
      profiler.before_step(step)
      state, metrics = step_fn(state, next(batches))
      step += 1
      health = _track(health, metrics, state.step)
      in_flight.append(metrics["finite"])
      if len(in_flight) > config.train.dispatch_ahead:  # bounds the host's lead over the device
        in_flight.popleft().block_until_ready()
      profiler.after_step(step, state)
      last = step == total_steps
      log = report.due() or last
      save = step % config.train.checkpoint_every == 0 or last
      run_eval = evaluate is not None and (step % config.train.eval_every == 0 or last)
      preempted = preemption.reached(step)
      if not (log or save or run_eval or preempted):
        continue
      # The only reads of the device: they wait for this step, so they see every step so far.
      host = _host({**metrics, **health})
      # Several processes stop together: at steps that every process stops at (a log line is due
      # by each one's own clock), or one would leave the others waiting in the next collective.
      if save or run_eval or preempted or jax.process_count() == 1:
        check(host)
      if host["nonfinite"] > skipped:
        logging.warning("%d non-finite updates skipped so far (first at step %d)",
                        host["nonfinite"], host["first_bad"])
        skipped = host["nonfinite"]
      if log:
        report.report(step, host)
      if save or preempted:
        checkpoint.save(manager, state, meta(step))
      if run_eval:
        summary = evaluate(state, step)  # the state in memory: no checkpoint is read
        report.write(step, summary, prefix="eval")
        checkpoint.save_if_best(best, state, summary, meta(step))
      if preempted:
        logging.warning("SIGTERM: saving step %d and stopping; run again to resume", step)
        break
  finally:
    profiler.close(state)
    preemption.close()
    manager.close()  # waits for the last save
    best.close()
  return state
