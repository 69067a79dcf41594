"""SSD300-VGG16 speed on this machine: forward (and optionally forward+backward) images/s per
batch size, ours vs torchvision.

Runs our jitted model and, when torch and torchvision are installed, torchvision's
ssd300_vgg16 (random weights, backbone + head, no transform or post-processing, as many threads
as cores) on the same random normalised inputs, and prints the ratio. ``--backward`` adds
forward+backward of a cheap surrogate loss, mean(loc^2) + mean(logits^2), so the number is the
model's, not the matching's or the loss's (the whole train step is ``bench_train.py``).
Achieved FLOP/s use the FLOPs of XLA's cost analysis of the compiled program, as a fraction of
the float32 matmul rate of jax measured in the same run (a large jnp.matmul, best of 5); torch's
matmul rate is printed beside it. XLA options: ``ssd_jax.xla_flags``' inference defaults unless
``XLA_FLAGS`` sets them (printed).

  python experiments/bench_model.py [--batch_sizes 1,8,32] [--config configs/ssd300.py]
      [--min_time 5] [--no_torch] [--backward] [--dtype float32] [--quick]

``--quick`` is batches 1 and 8 timed once each (a smoke run).
"""

import argparse
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssd_jax import config_utils, models, xla_flags


def timed(run: Callable[[], object], min_time: float, max_runs: int = 10) -> float:
  """Median seconds per call of ``run`` after one warm-up call (compilation)."""
  run()
  times = []
  while not times or (sum(times) < min_time and len(times) < max_runs):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_peak(size: int = 4096) -> float:
  """float32 FLOP/s of a [size, size] @ [size, size] jnp.matmul, best of 5."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, a).block_until_ready()
  best = min(_seconds(lambda: matmul(a, a).block_until_ready()) for _ in range(5))
  return 2 * size ** 3 / best


def torch_matmul_peak(size: int = 4096) -> float:
  """float32 FLOP/s of torch.matmul on the same problem (its BLAS can beat XLA's), best of 5."""
  import torch  # pylint: disable=g-import-not-at-top  (optional)
  a = torch.randn(size, size)
  torch.matmul(a, a)
  return 2 * size ** 3 / min(_seconds(lambda: torch.matmul(a, a)) for _ in range(5))


def _seconds(run: Callable[[], object]) -> float:
  start = time.perf_counter()
  run()
  return time.perf_counter() - start


def random_model(config) -> models.SSD:
  """The model with host-side random params (eager init compiles per shape: slow on CPU)."""
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  for path, var in nnx.to_flat_state(nnx.state(model)):
    if path[-1] == "kernel":
      value = rng.normal(size=var.shape) * np.sqrt(2 / np.prod(var.shape[:-1]))
    elif path[-1] in ("scale", "var"):  # BatchNorm / L2Norm scales and variances
      value = np.ones(var.shape)
    else:
      value = 0.01 * rng.normal(size=var.shape)
    var.set_value(jnp.asarray(value, var.dtype))
  return model


def jax_programs(model: models.SSD):
  """Jitted forward and forward+backward of (params, images)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def surrogate(params, images):
    out = nnx.merge(graphdef, params, rest, copy=True)(images)
    return jnp.mean(out.loc ** 2) + jnp.mean(out.logits ** 2)

  forward = jax.jit(lambda p, x: nnx.merge(graphdef, p, rest, copy=True)(x)[:2])
  return params, forward, jax.jit(jax.grad(surrogate))


def bench_jax(model, batch: int, size: int, min_time: float,
              backward: bool) -> dict[str, tuple[float, float]]:
  """{mode: (seconds per batch, FLOPs per batch)} for "fwd" (and "fwd+bwd")."""
  params, forward, both = jax_programs(model)
  images = jax.random.normal(jax.random.key(1), (batch, size, size, 3))
  results = {}
  for mode, program in (("fwd", forward), ("fwd+bwd", both))[:2 if backward else 1]:
    compiled = program.lower(params, images).compile()  # once, for the FLOPs and the timing
    flops = compiled.cost_analysis()["flops"]
    seconds = timed(lambda: jax.block_until_ready(compiled(params, images)), min_time)  # noqa: B023
    results[mode] = (seconds, flops)
  return results


def bench_torch(batch: int, size: int, num_classes: int, min_time: float,
                backward: bool) -> dict[str, float]:
  """{mode: seconds per batch} of torchvision's ssd300_vgg16 backbone + head."""
  import torch  # pylint: disable=g-import-not-at-top  (optional)
  from torchvision.models.detection import ssd300_vgg16  # pylint: disable=g-import-not-at-top
  model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes)
  images = torch.randn(batch, 3, size, size)

  def outputs():
    head = model.head(list(model.backbone(images).values()))
    return head["bbox_regression"], head["cls_logits"]

  def forward():
    with torch.no_grad():
      outputs()

  def forward_backward():
    model.zero_grad(set_to_none=True)
    loc, logits = outputs()
    ((loc ** 2).mean() + (logits ** 2).mean()).backward()

  model.eval()
  results = {"fwd": timed(forward, min_time)}
  if backward:
    results["fwd+bwd"] = timed(forward_backward, min_time)
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_sizes", default="1,8,32")
  parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..",
                                                       "configs", "ssd300.py"))
  parser.add_argument("--dtype", default="float32", help="compute dtype of our model")
  parser.add_argument("--min_time", type=float, default=5.0,
                      help="time each measurement for at least this long (s), max 10 runs")
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--backward", action="store_true", help="also time forward+backward")
  parser.add_argument("--quick", action="store_true", help="batches 1 and 8, one timed run")
  args = parser.parse_args()
  xla_flags.apply("eval")  # before JAX starts (XLA reads XLA_FLAGS once)
  if args.quick:
    args.batch_sizes, args.min_time = "1,8", 0.0

  config = config_utils.load_config(args.config)
  config.model.dtype = args.dtype
  size = config.model.image_size
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count() or 1)  # the cores XLA:CPU uses
    use_torch = not args.no_torch
    torch_info = f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
  except ImportError:
    use_torch, torch_info = False, ", torch not installed"
  print(f"{config.model.name} {size}x{size}, {config.model.num_classes} classes, "
        f"{args.dtype}; jax {jax.__version__} on {jax.devices()[0].device_kind} "
        f"({os.cpu_count()} cores){torch_info}; load average {os.getloadavg()[0]:.1f}")
  print(xla_flags.summary())
  peak = matmul_peak()
  print(f"float32 matmul peak (4096^3, best of 5): jax {peak / 1e9:.1f} GFLOP/s"
        + (f", torch {torch_matmul_peak() / 1e9:.1f} GFLOP/s" if use_torch else ""))
  model = random_model(config)
  header = (f"{'batch':>5}  {'mode':<8} {'jax img/s':>9} {'GFLOP/img':>9} {'GFLOP/s':>8} "
            f"{'of peak':>7}")
  print(header + (f" {'torch img/s':>11} {'jax/torch':>9}" if use_torch else ""))
  for batch in (int(b) for b in args.batch_sizes.split(",")):
    ours = bench_jax(model, batch, size, args.min_time, args.backward)
    theirs = (bench_torch(batch, size, config.model.num_classes, args.min_time, args.backward)
              if use_torch else {})
    for mode, (seconds, flops) in ours.items():
      line = (f"{batch:>5}  {mode:<8} {batch / seconds:>9.3f} {flops / batch / 1e9:>9.1f} "
              f"{flops / seconds / 1e9:>8.1f} {flops / seconds / peak:>7.1%}")
      if mode in theirs:
        line += f" {batch / theirs[mode]:>11.3f} {theirs[mode] / seconds:>8.2f}x"
      print(line, flush=True)


if __name__ == "__main__":
  main()
