"""One prepared accelerator benchmark: what a GPU (or TPU) gives, in under 8 minutes in all.

Records, in ``--output``/results.json and as lines on stdout:
- SSD300-VGG16 and SSD300-ResNet34, bfloat16 compute: train images/s at the largest batch that
  fits (estimated from the compiled step's memory at a first batch, then tried, shrinking on
  out-of-memory), and forward images/s at batches 1 and 64;
- the training loop's images/s over the bare jitted step's on the quickstart model, with a
  checkpoint every 100 steps (``bench_loop``), and how long each save blocks the loop;
- the export: the quickstart checkpoint that run leaves is exported (``export.export_detector``)
  and the exported file is run on this machine's default device (cuda on a GPU machine).

Each section is timed against ``--budget_s``; a section that would start past it is recorded as
skipped, so the script always ends in time with what it measured. ``--small`` shrinks everything
(width 1/8 models, batches 1-2, a few steps, the tiny quickstart) so that the whole script runs on
a CPU in CI.

Run on a GPU machine: ``experiments/bench_accelerator.sh`` (installs ``.[gpu]`` first), or
``python experiments/bench_accelerator.py --output runs/bench_accelerator`` where JAX sees the GPU.
"""

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import config_utils, export, parallel, train_step, xla_flags

import bench_loop  # experiments/, beside this script
import bench_model


CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
MODELS = (("SSD300-VGG16", "ssd300.py"), ("SSD300-ResNet34", "ssd300_resnet34.py"))


def model_config(file: str, batch: int, width: float):
  config = config_utils.load_config(os.path.join(CONFIGS, file))
  config.model.dtype = "bfloat16"
  config.model.width = width
  config.data.batch_size = batch
  return config


