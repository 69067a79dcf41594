"""Benchmark: the training resize per interpolation method, against bilinear in the same run.

Workload: ``augment.resize`` inside tf.data (one thread) on 500x375 images (VOC-sized) through
zoom-out windows of 1..2x the image, to 300x300: each method alone, and Caffe's random choice
among five (``configs/ssd300.py``'s ``augment.resize_methods``). The variants are timed in
interleaved rounds and the fastest round of each counts, which resists a shared, loaded CPU.

Run: python experiments/bench_resize.py [--images 256]
"""

import argparse
import os
import time

import numpy as np
import tensorflow as tf

from ssd_jax.data import augment

CAFFE = ("bilinear", "area", "nearest", "bicubic", "lanczos3")


def ms_per_image(dataset: tf.data.Dataset, methods: tuple[str, ...], count: int) -> float:
  run = dataset.map(augment.resize(300, (123, 117, 104), methods), num_parallel_calls=1)
  for _ in run.take(8):  # warm-up: tracing
    pass
  start = time.perf_counter()
  for _ in run:
    pass
  return 1e3 * (time.perf_counter() - start) / count


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  images = tf.constant(rng.integers(0, 256, (4, 375, 500, 3), dtype=np.uint8))
  ratio = rng.uniform(1, 2, (args.images, 1))
  offset = rng.uniform(0, 1, (args.images, 2)) * (ratio - 1)
  windows = tf.constant(np.concatenate([-offset, ratio - offset], 1), tf.float32)
  dataset = tf.data.Dataset.from_tensor_slices((windows, tf.range(args.images))).map(
      lambda window, i: {"image": images[i % 4], "window": window,
                         "seed": tf.stack([tf.cast(i, tf.int64), 1])})
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  dataset = dataset.with_options(options)
  print(f"{os.cpu_count()} cores, tensorflow {tf.__version__}; ms per image, 500x375 -> 300x300")
  variants = [(m,) for m in augment.RESIZE_METHODS] + [CAFFE]
  rounds = [{v: ms_per_image(dataset, v, args.images) for v in variants} for _ in range(args.rounds)]
  best = {v: min(r[v] for r in rounds) for v in variants}
  for methods, ms in best.items():
    print(f"{' | '.join(methods):45s} {ms:7.2f}  {ms / best['bilinear',]:5.2f}x bilinear")


if __name__ == "__main__":
  main()
