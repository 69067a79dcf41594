"""Check: SSD300-VGG16 trains the same with ``layers.tile_max`` as with ``lax.reduce_window`` pools.

Runs three jitted train steps of SSD300-VGG16 (random weights, ``train_step.synthetic_batch``)
twice from the same state: once with the 2x2 pools as ``layers.tile_max`` (the default), once with
``tile_max`` replaced by the ``lax.reduce_window`` max (select-and-scatter gradient) it stands for,
and prints both losses per step and their largest difference. Issue 15 asks for 1e-5.

Run: python experiments/check_pool_exact.py [--batch_size 2] [--steps 3]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ssd_jax import xla_flags  # noqa: E402

xla_flags.apply("train")  # before JAX starts: XLA reads XLA_FLAGS once

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssd_jax import config_utils, parallel, train_step  # noqa: E402
from ssd_jax.models import layers  # noqa: E402


CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "ssd300.py")


def reduce_window_tile_max(x: jax.Array, k: int) -> jax.Array:
  """What ``layers.tile_max`` replaced: a VALID k x k, stride k ``lax.reduce_window`` max."""
  return jax.lax.reduce_window(x, -np.inf, jax.lax.max, (1, k, k, 1), (1, k, k, 1), "VALID")


def losses(batch_size: int, steps: int) -> list[float]:
  """Losses of ``steps`` train steps of SSD300 on the fixed batch, from the seed-0 state."""
  config = config_utils.load_config(CONFIG)
  config.data.batch_size = batch_size
  mesh = parallel.create_mesh(config)
  _, state, step = train_step.make_step(config, mesh)
  batch = parallel.global_batch(train_step.synthetic_batch(config), mesh)
  values = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    values.append(float(metrics["loss"]))
  return values


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=2)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  fast = losses(args.batch_size, args.steps)
  layers.tile_max = reduce_window_tile_max  # vgg.py's pools look it up at trace time
  reference = losses(args.batch_size, args.steps)
  for i, (a, b) in enumerate(zip(fast, reference), 1):
    print(f"step {i}: tile_max loss {a:.7f}, reduce_window loss {b:.7f}, difference {a - b:.2e}")
  print(f"largest difference {max(abs(a - b) for a, b in zip(fast, reference)):.2e} "
        f"(SSD300-VGG16, batch {args.batch_size}, {xla_flags.summary()})")


if __name__ == "__main__":
  main()
