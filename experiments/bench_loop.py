"""Benchmark: the training loop's images/s over the bare jitted step's, and checkpoint blocking.

For the quickstart model (``configs/quickstart.py``, batch 32, 128 px), in one process:
- **bare**: the jitted train step alone, on batches of the same input pipeline placed on the
  device beforehand, dispatched back to back and waited for once at the end;
- **loop**: ``train.train_and_evaluate`` itself, with the real tf.data pipeline, its progress
  lines and TensorBoard scalars (every ``log_every_seconds``) and a checkpoint every
  ``--checkpoint_every`` steps, no evaluation. It is timed between the moments the loop takes
  batch ``--warmup`` and batch ``--warmup + --steps`` from the pipeline, so compilation, restore
  and the final save are outside the window and the window holds ``steps / checkpoint_every``
  checkpoints;
- **loop, cached input** (``--cached``): the same loop fed from batches already in memory, which
  separates the loop's own overhead from the input pipeline's use of the same CPU cores;
- **save blocking**: the wall seconds each checkpoint save holds the loop (the call to
  ``checkpoint.save``, including any wait for the previous save).

- **preemption poll** (``--processes 2``): what the loop's per-step ``reached(step)`` costs
  (``train._Preemption``: a flag on one process, orbax's ``reached_preemption``, i.e. JAX's
  preemption sync point, on several), in microseconds per call; a host round-trip to the
  coordinator would cost tens of microseconds or more.

Each repeat runs bare, then the loop variants, then bare again; ratios use the mean of the two bare
figures. The bare step includes the augmentation's pixel work, as in training: the pipeline's
batches are decoded images with drawn parameters, turned into model input inside the step. The CPU of the development VM is shared, so run at least twice and read the medians.
``--processes N`` runs the whole benchmark as N ``jax.distributed`` processes on this machine
(localhost, gloo collectives), each feeding its share of the batch; process 0 prints.

Run: python experiments/bench_loop.py [--steps 400] [--checkpoint_every 200] [--repeats 2]
     [--processes 2]
"""

import argparse
import contextlib
import itertools
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np

from ssd_jax import checkpoint, config_utils, parallel, train, train_step, xla_flags


CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def quickstart_config(variant: str, data_dir: str, num_steps: int,
                      checkpoint_every: int) -> ml_collections.ConfigDict:
  config = config_utils.load_config(os.path.join(CONFIGS, "quickstart.py"), variant)
  config.data.data_dir = os.path.abspath(data_dir)
  config.train.num_steps = num_steps
  config.train.checkpoint_every = checkpoint_every
  return config


def pipeline_batches(config, count: int = 8) -> list[dict]:
  """The first ``count`` host batches of the tf.data pipeline (TF is imported here only: the
  accelerator benchmark runs this module's loop without it, on batches from memory)."""
  from ssd_jax import data  # pylint: disable=g-import-not-at-top
  return list(itertools.islice(data.train_iterator(config), count))


def bare_step(config, batches: list, steps: int) -> tuple[float, dict[str, float]]:
  """(images/s of the jitted step on host ``batches`` (cycled) already on the device, the metrics
  of its first step). Two steps compile and warm up before the timed ``steps``."""
  mesh = parallel.create_mesh(config)
  _, state, step = train_step.make_step(config, mesh)
  batches = [parallel.global_batch(batch, mesh) for batch in batches]
  first = None
  for i in range(2):  # compilation
    state, metrics = step(state, batches[i % len(batches)])
    first = first or {k: float(v) for k, v in jax.device_get(metrics).items()}
  jax.block_until_ready(state)
  start = time.perf_counter()
  for i in range(steps):
    state, _ = step(state, batches[i % len(batches)])
  jax.block_until_ready(state)
  return steps * config.data.batch_size / (time.perf_counter() - start), first


@contextlib.contextmanager
def _timed_saves():
  """Records how long each checkpoint save blocks the loop."""
  saves, real_save = [], checkpoint.save

  def save(*args, **kwargs):
    start = time.perf_counter()
    result = real_save(*args, **kwargs)
    saves.append(time.perf_counter() - start)
    return result

  checkpoint.save = save
  try:
    yield saves
  finally:
    checkpoint.save = real_save


def loop_figures(config, warmup: int, steps: int, cached: list | None = None,
                 workdir: str | None = None) -> tuple[float, list[float]]:
  """(images/s of the loop between batches ``warmup`` and ``warmup + steps``, seconds each save
  blocked the loop). The loop is fed from host batches ``cached`` (cycled), else from the tf.data
  pipeline; ``workdir`` (default: a temporary one) keeps the run's checkpoints."""
  taken = []

  def input_fn(start_step: int):
    source = itertools.cycle(cached) if cached else train.pipeline_input(config)(start_step)
    for batch in source:
      taken.append(time.perf_counter())  # when the loop takes each batch
      yield batch

  with contextlib.ExitStack() as stack:
    if workdir is None:
      workdir = stack.enter_context(tempfile.TemporaryDirectory())
    os.makedirs(workdir, exist_ok=True)
    saves = stack.enter_context(_timed_saves())
    handler = logging.FileHandler(os.path.join(workdir, "log.txt"))
    logging.getLogger().addHandler(handler)
    try:
      train.train_and_evaluate(config, workdir, input_fn=input_fn)
    finally:
      logging.getLogger().removeHandler(handler)
  seconds = taken[warmup + steps] - taken[warmup]
  return steps * config.data.batch_size / seconds, saves


