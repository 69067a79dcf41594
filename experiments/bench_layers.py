"""Per-layer profile of SSD300-VGG16 on this CPU: each conv's forward, input-gradient and
filter-gradient pass, and each pool's forward and forward+backward, ssd_jax (XLA) vs torch
(oneDNN, channels-last), both with the same threads in one process.

Shapes are the SSD300 backbone's at 300 px (conv1_1 .. conv11_2, fc6 dilated, pool1 .. pool4);
the pools compare the ``lax.reduce_window`` formulation with ``layers.tile_max`` and torch's
``max_pool2d``. Times are medians of ``--repeats`` calls after a warm-up call. XLA options: the
project's train defaults (``ssd_jax.xla_flags``) unless ``XLA_FLAGS`` sets them.

  python experiments/bench_layers.py [--batch 8] [--repeats 3] [--only conv,pool] [--quick]

``--quick`` is batch 2 with one repeat (a smoke run, minutes on 2 busy cores).
"""

import argparse
import os
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ssd_jax import xla_flags  # noqa: E402

xla_flags.apply("train")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ssd_jax.models import layers, vgg  # noqa: E402


def ssd300_convs() -> list[tuple[str, int, int, int, int, int, int, int]]:
  """(name, input side, in channels, out channels, kernel, stride, padding, dilation) per conv."""
  convs, side, cin = [], 300, 3
  names = iter(vgg.vgg_conv_names())
  for index, block in enumerate(vgg.VGG16_BLOCKS):
    if index > 0:
      side = -(-side // 2)  # ceil-mode 2x2 pools
    for cout in block:
      convs.append((next(names), side, cin, cout, 3, 1, 1, 1))
      cin = cout
  convs += [("fc6", side, 512, 1024, 3, 1, 6, 6), ("fc7", side, 1024, 1024, 1, 1, 0, 1)]
  cin = 1024
  for (name1, name2), (mid, out, kernel, stride, pad) in zip(vgg.extra_names("ssd300"),
                                                             vgg.EXTRAS["ssd300"]):
    convs.append((name1, side, cin, mid, 1, 1, 0, 1))
    convs.append((name2, side, mid, out, kernel, stride, pad, 1))
    side = (side + 2 * pad - kernel) // stride + 1
    cin = out
  return convs


def ssd300_pools() -> list[tuple[str, int, int]]:
  """(name, input side, channels) of the 2x2 stride-2 ceil-mode pools."""
  return [("pool1", 300, 64), ("pool2", 150, 128), ("pool3", 75, 256), ("pool4", 38, 512)]


def median_seconds(run: Callable[[], object], repeats: int) -> float:
  run()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def jax_conv_passes(batch, side, cin, cout, k, stride, pad, dilation, repeats):
  """{pass: seconds} of XLA's forward, input-gradient and filter-gradient convolution."""
  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                        rhs_dilation=(dilation, dilation),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, side, side, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
  y = conv(x, w)
  g = jnp.ones_like(y)
  programs = {
      "fwd": (jax.jit(conv), (x, w)),
      "dgrad": (jax.jit(lambda x, w, g: jax.vjp(lambda v: conv(v, w), x)[1](g)[0]), (x, w, g)),
      "wgrad": (jax.jit(lambda x, w, g: jax.vjp(lambda v: conv(x, v), w)[1](g)[0]), (x, w, g)),
  }
  return {name: median_seconds(lambda: jax.block_until_ready(fn(*args)), repeats)
          for name, (fn, args) in programs.items()}


def torch_conv_passes(batch, side, cin, cout, k, stride, pad, dilation, repeats):
  import torch  # pylint: disable=g-import-not-at-top  (optional)
  x = torch.randn(batch, cin, side, side).to(memory_format=torch.channels_last)
  w = torch.randn(cout, cin, k, k).to(memory_format=torch.channels_last)
  conv = lambda: torch.nn.functional.conv2d(x, w, None, stride, pad, dilation)  # noqa: E731
  g = torch.ones_like(conv()).to(memory_format=torch.channels_last)

  def backward(mask):
    return lambda: torch.ops.aten.convolution_backward(
        g, x, w, None, [stride] * 2, [pad] * 2, [dilation] * 2, False, [0, 0], 1, mask)
  with torch.no_grad():
    return {"fwd": median_seconds(conv, repeats),
            "dgrad": median_seconds(backward([True, False, False]), repeats),
            "wgrad": median_seconds(backward([False, True, False]), repeats)}


def reduce_window_pool(x):
  pad = ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), pad)


