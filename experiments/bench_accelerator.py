"""The prepared accelerator benchmark: what a GPU gives, each section checked against a float32
CPU reference made beforehand, in under 8 minutes in all.

Two steps (experiments/README.md, "A lent GPU"):
1. here, on a CPU: ``python experiments/bench_accelerator.py --make_reference
   runs/accelerator_reference`` computes in float32 what every section is checked against
   (``reference.json``, ``reference.npz``) and trains the quickstart checkpoint that the export
   section exports (``quickstart/``);
2. on the accelerator, with that folder and the wheels of ``.whl/`` carried:
   ``bash experiments/bench_accelerator.sh`` runs this script with ``--reference
   runs/accelerator_reference --output $OUT`` on the image's own jax, without TensorFlow.

Sections, in this order; one that would start after ``--budget_s`` is recorded as skipped, a
failing one as an error, and the next one runs:
- ``environment``: package versions, devices and their memory;
- ``<model> train bfloat16`` (SSD300-ResNet34, SSD300-VGG16, COCO configs): the jitted train
  step on the reference batch (R images of ``train_step.synthetic_batch`` in the input pipeline's
  training format, so the step does the augmentation's pixel work on the device as in training)
  repeated to the batch size, which changes neither the loss nor a BatchNorm statistic. Compiled at 4R: the first step's loss and
  gradient norm are checked against the reference's; then at the batch that XLA's memory
  analysis of that compilation says fills 85% of the device memory (a multiple of R, at most
  1024, cut by a quarter on out-of-memory): images/s, and XLA's FLOPs per image for the MFU
  (SCALING.md). Compile seconds of both;
- ``export``: the reference's quickstart checkpoint exported ``--format=jax`` here and the
  exported file run on this machine's default device (cuda on a GPU) on the reference's images:
  the detection counts and classes (score above 0.3) must equal the reference's; images/s at
  batch 8;
- ``quickstart loop vs bare step``: the training loop (``train.train_and_evaluate``, a
  checkpoint every ``checkpoint_every`` steps) fed from batches in memory against the bare jitted
  step on the same batches (``bench_loop``): images/s of each, their ratio, the seconds each save
  blocks; the first step's loss checked;
- ``quickstart loop vs bare step, tf.data input``: the same with the real input pipeline (the
  host decodes and draws on its own cores while the device steps): whether the host keeps up,
  with the host's core count. It needs TensorFlow, which the lent GPU image lacks: there it is
  listed under ``not_run`` with that reason;
- ``<model> forward bfloat16 batch N`` (N = 1 and 64): the network alone, random weights, on the
  reference images repeated: images/s, compile seconds, and the outputs for the reference images
  within a relative L2 error of the reference's.

``--small`` (CI, a CPU) runs every section on ``configs/quickstart.py:tiny`` in place of the
SSD300s (each SSD300 program takes 10-20 s to compile on a CPU), forward batches 1 and 2, a few
steps, and no budget. results.json says which checks failed; the exit status is 1 when one did
or a section failed.
"""

import argparse
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable

from ssd_jax import xla_flags

xla_flags.apply("train")  # before JAX starts (XLA reads XLA_FLAGS once); only on a CPU backend

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import config_utils, export, parallel, train, train_step

import bench_loop  # experiments/, beside this script
import bench_model

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
# COCO's 81 classes, as the anchors in SCALING.md (MLPerf's and NVIDIA's SSD300s) train.
MODELS = (("SSD300-ResNet34", "ssd300_resnet34.py:coco"), ("SSD300-VGG16", "ssd300.py:coco"))
SMALL_MODELS = (("quickstart-tiny", "quickstart.py:tiny"),)
LOSS_TOLERANCE = 2e-2  # relative, bfloat16 (or TF32) against float32
# bfloat16 against float32 on a CPU (experiments/check_bf16_cpu.py; RESULTS.md, issue 24):
# SSD300-ResNet34's first loss 3.4e-4 apart, its gradient norm 6.2e-3, its forward outputs 5.8e-2
# (relative L2; random weights through 34 layers), SSD300-VGG16's 8.4e-5, 3.6e-3 and 7.4e-3. The
# tolerances leave room for another device's kernels and still fail a wrong layer (errors ~1).
GRAD_NORM_TOLERANCE = 0.1
FORWARD_TOLERANCE = 0.15
PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "chex",
            "numpy", "ml-collections", "tensorboard", "pycocotools", "defusedxml")
CARRIED = ("ml_collections", "pycocotools", "defusedxml")  # wheels on the device (README.md)


