"""Benchmark: the training resize per interpolation method, on the device, against bilinear.

Workload: ``pixel_augment.resample`` (jitted, vmapped) on a batch of 500x375 images (VOC-sized) on
the 500x500 canvas of ``configs/ssd300.py``, through zoom-out windows of 1..2x the image, to
300x300: each method alone, and Caffe's random choice among five (``configs/ssd300.py``'s
``augment.resize_methods``, each example with its drawn method). Bilinear and nearest are gathers;
the other kernels a weight matrix per axis, and with several methods configured every example
pays for the matrix products. The variants are timed in interleaved rounds and the fastest round
of each counts, which resists a shared, loaded CPU.

Run: python experiments/bench_resize.py [--batch 8] [--rounds 3]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ssd_jax import xla_flags  # noqa: E402

xla_flags.apply("train")  # before JAX starts: the step's XLA options

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssd_jax import pixel_augment  # noqa: E402

CAFFE = ("bilinear", "area", "nearest", "bicubic", "lanczos3")


def ms_per_image(methods: tuple[str, ...], batch: dict, repeats: int = 3) -> float:
  """Fastest of ``repeats`` timed calls (after compilation), per image."""
  resample = jax.jit(jax.vmap(lambda image, size, window, method: pixel_augment.resample(
      image, size, window, method, 300, methods, (123.0, 117.0, 104.0))))
  args = (batch["image"], batch["image_size"], batch["window"], batch["method"] % len(methods))
  jax.block_until_ready(resample(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(resample(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * min(times) / len(batch["image"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  canvas = np.zeros((args.batch, 500, 500, 3), np.uint8)
  canvas[:, :375] = rng.integers(0, 256, (args.batch, 375, 500, 3), dtype=np.uint8)
  ratio = rng.uniform(1, 2, (args.batch, 1))
  offset = rng.uniform(0, 1, (args.batch, 2)) * (ratio - 1)
  batch = {"image": canvas, "image_size": np.tile(np.int32([375, 500]), (args.batch, 1)),
           "window": np.concatenate([-offset, ratio - offset], 1).astype(np.float32),
           "method": np.arange(args.batch, dtype=np.int32)}
  print(f"{os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].device_kind}, load "
        f"average {os.getloadavg()[0]:.1f}; ms per image, 500x375 -> 300x300, batch {args.batch}")
  variants = [(m,) for m in pixel_augment.METHODS] + [CAFFE]
  rounds = [{v: ms_per_image(v, batch) for v in variants} for _ in range(args.rounds)]
  best = {v: min(r[v] for r in rounds) for v in variants}
  for methods, ms in best.items():
    print(f"{' | '.join(methods):45s} {ms:7.2f}  {ms / best['bilinear',]:5.2f}x bilinear")


if __name__ == "__main__":
  main()