def preemption_poll_microseconds(workdir: str, calls: int = 2000) -> float:
  """Median microseconds of the training loop's per-step preemption check over ``calls`` steps
  (blocks of 100), with the checkpoint manager of ``workdir`` (shared by every process)."""
  os.makedirs(workdir, exist_ok=True)
  manager = checkpoint.create_manager(workdir, 1)
  preemption = train._Preemption(manager)  # pylint: disable=protected-access  (what the loop polls)
  blocks = []
  try:
    for first in range(1, calls + 1, 100):
      start = time.perf_counter()
      for step in range(first, first + 100):
        preemption.reached(step)
      blocks.append((time.perf_counter() - start) / 100)
  finally:
    preemption.close()
    manager.close()
  return float(np.median(blocks)) * 1e6


def launch_processes(count: int) -> int:
  """Runs this script (same arguments) as ``count`` jax.distributed processes on this machine;
  process 0's output is this one's. Returns the exit status (the first non-zero one)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  with tempfile.TemporaryDirectory(prefix="bench_loop_") as shared:
    processes = [subprocess.Popen(
        [sys.executable, *sys.argv, f"--process_id={index}", f"--shared_dir={shared}",
         f"--coordinator_address=127.0.0.1:{port}"],
        stdout=None if index == 0 else subprocess.DEVNULL) for index in range(count)]
    return next((code for code in [p.wait() for p in processes] if code), 0)


def quiet_logging() -> None:
  """Progress lines go to the workdir's log.txt only, not to the benchmark's output."""
  root = logging.getLogger()
  for handler in root.handlers:
    handler.setLevel(logging.WARNING)
  root.setLevel(logging.INFO)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400, help="steps in the timed window")
  parser.add_argument("--checkpoint_every", type=int, default=200)
  parser.add_argument("--warmup", type=int, default=10, help="loop steps before the window")
  parser.add_argument("--tail", type=int, default=10, help="loop steps after the window")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--cached", action="store_true",
                      help="also time the loop fed from batches in memory")
  parser.add_argument("--dispatch_ahead", type=int, default=None,
                      help="config.train.dispatch_ahead (default: the config's)")
  parser.add_argument("--variant", default="", help="quickstart variant ('tiny' for smoke runs)")
  parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(__file__), "..", "data"))
  parser.add_argument("--processes", type=int, default=1,
                      help="run as this many jax.distributed processes on this machine")
  parser.add_argument("--process_id", type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--coordinator_address", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--shared_dir", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.processes > 1 and args.process_id is None:
    sys.exit(launch_processes(args.processes))
  xla_flags.apply("train")  # before JAX starts (XLA reads XLA_FLAGS once)
  if args.processes > 1:
    parallel.maybe_initialize_distributed(coordinator_address=args.coordinator_address,
                                          num_processes=args.processes,
                                          process_id=args.process_id)
  with contextlib.ExitStack() as stack:  # the workdirs, in a folder every process sees
    shared = args.shared_dir or stack.enter_context(tempfile.TemporaryDirectory())
    measure(args, shared)


def measure(args: argparse.Namespace, shared: str) -> None:
  """Prints the figures of the module docstring; workdirs go under ``shared``."""
  quiet_logging()
  config = quickstart_config(args.variant, args.data_dir, args.warmup + args.steps + args.tail,
                             args.checkpoint_every)
  if args.dispatch_ahead is not None:
    config.train.dispatch_ahead = args.dispatch_ahead
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on "
        f"{jax.devices()[0].device_kind}, {jax.process_count()} process(es), "
        f"{jax.device_count()} device(s); load average {os.getloadavg()}")
  print(f"quickstart{':' + args.variant if args.variant else ''}, batch {config.data.batch_size}, "
        f"window {args.steps} steps, checkpoint every {args.checkpoint_every}, dispatch ahead "
        f"{config.train.get('dispatch_ahead', 'none (the loop syncs every step)')}")
  batches = pipeline_batches(config)  # the bare step's, and the cached loop's with --cached
  cached = batches if args.cached else None
  poll = preemption_poll_microseconds(os.path.join(shared, "poll"))
  print(f"preemption poll: {poll:.2f} us per step ({jax.process_count()} process(es))")
  rows = []
  for repeat in range(args.repeats):
    bare_before = bare_step(config, batches, args.steps)[0]
    loop, saves = loop_figures(config, args.warmup, args.steps,
                               workdir=os.path.join(shared, f"loop_{repeat}"))
    cached_loop = (loop_figures(config, args.warmup, args.steps, cached,
                                os.path.join(shared, f"cached_{repeat}"))[0] if cached
                   else float("nan"))
    bare = (bare_before + bare_step(config, batches, args.steps)[0]) / 2
    rows.append((bare, loop, loop / bare, cached_loop / bare, float(np.median(saves[:-1] or saves)),
                 saves[-1]))
    print(f"repeat {repeat}: bare {bare:.1f} img/s, loop {loop:.1f} img/s, loop/bare "
          f"{loop / bare:.3f}, cached-input loop/bare {cached_loop / bare:.3f}; save blocks "
          f"{', '.join(f'{s * 1e3:.0f}' for s in saves)} ms (last: the final save); "
          f"load {os.getloadavg()[0]:.2f}")
  median = np.median(np.array(rows), axis=0)
  print(f"median of {args.repeats}: bare {median[0]:.1f} img/s, loop {median[1]:.1f} img/s, "
        f"loop/bare {median[2]:.3f}, cached-input loop/bare {median[3]:.3f}, a periodic save "
        f"blocks {median[4] * 1e3:.0f} ms, the final save {median[5] * 1e3:.0f} ms")


if __name__ == "__main__":
  main()
