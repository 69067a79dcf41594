"""Timing shared by the benchmarks: the median of repeated calls after a warm-up call."""

import time
from typing import Any, Callable

import jax
import numpy as np


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall seconds of ``fn()`` over ``repeats`` calls, after one warm-up call (compilation).

  Results are waited for with ``jax.block_until_ready``, so asynchronous dispatch is timed too.
  """
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))
