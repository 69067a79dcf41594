"""How far bfloat16 compute is from float32 on this CPU, for bench_accelerator's tolerances.

For each SSD300 of ``bench_accelerator.MODELS``: the first train step's loss and gradient norm
(``train_step.synthetic_batch``, ``--batch`` images, ``bench_model.random_model``'s weights) and
the network's outputs on ``bench_accelerator.forward_images``, each in float32 and in bfloat16, and
their relative errors (outputs: relative L2 per image, the largest). The same quantities that
``bench_accelerator`` checks on an accelerator against a float32 reference.

Run: python experiments/check_bf16_cpu.py [--batch 2]
"""

import argparse
import json
import os

from ssd_jax import xla_flags

xla_flags.apply("train")  # before JAX starts

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from ssd_jax import train_step

import bench_accelerator as bench


def figures(spec: str, dtype: str, batch: int) -> tuple[dict[str, float], np.ndarray]:
  """(first step's metrics, forward outputs [2, P * (4 + C)]) of ``spec`` in ``dtype``."""
  reference_batch = train_step.synthetic_batch(bench.model_config(spec, "float32", batch))
  metrics = bench.first_step(bench.compiled_step(bench.model_config(spec, dtype, batch),
                                                 reference_batch))
  compiled, args, _ = bench.forward_outputs(spec, dtype, 2)
  return metrics, bench.flat_outputs(compiled(*args))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} cores; load "
        f"{os.getloadavg()[0]:.1f}; batch {args.batch}")
  for label, spec in bench.MODELS:
    (f32, out32), (b16, out16) = (figures(spec, d, args.batch) for d in ("float32", "bfloat16"))
    l2 = np.linalg.norm(out16 - out32, axis=1) / np.linalg.norm(out32, axis=1)
    errors = {"first_loss": abs(b16["loss"] - f32["loss"]) / abs(f32["loss"]),
              "first_grad_norm": abs(b16["grad_norm"] - f32["grad_norm"]) / abs(f32["grad_norm"]),
              "forward_relative_l2": float(l2.max())}
    rounded = {k: float(f"{v:.3g}") for k, v in errors.items()}
    print(f"{label} ({spec}): float32 loss {f32['loss']:.5f} grad norm {f32['grad_norm']:.4f}; "
          f"bfloat16 relative errors {json.dumps(rounded)}", flush=True)


if __name__ == "__main__":
  main()