def jax_pool_passes(batch, side, channels, repeats):
  """{formulation pass: seconds} of the 2x2 ceil pool, reduce_window vs tile max."""
  x = jax.random.normal(jax.random.key(0), (batch, side, side, channels))
  out = {}
  for label, pool in (("reduce_window", reduce_window_pool),
                      ("tile_max", lambda v: layers.max_pool(v, 2, 2, ceil_mode=True))):
    g = jnp.ones_like(pool(x))
    fwd = jax.jit(pool)
    both = jax.jit(lambda v, g: jax.vjp(pool, v)[1](g)[0])  # noqa: B023  (used at once)
    out[f"{label} fwd"] = median_seconds(lambda: fwd(x).block_until_ready(), repeats)
    out[f"{label} fwd+bwd"] = median_seconds(lambda: both(x, g).block_until_ready(), repeats)
  return out


def torch_pool_passes(batch, side, channels, repeats):
  import torch  # pylint: disable=g-import-not-at-top  (optional)
  x = torch.randn(batch, channels, side, side).to(memory_format=torch.channels_last)
  x.requires_grad_(True)
  pool = lambda: torch.nn.functional.max_pool2d(x, 2, 2, ceil_mode=True)  # noqa: E731
  g = torch.ones_like(pool())

  def both():
    x.grad = None
    pool().backward(g)
  with torch.no_grad():
    fwd = median_seconds(pool, repeats)
  return {"torch fwd": fwd, "torch fwd+bwd": median_seconds(both, repeats)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--only", default="conv,pool", help="comma list of: conv, pool")
  parser.add_argument("--quick", action="store_true", help="batch 2, 1 repeat")
  args = parser.parse_args()
  batch, repeats = (2, 1) if args.quick else (args.batch, args.repeats)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count() or 1)
    has_torch = True
  except ImportError:
    has_torch = False
  print(f"batch {batch}, median of {repeats}; jax {jax.__version__}, {os.cpu_count()} cores"
        + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if has_torch else ""))
  print(xla_flags.summary())
  parts = args.only.split(",")
  if "conv" in parts:
    print(f"{'layer':<9} {'out':>4} {'GFLOP':>6} | {'jax fwd':>7} {'dgrad':>7} {'wgrad':>7} ms"
          + (f" | {'torch fwd':>9} {'dgrad':>7} {'wgrad':>7} ms | jax/torch f/d/w" if has_torch
             else ""))
    totals = np.zeros(6)
    for spec in ssd300_convs():
      name, side, cin, cout, k, stride, pad, dilation = spec
      out = (side + 2 * pad - dilation * (k - 1) - 1) // stride + 1
      gflop = 2 * batch * out * out * cout * cin * k * k / 1e9
      ours = jax_conv_passes(batch, *spec[1:], repeats)
      line = (f"{name:<9} {out:>4} {gflop:>6.1f} | {ours['fwd'] * 1e3:>7.0f} "
              f"{ours['dgrad'] * 1e3:>7.0f} {ours['wgrad'] * 1e3:>7.0f}")
      totals[:3] += [ours["fwd"], ours["dgrad"], ours["wgrad"]]
      if has_torch:
        theirs = torch_conv_passes(batch, *spec[1:], repeats)
        totals[3:] += [theirs["fwd"], theirs["dgrad"], theirs["wgrad"]]
        line += (f" | {theirs['fwd'] * 1e3:>9.0f} {theirs['dgrad'] * 1e3:>7.0f} "
                 f"{theirs['wgrad'] * 1e3:>7.0f} | " + " ".join(
                     f"{theirs[p] / ours[p]:.2f}" for p in ("fwd", "dgrad", "wgrad")))
      print(line, flush=True)
    line = f"{'sum':<9} {'':>4} {'':>6} | " + " ".join(f"{t * 1e3:>7.0f}" for t in totals[:3])
    if has_torch:
      line += (f" | {totals[3] * 1e3:>9.0f} {totals[4] * 1e3:>7.0f} {totals[5] * 1e3:>7.0f} | "
               + " ".join(f"{totals[3 + i] / totals[i]:.2f}" for i in range(3)))
    print(line + "   (jax/torch > 1: ssd_jax faster)")
  if "pool" in parts:
    for name, side, channels in ssd300_pools():
      times = jax_pool_passes(batch, side, channels, repeats)
      if has_torch:
        times.update(torch_pool_passes(batch, side, channels, repeats))
      print(f"{name} [{batch}, {side}, {side}, {channels}] ms: " + ", ".join(
          f"{label} {seconds * 1e3:.1f}" for label, seconds in times.items()), flush=True)


if __name__ == "__main__":
  main()
