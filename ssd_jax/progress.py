"""Progress lines, TensorBoard scalars, and the summaries that open and close each mode.

Scalars are written with the ``tensorboard`` package alone (its event-file writer and scalar
protos, the format ``tf.summary.scalar`` writes), so that training runs where TensorFlow is not
installed (an accelerator image): TF is for the input pipeline only.
"""

import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.scalar import summary_v2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

SCALARS = ("loss", "loc_loss", "conf_loss", "learning_rate", "grad_norm", "param_norm", "num_pos")


def parameter_summary(params: nnx.State) -> str:
  """Parameter counts: the total, then per top-level module."""
  counts: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    module = str(getattr(path[0], "key", path[0]))
    counts[module] = counts.get(module, 0) + int(np.prod(leaf.shape))
  parts = ", ".join(f"{name} {count:,d}" for name, count in counts.items())
  return f"{sum(counts.values()):,d} parameters ({parts})"


def log_startup(params: nnx.State, mesh: Mesh, global_batch: int) -> None:
  """Model size, mesh and per-device batch, once at the start of a run."""
  logging.info("model: %s; mesh %s, batch %d = %d per device", parameter_summary(params),
               dict(mesh.shape), global_batch, global_batch // mesh.devices.size)


def startup_summary(config: ml_collections.ConfigDict, mode: str, config_name: str,
                    workdir: str) -> str:
  """A few lines saying what runs: model, data, sizes, devices, where it writes."""
  model, data = config.model, config.data
  names = data.class_names
  classes = (f"{model.num_classes} classes ({len(names)} + background)" if names
             else f"{model.num_classes} classes (the dataset's names + background)")
  splits = lambda entries: ", ".join(e if isinstance(e, str) else ":".join(e) for e in entries)
  lines = [f"ssd_jax {mode}: {config_name} -> {workdir} (full config: config.json, log: log.txt)",
           f"  model   {model.name}, {model.image_size} px input, {classes}, {model.dtype}",
           f"  data    {data.source} in {data.data_dir or '(default)'}: train "
           f"{splits(data.train_splits)}, eval {splits(data.eval_splits)}"]
  if mode == "train":
    lines.append(f"  sizes   batch {data.batch_size}, {config.train.num_steps:,d} steps, "
                 f"checkpoint every {config.train.checkpoint_every:,d}, "
                 f"eval every {config.train.eval_every:,d}")
  lines.append(f"  devices {jax.device_count()} x {jax.devices()[0].device_kind} "
               f"({jax.process_count()} process{'es' if jax.process_count() > 1 else ''})")
  return "\n".join(lines)


def train_summary(workdir: str) -> str:
  """Closing lines of a training run: last evaluation, checkpoints, best, pictures."""
  lines = [f"training done in {workdir}"]
  steps = _steps(os.path.join(workdir, "checkpoints"))
  if steps:
    lines.append(f"  checkpoints {os.path.join(workdir, 'checkpoints')} (steps "
                 f"{', '.join(map(str, steps))})")
  best = _steps(os.path.join(workdir, "best"))
  if best:
    lines.append(f"  best        {os.path.join(workdir, 'best')} (step {best[-1]})")
  evals = _steps(os.path.join(workdir, "eval"), prefix="step_")
  if evals:
    lines.append(eval_summary(os.path.join(workdir, "eval", f"step_{evals[-1]}")))
  lines.append(f"  TensorBoard tensorboard --logdir {workdir}")
  return "\n".join(lines)


def eval_summary(folder: str) -> str:
  """One line: the headline metrics in ``folder/metrics.json`` and the files beside it."""
  with open(os.path.join(folder, "metrics.json")) as f:
    metrics = json.load(f)
  headline = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                       if isinstance(v, float) and "/" not in k)
  files = ", ".join(sorted(n for n in os.listdir(folder)))
  return (f"  eval        step {metrics.get('step')} on {metrics.get('images')} images: {headline}"
          f"; {folder} ({files})")


def _steps(folder: str, prefix: str = "") -> list[int]:
  """Sorted numbers N of the ``<prefix>N`` entries of ``folder`` (none if it is missing)."""
  if not os.path.isdir(folder):
    return []
  names = (name[len(prefix):] for name in os.listdir(folder) if name.startswith(prefix))
  return sorted(int(name) for name in names if name.isdigit())


class Progress:
  """Prints a progress line every ``every_seconds`` and writes TensorBoard scalars.

  The first step includes compilation, so images/s and the ETA are measured from the end of the
  first step on, and the ETA is shown only once ``eta_after_steps`` steps have been timed.
  """

  def __init__(self, workdir: str, total_steps: int, global_batch: int, every_seconds: float,
               start_step: int, eta_after_steps: int = 3):
    self.total_steps, self.global_batch, self.every = total_steps, global_batch, every_seconds
    self.writer = EventFileWriter(workdir) if jax.process_index() == 0 else None
    self.start_time, self.start_step = time.monotonic(), start_step
    self.last_time, self.last_step = self.start_time, start_step
    self.timed_from: tuple[float, int] | None = None  # (time, step) at the end of the first step
    self.eta_after_steps = eta_after_steps
    logging.info("compiling the train step; the first step (step %d) includes compilation",
                 start_step + 1)

  def due(self) -> bool:
    return self.timed_from is None or time.monotonic() - self.last_time >= self.every

  def report(self, step: int, metrics: dict[str, float]) -> None:
    """Logs ``metrics`` (host floats) at ``step`` with images/s and, once measured, the ETA."""
    now = time.monotonic()
    losses = (f"step {step}/{self.total_steps}  loss {metrics['loss']:.4f} (loc "
              f"{metrics['loc_loss']:.4f} conf {metrics['conf_loss']:.4f})  "
              f"lr {metrics['learning_rate']:.3g}")
    scalars = {k: metrics[k] for k in SCALARS if k in metrics}
    if self.timed_from is None:  # the compiling step: no speed to speak of yet
      logging.info("%s  (compiled and ran the first step in %.1f s)", losses,
                   now - self.start_time)
      self.timed_from = (now, step)
    else:
      images_per_s = (step - self.last_step) * self.global_batch / max(now - self.last_time, 1e-9)
      since, timed_steps = now - self.timed_from[0], step - self.timed_from[1]
      eta = ("" if timed_steps < self.eta_after_steps else
             f"  ETA {_duration((self.total_steps - step) * since / timed_steps)}")
      logging.info("%s  %.1f img/s%s", losses, images_per_s, eta)
      scalars["images_per_second"] = images_per_s
    self.write(step, scalars)
    self.last_time, self.last_step = now, step

  def write(self, step: int, scalars: dict[str, float], prefix: str = "train") -> None:
    if self.writer is None:
      return
    now = time.time()
    for name, value in scalars.items():
      summary = summary_v2.scalar_pb(f"{prefix}/{name}", float(value))
      self.writer.add_event(event_pb2.Event(wall_time=now, step=step, summary=summary))
    self.writer.flush()


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}"
