"""Benchmark: train-step images/s, ours vs torchvision's SSD300 training step on the same CPU.

Measures, in one run (XLA options: ``ssd_jax.xla_flags``' train defaults unless ``XLA_FLAGS``
sets them; the line printed first says which are in force):
- the quickstart model's jitted train step (batch 32, 128 px): steps/s;
- SSD300-VGG16's jitted train step at each ``--batch_sizes`` (300 px), its achieved FLOP/s (XLA's
  cost analysis of the compiled step) as a share of the float32 matmul rate measured in the same
  run, and torchvision's ``ssd300_vgg16`` training step (forward with targets, its own matching
  and loss, backward, SGD step; random weights, the same threads) at the same batch: the ratio
  is printed;
- the share of our SSD300 step spent in matching + encoding + the MultiBox loss (timed alone on
  tensors of the model's output shapes), and the share of the quickstart's and SSD300's steps
  spent in the augmentation's pixel work (``pixel_augment.augment`` timed alone on the same drawn
  batch: 500x500 canvases and Caffe's five resize methods for SSD300).

Our steps run on drawn batches (``train_step.synthetic_batch(drawn=True)``), as in training: the
step includes the augmentation's pixel work.

Run: python experiments/bench_train.py [--steps 3] [--batch_sizes 8,32] [--skip_torch] [--quick]
``--quick`` is batch 8 only with 2 timed steps (a smoke run).
"""

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ssd_jax import xla_flags  # noqa: E402

xla_flags.apply("train")  # before JAX starts: XLA reads XLA_FLAGS once

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssd_jax import config_utils, losses, matching, parallel, pixel_augment, priors  # noqa: E402
from ssd_jax import train_step  # noqa: E402

import bench_model  # noqa: E402  (experiments/bench_model.py: the matmul peak)
import timing  # noqa: E402  (experiments/timing.py, beside this script)


CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def ours(config_name: str, batch_size: int, steps: int, variant=None):
  """(seconds per train step, FLOPs per step, config) of our jitted step on a fixed drawn batch."""
  config = config_utils.load_config(os.path.join(CONFIGS, config_name), variant)
  config.data.batch_size = batch_size
  mesh = parallel.create_mesh(config)
  _, state, step = train_step.make_step(config, mesh)
  batch = parallel.global_batch(train_step.synthetic_batch(config, drawn=True), mesh)
  compiled = step.lower(state, batch).compile()  # compiled once, for the FLOPs and the timing
  flops = compiled.cost_analysis()["flops"]
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch)
    return metrics["loss"]
  return timing.median_seconds(run, steps), flops, config


def targets_and_loss_time(config, steps: int) -> float:
  """Seconds of matching + encoding + loss alone, on tensors of the model's output shapes."""
  prior_boxes = priors.from_config(config)
  batch = train_step.synthetic_batch(config)
  rng = np.random.default_rng(0)
  shape = (config.data.batch_size, len(prior_boxes))
  loc = rng.normal(size=shape + (4,)).astype(np.float32)
  logits = rng.normal(size=shape + (config.model.num_classes,)).astype(np.float32)

  @jax.jit
  def targets_and_loss(loc, logits, boxes, labels, mask):
    loc_t, cls_t = matching.match_batch(boxes, labels, mask, prior_boxes)
    return jax.value_and_grad(lambda l, g: losses.multibox_loss(l, g, loc_t, cls_t)[0],
                              argnums=(0, 1))(loc, logits)
  return timing.median_seconds(
      lambda: targets_and_loss(loc, logits, batch["boxes"], batch["labels"], batch["mask"]), steps)


def augmentation_time(config, steps: int) -> float:
  """Seconds of the augmentation's pixel work alone on the step's drawn batch."""
  mesh = parallel.create_mesh(config)
  batch = parallel.global_batch(train_step.synthetic_batch(config, drawn=True), mesh)
  augment = jax.jit(pixel_augment.augment, static_argnums=1)
  options = pixel_augment.Options.from_config(config)
  return timing.median_seconds(lambda: augment(batch, options), steps)


def torchvision_step_time(batch_size: int, steps: int) -> float | None:
  """Seconds per training step of torchvision's ssd300_vgg16, or None without torchvision."""
  try:
    import torch
    from torchvision.models.detection import ssd300_vgg16
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count() or 1)  # the cores XLA:CPU uses
  torch.manual_seed(0)
  model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
  images = [torch.rand(3, 300, 300) for _ in range(batch_size)]
  targets = [{"boxes": torch.tensor([[30.0, 30.0, 150.0, 180.0], [100.0, 60.0, 280.0, 250.0]]),
              "labels": torch.tensor([1, 2])} for _ in range(batch_size)]

  def run():
    optimizer.zero_grad()
    loss = sum(model(images, targets).values())
    loss.backward()
    optimizer.step()
  return timing.median_seconds(run, steps)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--batch_sizes", default="8,32")
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--quick", action="store_true", help="batch 8 only, 2 timed steps")
  args = parser.parse_args()
  steps, batch_sizes = (2, [8]) if args.quick else (args.steps, [
      int(b) for b in args.batch_sizes.split(",")])
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on "
        f"{jax.devices()[0].device_kind}, load average {os.getloadavg()[0]:.1f}")
  print(xla_flags.summary())
  peak = bench_model.matmul_peak()
  print(f"float32 matmul peak (4096^3, best of 5): {peak / 1e9:.1f} GFLOP/s")

  quick_s, _, quick = ours("quickstart.py", 32, max(steps, 5))
  share = augmentation_time(quick, 10) / quick_s
  print(f"quickstart model, batch 32, 128 px: {quick_s * 1e3:.0f} ms/step, {1 / quick_s:.2f} "
        f"steps/s, {32 / quick_s:.1f} images/s; augmentation's pixel work: {100 * share:.1f}% "
        "of the step")

  for batch_size in batch_sizes:
    ssd_s, flops, config = ours("ssd300.py", batch_size, steps)
    line = (f"SSD300-VGG16 train step, batch {batch_size}: {ssd_s:.2f} s, "
            f"{batch_size / ssd_s:.2f} images/s, {flops / ssd_s / 1e9:.0f} GFLOP/s = "
            f"{flops / ssd_s / peak:.0%} of the matmul peak")
    if batch_size == batch_sizes[0]:
      share = targets_and_loss_time(config, max(steps, 5)) / ssd_s
      line += f"; matching + loss: {100 * share:.1f}% of the step"
      share = augmentation_time(config, max(steps, 5)) / ssd_s
      line += f"; augmentation's pixel work: {100 * share:.1f}% of the step"
    print(line, flush=True)
    torch_s = None if args.skip_torch else torchvision_step_time(batch_size, steps)
    if torch_s is None:
      print("torchvision ssd300_vgg16: skipped (torch/torchvision not installed or --skip_torch)")
    else:
      import torch
      print(f"torchvision ssd300_vgg16 train step, batch {batch_size} "
            f"({torch.get_num_threads()} threads): {torch_s:.2f} s, "
            f"{batch_size / torch_s:.2f} images/s; ssd_jax is {torch_s / ssd_s:.2f}x its speed",
            flush=True)


if __name__ == "__main__":
  main()
