"""Orbax checkpoints of the train state in ``<workdir>/checkpoints``, and of a model's weights.

Each checkpoint holds three items: ``variables``, the model's variables ({"params",
"model_state"}: parameters and BatchNorm statistics), all that inference restores; ``training``,
the rest of the train state ({"step", "opt_state"}); and ``meta``, a small JSON record of where the
run stands (step, examples seen). Checkpoints written before the model's variables had their own
item hold the whole train state in one item, ``state``: both layouts restore. The input pipeline
is a pure function of (seed, step), so the step is the data position. Orbax writes each checkpoint
to a temporary folder and renames it when complete, so a process killed at any moment leaves only
complete checkpoints behind (and a temporary folder that the next manager cleans up).

Saves are asynchronous (orbax's own): ``save`` returns once the state has been copied off the
devices and the files are written by a background thread; the manager waits for a save before
it starts the next one, and ``manager.wait_until_finished()`` (or ``close()``) waits for the last.

A weights checkpoint (``save_weights`` / ``load_weights``: what ``python -m ssd_jax.convert``
writes and ``config.train.init_from`` reads) is one folder holding only a model's parameters and
BatchNorm statistics, as a nested dict keyed by their nnx paths.
"""

import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

VARIABLES, TRAINING, META = "variables", "training", "meta"
LEGACY_STATE = "state"  # the previous layout's one item for the whole train state
ITEMS = (VARIABLES, TRAINING, META, LEGACY_STATE)
# The variables a weights checkpoint holds: parameters and BatchNorm running statistics.
WEIGHTS = (nnx.Param, nnx.BatchStat)


class WeightsMismatchError(ValueError):
  """Weights that do not fit the model; the message names every missing, extra or mis-shaped key."""


def create_manager(workdir: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """A manager over ``<workdir>/checkpoints`` keeping the ``keep`` latest checkpoints.

  ``read_only`` (evaluation, prediction) neither creates the folder nor cleans up the unfinished
  saves of a killed run, which is the training run's job (and races a short-lived process's exit).
  """
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if read_only and not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint in {directory}: train first "
                            "(--mode=train with the same --workdir)")
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                         cleanup_tmp_directories=not read_only,
                                         read_only=read_only, enable_async_checkpointing=True)
  return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