class Sizes:
  """What ``--small`` shrinks: models, batches, steps."""

  def __init__(self, small: bool):
    self.models = SMALL_MODELS if small else MODELS
    self.quickstart = "tiny" if small else ""
    self.reference_batch = 2 if small else 8  # R
    self.first_batch = 4 * self.reference_batch
    self.max_batch = 1024
    self.train_steps = 2 if small else 20
    self.forward_batches = (1, 2) if small else (1, 64)
    self.forward_seconds = 0.2 if small else 3.0
    self.loop_steps, self.checkpoint_every = (4, 2) if small else (300, 100)
    # The quickstart's batch (None: the config's, 32). The CI run's is the reference batch: its
    # float32 step is then the same program as the train section's reference step.
    self.quickstart_batch = self.reference_batch if small else None
    self.reference_train_steps = 8 if small else 300  # the exported quickstart checkpoint
    self.export_batch = 2 if small else 8
    # The export compares confident detections: the score threshold of the config's (0.01) lets
    # candidates near it in, whose count another device's rounding can change. The CI run
    # compares on one CPU and keeps the config's, which lets its barely trained model's in.
    self.export_score_threshold = None if small else 0.3


def model_config(spec: str, dtype: str, batch: int):
  """``configs/FILE[:VARIANT]`` with compute ``dtype`` and global batch ``batch``."""
  file, _, variant = spec.partition(":")
  config = config_utils.load_config(os.path.join(CONFIGS, file), variant or None)
  config.model.dtype = dtype
  config.data.batch_size = batch
  return config


