"""Orbax checkpoints of the train state in ``<workdir>/checkpoints``.

Each checkpoint holds the train state (parameters, model state, optimiser state, step) and a
small JSON record of where the run stands (step, examples seen). The input pipeline is a pure
function of (seed, step), so the step is the data position. Orbax writes each checkpoint to a
temporary folder and renames it when complete, so a process killed at any moment leaves only
complete checkpoints behind (and a temporary folder that the next manager cleans up).
"""

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

STATE, META = "state", "meta"


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
                                         read_only=read_only)
  return ocp.CheckpointManager(directory, options=options, item_names=(STATE, META))


class BestKeeper:
  """Keeps the checkpoint with the best evaluation metric in ``<workdir>/best``.

  The metric is "mAP" (VOC) or "AP" (COCO); the best value so far is read back from the saved
  meta, so a resumed run does not replace a better checkpoint of its earlier life.
  """

  def __init__(self, workdir: str):
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "best"),
                                         options=options, item_names=(STATE, META))
    step = self.manager.latest_step()
    self.best = (-float("inf") if step is None else
                 self.manager.restore(step, args=ocp.args.Composite(
                     **{META: ocp.args.JsonRestore()}))[META]["metric"])

  def consider(self, state: Any, summary: dict[str, float], meta: dict[str, Any]) -> None:
    """Saves ``state`` when its metric beats the best so far."""
    value = summary.get("mAP", summary.get("AP"))
    if value is None or value <= self.best:
      return
    self.best = value
    save(self.manager, state, {**meta, "metric": value})


def save(manager: ocp.CheckpointManager, state: Any, meta: dict[str, Any]) -> None:
  """Saves ``state`` at its step and waits until it is on disk."""
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                                META: ocp.args.JsonSave(meta)}), force=True)
  manager.wait_until_finished()
  logging.info("saved checkpoint at step %d in %s", step, manager.directory)


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
  """(state, meta) of checkpoint ``step`` (default: the latest), shaped and sharded like
  ``abstract_state``; None when there is no checkpoint at all.

  Raises FileNotFoundError naming the available steps when ``step`` is not among them.
  """
  if step is None:
    step = manager.latest_step()
    if step is None:
      return None
  elif step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint for step {step} in {manager.directory}; "
                            f"available steps: {sorted(manager.all_steps())}")
  restored = manager.restore(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}))
  logging.info("restored checkpoint at step %d from %s", step, manager.directory)
  return restored[STATE], restored[META]