def create_best_manager(workdir: str) -> ocp.CheckpointManager:
  """A manager over ``<workdir>/best`` that keeps the one checkpoint with the highest metric.

  Orbax's best-N preservation ranks every checkpoint in the folder by the metric saved with it,
  those of earlier runs in the same workdir included, and deletes the others once a save is
  complete: a resumed run never replaces a better checkpoint of its earlier life (on a tie the
  later one is kept). Its checkpoints have the items of those in ``<workdir>/checkpoints``.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, best_fn=lambda metrics: metrics["metric"], best_mode="max",
      keep_checkpoints_without_metrics=False, create=True, cleanup_tmp_directories=True,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "best"), options=options,
                               item_names=ITEMS)


def save_if_best(manager: ocp.CheckpointManager, state: Any, summary: dict[str, float],
                 meta: dict[str, Any]) -> None:
  """Offers ``state`` to a ``create_best_manager`` manager, ranked by the evaluation metric
  ("mAP" for VOC, "AP" for COCO; nothing is saved without one)."""
  value = summary.get("mAP", summary.get("AP"))
  if value is not None:
    save(manager, state, {**meta, "metric": value}, metrics={"metric": float(value)})


def model_variables(state: Any) -> dict[str, Any]:
  """The ``variables`` item of a train state (or of its abstract shapes)."""
  return {"params": state.params, "model_state": state.model_state}


def _training(state: Any) -> dict[str, Any]:
  return {"step": state.step, "opt_state": state.opt_state}


def save_args(state: Any, meta: dict[str, Any]) -> ocp.args.Composite:
  """The items of one checkpoint of ``state`` (a ``train_step.TrainState``), for ``manager.save``."""
  return ocp.args.Composite(**{VARIABLES: ocp.args.StandardSave(model_variables(state)),
                               TRAINING: ocp.args.StandardSave(_training(state)),
                               META: ocp.args.JsonSave(meta)})


def save(manager: ocp.CheckpointManager, state: Any, meta: dict[str, Any],
         metrics: dict[str, float] | None = None) -> None:
  """Starts saving ``state`` at its step; returns once it is copied off the devices (so the next
  step may reuse their buffers) and the previous save is complete. The files are written in the
  background: ``manager.wait_until_finished()`` before reading them or exiting."""
  step = int(jax.device_get(state.step))
  manager.save(step, args=save_args(state, meta), metrics=metrics, force=True)
  logging.info("saving checkpoint at step %d in %s", step, manager.directory)


def _step_to_restore(manager: ocp.CheckpointManager, step: int | None) -> int | None:
  """``step``, or the latest when None (None when there is none); FileNotFoundError naming the
  available steps when ``step`` is not among them."""
  if step is None:
    return manager.latest_step()
  if step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint for step {step} in {manager.directory}; "
                            f"available steps: {sorted(manager.all_steps())}")
  return step


def _is_legacy(manager: ocp.CheckpointManager, step: int) -> bool:
  """Whether checkpoint ``step`` has the previous layout (one ``state`` item)."""
  # The step's folder (not item_metadata, which warns about every item it has no handler for).
  return (manager.directory / str(step) / LEGACY_STATE).exists()


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
  """(state, meta) of checkpoint ``step`` (default: the latest), shaped and sharded like
  ``abstract_state`` (a train state of ``jax.ShapeDtypeStruct`` or of arrays); None when there is
  no checkpoint at all. Either layout.

  Raises FileNotFoundError naming the available steps when ``step`` is not among them.
  """
  step = _step_to_restore(manager, step)
  if step is None:
    return None
  if _is_legacy(manager, step):
    restored = manager.restore(step, args=ocp.args.Composite(**{
        LEGACY_STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}))
    state = restored[LEGACY_STATE]
  else:
    restored = manager.restore(step, args=ocp.args.Composite(**{
        VARIABLES: ocp.args.StandardRestore(model_variables(abstract_state)),
        TRAINING: ocp.args.StandardRestore(_training(abstract_state)),
        META: ocp.args.JsonRestore()}))
    state = abstract_state.replace(**restored[VARIABLES], **restored[TRAINING])
  logging.info("restored checkpoint at step %d from %s", step, manager.directory)
  return state, restored[META]


def restore_variables(manager: ocp.CheckpointManager, abstract_variables: dict[str, Any],
                      step: int | None = None) -> tuple[dict[str, Any], int] | None:
  """(model variables, step) of checkpoint ``step`` (default: the latest), without the optimiser
  state; None when there is no checkpoint at all. Either layout.

  ``abstract_variables``: {"params", "model_state"} of ``jax.ShapeDtypeStruct`` (with the
  shardings to restore onto). Raises FileNotFoundError as ``restore`` does.
  """
  step = _step_to_restore(manager, step)
  if step is None:
    return None
  if _is_legacy(manager, step):
    # Only the variables' part of the old train state: a partial restore of that pytree.
    restored = manager.restore(step, args=ocp.args.Composite(**{
        LEGACY_STATE: ocp.args.PyTreeRestore(
            abstract_variables, restore_args=ocp.checkpoint_utils.construct_restore_args(
                abstract_variables), partial_restore=True)}))[LEGACY_STATE]
  else:
    restored = manager.restore(step, args=ocp.args.Composite(**{
        VARIABLES: ocp.args.StandardRestore(abstract_variables)}))[VARIABLES]
  logging.info("restored the model's variables at step %d from %s", step, manager.directory)
  return restored, step


def flat_weights(model: nnx.Module) -> dict[str, Any]:
  """{"backbone/conv1_1/kernel": array, "backbone/stem/bn/mean": array, ...}: the model's weights.

  Values are numpy arrays, or jax.ShapeDtypeStruct for a model made with ``nnx.eval_shape``.
  """
  def value(var):
    raw = var.get_value()
    return raw if isinstance(raw, jax.ShapeDtypeStruct) else np.asarray(raw)
  return {"/".join(map(str, path)): value(var)
          for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(*WEIGHTS)))}


def set_weights(model: nnx.Module, values: Mapping[str, np.ndarray]) -> None:
  """Sets the model's weights from a flat dict with exactly its keys and shapes (or raises
  WeightsMismatchError naming every offending key, changing nothing)."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Any(*WEIGHTS)))
  keys = {"/".join(map(str, path)) for path, _ in flat}
  errors = [f"missing weight {k!r}" for k in sorted(keys - set(values))]
  errors += [f"unexpected weight {k!r}" for k in sorted(set(values) - keys)]
  for path, var in flat:
    key = "/".join(map(str, path))
    if key in values and tuple(values[key].shape) != tuple(var.shape):
      errors.append(f"weight {key!r} has shape {tuple(values[key].shape)}, "
                    f"expected {tuple(var.shape)}")
  if errors:
    raise WeightsMismatchError("weights do not fit the model:\n  " + "\n  ".join(errors))
  for path, var in flat:
    var.set_value(np.asarray(values["/".join(map(str, path))], var.dtype))
  nnx.update(model, nnx.from_flat_state(flat))


def save_weights(path: str, model: nnx.Module) -> None:
  """Writes the model's weights (``WEIGHTS``) to a new orbax checkpoint folder at ``path``."""
  nested: dict = {}
  for key, value in flat_weights(model).items():
    *parents, leaf = key.split("/")
    node = nested
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(path), nested)
  checkpointer.wait_until_finished()


def read_weights(path: str) -> dict[str, np.ndarray]:
  """The flat {"a/b/kernel": array} weights of a folder written by ``save_weights``."""
  def flatten(node: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for name, value in node.items():
      key = f"{prefix}{name}"
      flat.update(flatten(value, key + "/") if isinstance(value, Mapping)
                  else {key: np.asarray(value)})
    return flat
  return flatten(ocp.StandardCheckpointer().restore(os.path.abspath(path)))


def load_weights(path: str, model: nnx.Module) -> None:
  """Restores weights written by ``save_weights`` into ``model`` (same architecture and shapes)."""
  set_weights(model, read_weights(path))
