"""Progress lines, TensorBoard scalars and the start-up summary of a training run."""

import logging
import time

import jax
import numpy as np
import tensorflow as tf
from flax import nnx
from jax.sharding import Mesh

SCALARS = ("loss", "loc_loss", "conf_loss", "learning_rate", "grad_norm", "param_norm", "num_pos")


def parameter_summary(params: nnx.State) -> str:
  """Parameter counts per top-level module, then the total."""
  counts: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    module = str(getattr(path[0], "key", path[0]))
    counts[module] = counts.get(module, 0) + int(np.prod(leaf.shape))
  lines = [f"  {name:20s} {count:>14,d}" for name, count in counts.items()]
  return "\n".join(lines + [f"  {'total':20s} {sum(counts.values()):>14,d}"])


def log_startup(params: nnx.State, mesh: Mesh, global_batch: int) -> None:
  """Model size, devices, mesh and per-device batch, once at the start of a run."""
  devices = mesh.devices.size
  logging.info("parameters per module:\n%s", parameter_summary(params))
  logging.info("devices: %d x %s (%d processes); mesh %s; batch %d = %d per device",
               jax.device_count(), jax.devices()[0].device_kind, jax.process_count(),
               dict(mesh.shape), global_batch, global_batch // devices)


class Progress:
  """Prints a progress line every ``every_seconds`` and writes TensorBoard scalars."""

  def __init__(self, workdir: str, total_steps: int, global_batch: int, every_seconds: float,
               start_step: int):
    self.total_steps, self.global_batch, self.every = total_steps, global_batch, every_seconds
    self.writer = tf.summary.create_file_writer(workdir) if jax.process_index() == 0 else None
    self.last_time, self.last_step = time.monotonic(), start_step

  def due(self) -> bool:
    return time.monotonic() - self.last_time >= self.every

  def report(self, step: int, metrics: dict[str, float]) -> None:
    """Logs ``metrics`` (host floats) at ``step`` with images/s and the ETA."""
    now = time.monotonic()
    steps_per_s = (step - self.last_step) / max(now - self.last_time, 1e-9)
    images_per_s = steps_per_s * self.global_batch
    eta = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
    logging.info("step %d/%d  loss %.4f (loc %.4f conf %.4f)  lr %.3g  %.1f img/s  ETA %s",
                 step, self.total_steps, metrics["loss"], metrics["loc_loss"],
                 metrics["conf_loss"], metrics["learning_rate"], images_per_s, _duration(eta))
    self.write(step, {**{k: metrics[k] for k in SCALARS if k in metrics},
                      "images_per_second": images_per_s})
    self.last_time, self.last_step = now, step

  def write(self, step: int, scalars: dict[str, float], prefix: str = "train") -> None:
    if self.writer is None:
      return
    with self.writer.as_default():
      for name, value in scalars.items():
        tf.summary.scalar(f"{prefix}/{name}", value, step=step)
    self.writer.flush()


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}"