def _out_of_memory(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def step_memory(config) -> tuple[float, float]:
  """(bytes that grow with the batch, bytes that do not) of the compiled train step, from XLA's
  memory analysis: temporaries scale with the batch, the state (arguments, outputs) does not."""
  mesh = parallel.create_mesh(config)
  _, state, step = train_step.make_step(config, mesh)
  batch = parallel.global_batch(train_step.synthetic_batch(config), mesh)
  analysis = step.lower(state, batch).compile().memory_analysis()
  fixed = analysis.argument_size_in_bytes + analysis.output_size_in_bytes
  return float(analysis.temp_size_in_bytes), float(fixed)


def largest_batch(file: str, width: float, first: int, limit: int) -> int:
  """The batch (a multiple of 8, at most ``limit``) whose step is estimated to fill 85% of the
  device memory, from the compiled step at batch ``first``; ``first`` when memory is unknown."""
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" not in stats:
    return first
  per_batch, fixed = step_memory(model_config(file, first, width))
  fit = first * (0.85 * stats["bytes_limit"] - fixed) / per_batch
  return int(max(8, min(limit, fit // 8 * 8)))


def train_images_per_second(file: str, width: float, batch: int, steps: int) -> tuple[int, float]:
  """(batch used, images/s) of the bare jitted step; a batch that does not fit is cut by 1/4."""
  while True:
    config = model_config(file, batch, width)
    try:
      mesh = parallel.create_mesh(config)
      _, state, step = train_step.make_step(config, mesh)
      data = parallel.global_batch(train_step.synthetic_batch(config), mesh)
      for _ in range(2):  # compilation, then one step with every buffer allocated
        state, _ = step(state, data)
      jax.block_until_ready(state)
      start = time.perf_counter()
      for _ in range(steps):
        state, _ = step(state, data)
      jax.block_until_ready(state)
      return batch, steps * batch / (time.perf_counter() - start)
    except Exception as error:  # pylint: disable=broad-except
      if not _out_of_memory(error) or batch <= 1:
        raise
      batch = max(1, batch * 3 // 4 // 8 * 8 or batch // 2)
      print(f"  out of memory; trying batch {batch}", flush=True)


def forward_images_per_second(file: str, width: float, batch: int, min_time: float) -> float:
  config = model_config(file, batch, width)
  params, forward, _ = bench_model.jax_programs(bench_model.random_model(config))
  size = config.model.image_size
  images = jax.random.normal(jax.random.key(1), (batch, size, size, 3), jnp.bfloat16)
  seconds = bench_model.timed(lambda: jax.block_until_ready(forward(params, images)), min_time)
  return batch / seconds


def run_export(config, workdir: str, output: str, batch: int) -> dict:
  """Exports the latest checkpoint of ``workdir`` and runs the exported file on the default device."""
  export.export_detector(config, workdir, output, formats=("jax",))
  with open(os.path.join(output, export.FILES["jax"]), "rb") as f:
    exported = jax.export.deserialize(f.read())
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, 480, 640, 3), np.uint8))
  outputs = exported.call(images)
  jax.block_until_ready(outputs)
  seconds = bench_model.timed(lambda: jax.block_until_ready(exported.call(images)), 2.0)
  platforms = sorted({device.platform for device in outputs["boxes"].devices()})
  return {"ran_on": platforms, "exported_for": list(exported.platforms),
          "images_per_second": batch / seconds, "batch": batch,
          "boxes_shape": list(outputs["boxes"].shape)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default="runs/bench_accelerator")
  parser.add_argument("--small", action="store_true", help="shrunk, for a CPU (CI)")
  parser.add_argument("--budget_s", type=float, default=None,
                      help="no section starts after this many seconds (default 330; none with "
                           "--small, whose CI run must cover every section)")
  parser.add_argument("--data_dir", default=None, help="quickstart data (default: OUTPUT/data)")
  args = parser.parse_args()
  xla_flags.apply("train")  # before JAX starts (XLA reads XLA_FLAGS once)
  started = time.monotonic()
  small = args.small
  budget = args.budget_s if args.budget_s is not None else (float("inf") if small else 330.0)
  width, first_batch, max_batch = (0.125, 2, 2) if small else (1.0, 32, 1024)
  train_steps, forward_batches = (2, (1, 2)) if small else (20, (1, 64))
  os.makedirs(args.output, exist_ok=True)
  bench_loop.quiet_logging()
  results = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
             "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
             "backend": jax.default_backend(), "jax": jax.__version__,
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "small": small,
             "skipped": []}

  def section(name, fn):
    if time.monotonic() - started > budget:
      results["skipped"].append(name)
      print(f"{name}: skipped, past the {budget:.0f} s budget", flush=True)
      return
    begin = time.monotonic()
    results[name] = fn()
    print(f"{name}: {json.dumps(results[name])} ({time.monotonic() - begin:.0f} s)", flush=True)
    with open(os.path.join(args.output, "results.json"), "w") as f:
      json.dump(results, f, indent=2)

  for label, file in MODELS:
    def train(file=file):
      batch = largest_batch(file, width, first_batch, max_batch)
      batch, images_per_s = train_images_per_second(file, width, batch, train_steps)
      return {"batch": batch, "images_per_second": images_per_s}
    section(f"{label} train bfloat16", train)
    for batch in forward_batches:
      section(f"{label} forward bfloat16 batch {batch}",
              lambda file=file, batch=batch: {"images_per_second": forward_images_per_second(
                  file, width, batch, 0.5 if small else 3.0)})

  loop_steps, every = (4, 2) if small else (300, 100)
  config = bench_loop.quickstart_config("tiny" if small else "",
                                        args.data_dir or os.path.join(args.output, "data"),
                                        2 + loop_steps + 2, every)
  workdir = tempfile.mkdtemp(prefix="loop_", dir=os.path.abspath(args.output))

  def loop():
    bare = bench_loop.bare_images_per_second(config, loop_steps)
    images_per_s, saves = bench_loop.loop_figures(config, 2, loop_steps, workdir=workdir)
    return {"batch": config.data.batch_size, "checkpoint_every": every,
            "bare_images_per_second": bare, "loop_images_per_second": images_per_s,
            "loop_over_bare": images_per_s / bare, "save_block_seconds": saves}
  section("quickstart loop vs bare step", loop)
  if "quickstart loop vs bare step" in results:
    section("export", lambda: run_export(config, workdir, os.path.join(args.output, "export"),
                                         2 if small else 8))
  results["seconds"] = time.monotonic() - started
  with open(os.path.join(args.output, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  print(f"done in {results['seconds']:.0f} s; {os.path.join(args.output, 'results.json')}")


if __name__ == "__main__":
  main()