def repeated(batch: dict, size: int) -> dict:
  """``batch`` (R examples) repeated to ``size`` examples (a multiple of R)."""
  count = len(next(iter(batch.values())))
  return {k: np.concatenate([np.asarray(v)] * (size // count)) for k, v in batch.items()}


def relative_check(value: float, reference: float, tolerance: float) -> dict:
  error = abs(value - reference) / abs(reference)
  return {"value": value, "reference": reference, "relative_error": error,
          "tolerance": tolerance, "ok": bool(error <= tolerance)}


def _first(analysis):
  """Cost analyses are a dict, or a list of one dict in older jaxlibs."""
  return analysis[0] if isinstance(analysis, (list, tuple)) else analysis


def flops_of(compiled) -> float | None:
  """XLA's FLOP count of a compiled program, None where the backend gives none."""
  try:
    return float(_first(compiled.cost_analysis())["flops"])
  except (NotImplementedError, KeyError, TypeError, IndexError):
    return None


def _out_of_memory(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


# ---- the train step ----

def compiled_step(config, reference_batch: dict) -> dict:
  """The fresh state, the reference batch repeated to ``config``'s batch on the device, the
  compiled train step and its compile seconds. The weights are ``bench_model.random_model``'s,
  drawn on the host: the same on every machine, and no initialiser compiles on the device."""
  mesh = parallel.create_mesh(config)
  _, state, step = train_step.make_step(config, mesh, bench_model.random_model(config))
  batch = parallel.global_batch(repeated(reference_batch, config.data.batch_size), mesh)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  return {"state": state, "batch": batch, "compiled": compiled,
          "compile_seconds": time.perf_counter() - start}


def first_step(step: dict) -> dict[str, float]:
  """Runs the first step of ``compiled_step``'s result (its state moves on); its metrics."""
  step["state"], metrics = step["compiled"](step["state"], step["batch"])
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def largest_batch(compiled, first: int, multiple: int, limit: int) -> int:
  """The batch whose step XLA's memory analysis of ``compiled`` (at batch ``first``) says fills
  85% of the device memory: temporaries grow with the batch, arguments and outputs (the state)
  do not. ``first`` where the device reports no memory limit (a CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  analysis = compiled.memory_analysis()
  if "bytes_limit" not in stats or analysis is None:
    return first
  fixed = analysis.argument_size_in_bytes + analysis.output_size_in_bytes
  fit = first * (0.85 * stats["bytes_limit"] - fixed) / max(analysis.temp_size_in_bytes, 1)
  return int(max(multiple, min(limit, fit // multiple * multiple)))


def timed_steps(step: dict, steps: int) -> dict:
  """Images/s of ``compiled_step``'s result over ``steps`` steps after one untimed step."""
  state, batch, compiled = step["state"], step["batch"], step["compiled"]
  state, _ = compiled(state, batch)  # every buffer allocated
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  size = len(batch["image"])
  flops = flops_of(compiled)
  return {"batch": size, "images_per_second": steps * size / (time.perf_counter() - start),
          "compile_seconds": step["compile_seconds"], "flops_per_image": flops and flops / size,
          "peak_bytes_in_use": (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")}


def train_section(spec: str, sizes: Sizes, reference: dict, reference_batch: dict) -> dict:
  first = compiled_step(model_config(spec, "bfloat16", sizes.first_batch), reference_batch)
  metrics = first_step(first)
  checks = {"first_loss": relative_check(metrics["loss"], reference["first_loss"],
                                         LOSS_TOLERANCE),
            "first_grad_norm": relative_check(metrics["grad_norm"], reference["first_grad_norm"],
                                              GRAD_NORM_TOLERANCE)}
  batch = largest_batch(first["compiled"], sizes.first_batch, sizes.reference_batch,
                        sizes.max_batch)
  timed = timed_steps(first, sizes.train_steps) if batch == sizes.first_batch else None
  del first  # its buffers, before the larger batch takes the memory
  while timed is None:
    try:
      timed = timed_steps(compiled_step(model_config(spec, "bfloat16", batch), reference_batch),
                          sizes.train_steps)
    except Exception as error:  # pylint: disable=broad-except
      if not _out_of_memory(error) or batch <= sizes.first_batch:
        raise
      batch = max(sizes.first_batch, batch * 3 // 4 // sizes.reference_batch
                  * sizes.reference_batch)
      print(f"  out of memory; trying batch {batch}", flush=True)
  return {**timed, "first_batch": sizes.first_batch, "first_loss": metrics["loss"],
          "checks": checks}


# ---- the forward pass ----

def forward_images(config, count: int = 2) -> np.ndarray:
  """``count`` normalised-looking random images [count, S, S, 3] float32, the same on every
  machine (seeded numpy)."""
  size = config.model.image_size
  return np.random.default_rng(1).normal(size=(count, size, size, 3)).astype(np.float32)


def forward_outputs(spec: str, dtype: str, batch: int) -> tuple[Callable, tuple, float]:
  """(compiled forward pass, its arguments, compile seconds) of ``spec``'s network with
  ``bench_model.random_model``'s weights on ``forward_images`` repeated to ``batch``."""
  config = model_config(spec, dtype, batch)
  params, forward, _ = bench_model.jax_programs(bench_model.random_model(config))
  images = forward_images(config)
  images = repeated({"x": images}, batch)["x"] if batch >= len(images) else images[:batch]
  args = (params, jnp.asarray(images, config.model.dtype))
  start = time.perf_counter()
  compiled = forward.lower(*args).compile()
  return compiled, args, time.perf_counter() - start


def flat_outputs(outputs) -> np.ndarray:
  """(loc [B, P, 4], logits [B, P, C]) -> [B, P * (4 + C)] float32."""
  loc, logits = (np.asarray(o, np.float32) for o in jax.device_get(outputs))
  return np.concatenate([loc.reshape(len(loc), -1), logits.reshape(len(logits), -1)], axis=1)


def forward_section(spec: str, batch: int, sizes: Sizes, reference: np.ndarray) -> dict:
  compiled, args, seconds = forward_outputs(spec, "bfloat16", batch)
  got = flat_outputs(compiled(*args))[:len(reference)]
  expected = reference[:len(got)]
  errors = np.linalg.norm(got - expected, axis=1) / np.linalg.norm(expected, axis=1)
  images_per_second = batch / bench_model.timed(
      lambda: jax.block_until_ready(compiled(*args)), sizes.forward_seconds)
  return {"images_per_second": images_per_second, "compile_seconds": seconds,
          "flops_per_image": (flops_of(compiled) or 0) / batch or None,
          "checks": {"outputs": {"relative_l2_error": float(errors.max()),
                                 "tolerance": FORWARD_TOLERANCE,
                                 "ok": bool(errors.max() <= FORWARD_TOLERANCE)}}}


# ---- the quickstart: loop, bare step, export ----

def quickstart_config(sizes: Sizes, num_steps: int, checkpoint_every: int):
  """The quickstart as the loop, the export and their reference use it (no data is read: the
  batches come from memory)."""
  config = bench_loop.quickstart_config(sizes.quickstart, tempfile.gettempdir(), num_steps,
                                        checkpoint_every)
  if sizes.export_score_threshold is not None:
    config.detection.score_threshold = sizes.export_score_threshold
  if sizes.quickstart_batch is not None:
    config.data.batch_size = sizes.quickstart_batch
  return config


def quickstart_batches(config, count: int = 8) -> list[dict]:
  """``count`` synthetic batches as the input pipeline gives them for training: decoded 8-bit
  pictures on the canvas with their drawn augmentation, which the step applies."""
  return [train_step.synthetic_batch(config, seed, drawn=True) for seed in range(count)]


def export_images(config, count: int) -> np.ndarray:
  """uint8 RGB [count, S, S, 3]: synthetic pictures of seeds the training never saw."""
  images = train_step.synthetic_batch(config, seed=1000)["image"]
  return np.round(np.concatenate([images] * (count // len(images) + 1))[:count] * 255
                  ).astype(np.uint8)


def run_exported(config, checkpoint_dir: str, folder: str, images: np.ndarray) -> dict:
  """Exports the latest checkpoint of ``checkpoint_dir`` (``--format=jax``) into ``folder`` and
  runs the file on the default device: (outputs as numpy, compile seconds, images/s, where)."""
  export.export_detector(config, checkpoint_dir, folder, formats=("jax",))
  with open(os.path.join(folder, export.FILES["jax"]), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  start = time.perf_counter()
  outputs = jax.block_until_ready(exported.call(images))
  seconds = time.perf_counter() - start
  per_call = bench_model.timed(lambda: jax.block_until_ready(exported.call(images)), 2.0)
  return {"outputs": {k: np.asarray(v) for k, v in outputs.items()}, "compile_seconds": seconds,
          "images_per_second": len(images) / per_call,
          "ran_on": sorted({d.platform for d in outputs["boxes"].devices()}),
          "exported_for": list(exported.platforms)}


def export_section(sizes: Sizes, reference_dir: str, expected: dict, scratch: str) -> dict:
  config = quickstart_config(sizes, 1, 1)
  got = run_exported(config, os.path.join(reference_dir, "quickstart"),
                     os.path.join(scratch, "export"), export_images(config, sizes.export_batch))
  outputs = got.pop("outputs")
  counts, reference_counts = outputs["num_detections"], expected["num_detections"]
  same = np.array_equal(counts, reference_counts)
  rows = np.arange(outputs["scores"].shape[1]) < np.minimum(counts, reference_counts)[:, None]
  differences = {
      "classes_equal": bool(np.array_equal(outputs["classes"][rows], expected["classes"][rows])),
      "max_score_difference": float(np.abs(outputs["scores"] - expected["scores"])[rows].max(
          initial=0.0)),
      "max_box_difference_px": float(np.abs(outputs["boxes"] - expected["boxes"])[rows].max(
          initial=0.0))}
  return {**got, "batch": sizes.export_batch, "num_detections": counts.tolist(), **differences,
          "checks": {"num_detections": {"value": counts.tolist(),
                                        "reference": reference_counts.tolist(),
                                        "ok": bool(same and differences["classes_equal"])}}}


def loop_section(sizes: Sizes, expected_first_loss: float, scratch: str) -> dict:
  warmup = 2
  config = quickstart_config(sizes, warmup + sizes.loop_steps + 2, sizes.checkpoint_every)
  batches = quickstart_batches(config)
  bare, first = bench_loop.bare_step(config, batches, sizes.loop_steps)
  loop, saves = bench_loop.loop_figures(config, warmup, sizes.loop_steps, cached=batches,
                                        workdir=tempfile.mkdtemp(prefix="loop_", dir=scratch))
  return {"batch": config.data.batch_size, "steps": sizes.loop_steps,
          "checkpoint_every": sizes.checkpoint_every, "bare_images_per_second": bare,
          "loop_images_per_second": loop, "loop_over_bare": loop / bare,
          "save_block_seconds": saves,
          "checks": {"first_loss": relative_check(first["loss"], expected_first_loss,
                                                  LOSS_TOLERANCE)}}


def tensorflow_missing() -> str | None:
  """Why the tf.data input cannot run here (TensorFlow does not import), or None."""
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as error:
    return f"no TensorFlow on this machine ({error}): the tf.data input cannot run"
  return None


def real_input_loop_section(sizes: Sizes, scratch: str) -> dict:
  """The loop fed by the tf.data pipeline (synthetic shapes written under ``scratch``) against the
  bare step on the pipeline's first batches."""
  warmup = 2
  config = quickstart_config(sizes, warmup + sizes.loop_steps + 2, sizes.checkpoint_every)
  config.data.data_dir = os.path.join(scratch, "data")
  batches = bench_loop.pipeline_batches(config)
  bare, first = bench_loop.bare_step(config, batches, sizes.loop_steps)
  loop, saves = bench_loop.loop_figures(config, warmup, sizes.loop_steps,
                                        workdir=tempfile.mkdtemp(prefix="input_", dir=scratch))
  return {"batch": config.data.batch_size, "steps": sizes.loop_steps,
          "host_cores": os.cpu_count(), "bare_images_per_second": bare,
          "loop_images_per_second": loop, "loop_over_bare": loop / bare,
          "save_block_seconds": saves,
          "checks": {"first_loss_finite": {"value": first["loss"],
                                           "ok": bool(np.isfinite(first["loss"]))}}}


def environment() -> dict:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  devices = jax.devices()
  stats = devices[0].memory_stats() or {}
  carried = {name: getattr(importlib.util.find_spec(name), "origin", None) for name in CARRIED}
  return {"python": platform.python_version(), "versions": versions, "carried": carried,
          "backend": jax.default_backend(), "devices": [str(d) for d in devices],
          "device_kind": devices[0].device_kind, "bytes_limit": stats.get("bytes_limit"),
          "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


# ---- the two modes ----

def make_reference(folder: str, sizes: Sizes, small: bool) -> None:
  """Writes ``folder``/reference.json, reference.npz and quickstart/ (float32, this machine)."""
  os.makedirs(folder, exist_ok=True)
  arrays, models = {}, {}
  for label, spec in sizes.models:
    config = model_config(spec, "float32", sizes.reference_batch)
    step = compiled_step(config, train_step.synthetic_batch(config, drawn=True))
    metrics = first_step(step)
    compiled, args, _ = forward_outputs(spec, "float32", 2)
    arrays[f"{label}/forward"] = flat_outputs(compiled(*args))
    models[label] = {"config": spec, "first_loss": metrics["loss"],
                     "first_grad_norm": metrics["grad_norm"],
                     "train_flops_per_image": (flops_of(step["compiled"]) or 0)
                                              / sizes.reference_batch or None,
                     "forward_flops_per_image": (flops_of(compiled) or 0) / 2 or None}
    print(f"{label}: {json.dumps(models[label])}", flush=True)

  steps = sizes.reference_train_steps
  config = quickstart_config(sizes, steps, steps)
  batches = quickstart_batches(config)
  _, first = bench_loop.bare_step(config, batches, 0)
  train.train_and_evaluate(config, os.path.join(folder, "quickstart"),
                           input_fn=lambda start: itertools.islice(itertools.cycle(batches),
                                                                   start, None))
  with tempfile.TemporaryDirectory() as scratch:
    got = run_exported(config, os.path.join(folder, "quickstart"), scratch,
                       export_images(config, sizes.export_batch))
  arrays.update({f"export/{k}": v for k, v in got["outputs"].items()})
  info = {"small": small, "reference_batch": sizes.reference_batch, "jax": jax.__version__,
          "device": jax.devices()[0].device_kind, "machine": environment()["machine"],
          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "models": models,
          "quickstart": {"variant": sizes.quickstart, "first_loss": first["loss"],
                         "train_steps": steps,
                         "num_detections": got["outputs"]["num_detections"].tolist()}}
  np.savez(os.path.join(folder, "reference.npz"), **arrays)
  with open(os.path.join(folder, "reference.json"), "w") as f:
    json.dump(info, f, indent=2)
  print(f"reference written to {folder}: {json.dumps(info['quickstart'])}", flush=True)


def load_reference(folder: str, small: bool) -> tuple[dict, dict]:
  path = os.path.join(folder, "reference.json")
  if not os.path.exists(path):
    sys.exit(f"--reference={folder}: no reference.json there; make it first with "
             f"--make_reference={folder}{' --small' if small else ''} (experiments/README.md)")
  with open(path) as f:
    info = json.load(f)
  if info["small"] != small:
    sys.exit(f"--reference={folder} was made {'with' if info['small'] else 'without'} --small; "
             f"this run is {'with' if small else 'without'} it")
  with np.load(os.path.join(folder, "reference.npz")) as arrays:
    return info, dict(arrays)


def benchmark(args, sizes: Sizes) -> int:
  """Runs the sections against ``args.reference``; returns the exit status."""
  started = time.monotonic()
  info, arrays = load_reference(args.reference, args.small)
  os.makedirs(args.output, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix="bench_accelerator_")
  bench_loop.quiet_logging()
  results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "small": args.small,
             "selected": args.sections or "all",
             "jax": jax.__version__, "device": f"{jax.device_count()} x "
             f"{jax.devices()[0].device_kind}", "budget_s": args.budget_s,
             "reference": {k: info[k] for k in ("date", "machine", "jax", "reference_batch")},
             "sections": {}, "skipped": [], "not_run": {}, "errors": {}, "checks_failed": []}

  def write():
    results["seconds"] = time.monotonic() - started
    with open(os.path.join(args.output, "results.json"), "w") as f:
      json.dump(results, f, indent=2)

  def section(name: str, run: Callable[[], dict]) -> None:
    if args.sections and name != "environment" and not any(w in name for w in args.sections):
      return
    if time.monotonic() - started > args.budget_s:
      results["skipped"].append(name)
      print(f"{name}: skipped, past the {args.budget_s:.0f} s budget", flush=True)
      return
    begin = time.monotonic()
    try:
      record = run()
    except Exception as error:  # pylint: disable=broad-except  (the next sections still run)
      logging.exception("section %s failed", name)
      results["errors"][name] = f"{type(error).__name__}: {error}"[:2000]
      print(f"{name}: FAILED {results['errors'][name][:300]}", flush=True)
      write()
      return
    record["seconds"] = time.monotonic() - begin
    results["sections"][name] = record
    failed = [check for check, value in record.get("checks", {}).items() if not value["ok"]]
    results["checks_failed"] += [f"{name}: {check}" for check in failed]
    print(f"{name}: {json.dumps(record)}{'  CHECK FAILED: ' + ', '.join(failed) if failed else ''}",
          flush=True)
    write()

  section("environment", environment)
  for label, spec in sizes.models:
    reference_batch = train_step.synthetic_batch(model_config(spec, "float32",
                                                              sizes.reference_batch), drawn=True)
    section(f"{label} train bfloat16",
            lambda spec=spec, label=label, batch=reference_batch: train_section(
                spec, sizes, info["models"][label], batch))
  expected = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("export/")}
  section("export", lambda: export_section(sizes, args.reference, expected, scratch))
  section("quickstart loop vs bare step",
          lambda: loop_section(sizes, info["quickstart"]["first_loss"], scratch))
  missing = tensorflow_missing()
  if missing:
    results["not_run"]["quickstart loop vs bare step, tf.data input"] = missing
  else:
    section("quickstart loop vs bare step, tf.data input",
            lambda: real_input_loop_section(sizes, scratch))
  for label, spec in sizes.models:
    for batch in sizes.forward_batches:
      section(f"{label} forward bfloat16 batch {batch}",
              lambda spec=spec, label=label, batch=batch: forward_section(
                  spec, batch, sizes, arrays[f"{label}/forward"]))
  results["tensorflow_loaded"] = "tensorflow" in sys.modules
  results["modules_loaded"] = sorted(name for name in sys.modules if name.startswith("ssd_jax"))
  write()
  print(f"done in {results['seconds']:.0f} s: {len(results['sections'])} sections, skipped "
        f"{results['skipped'] or 'none'}, errors {list(results['errors']) or 'none'}, failed "
        f"checks {results['checks_failed'] or 'none'}; {os.path.join(args.output, 'results.json')}",
        flush=True)
  return 1 if results["errors"] or results["checks_failed"] else 0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--make_reference", metavar="DIR", default=None,
                      help="write the float32 reference into DIR (here, on a CPU) and stop")
  parser.add_argument("--reference", default="runs/accelerator_reference",
                      help="the folder --make_reference wrote (carried to the device)")
  parser.add_argument("--output", default="runs/bench_accelerator",
                      help="where results.json goes")
  parser.add_argument("--small", action="store_true", help="shrunk, for a CPU (CI)")
  parser.add_argument("--budget_s", type=float, default=None,
                      help="no section starts after this many seconds (default 380; none with "
                           "--small, whose CI run must cover every section)")
  parser.add_argument("--sections", type=lambda text: [w for w in text.split(",") if w],
                      default=[], help="comma-separated words: only the sections whose names "
                      "hold one of them run (and environment), e.g. a rerun of 'export,VGG16'")
  args = parser.parse_args()
  sizes = Sizes(args.small)
  if args.make_reference:
    make_reference(args.make_reference, sizes, args.small)
    return
  if args.budget_s is None:
    args.budget_s = float("inf") if args.small else 380.0
  sys.exit(benchmark(args, sizes))


if __name__ == "__main__":
  main()
