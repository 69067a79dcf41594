"""Benchmark: train-step images/s, ours vs torchvision's SSD300 training step on the same CPU.

Measures, in one run:
- the quickstart model's jitted train step (batch 32, 128 px);
- SSD300-VGG16's jitted train step at batch 8 (300 px), and torchvision's `ssd300_vgg16`
  training step (forward with targets, its own matching and loss, backward, SGD step) at the same
  batch when torch and torchvision are installed: the ratio is printed;
- the share of our SSD300 step spent in matching + encoding + the MultiBox loss (timed alone on
  tensors of the model's output shapes).

Run: python experiments/bench_train.py [--steps 3] [--skip_torch]
"""

import argparse
import os
import platform
import sys

import jax
import numpy as np

from ssd_jax import config_utils, losses, matching, parallel, priors

import timing  # experiments/timing.py, beside this script

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import test_train_step as fixtures  # noqa: E402  (the tests' tiny batch builder and step factory)

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def ours(config_name: str, batch_size: int, steps: int, variant=None):
  """(seconds per train step, config) of our jitted step on a fixed batch."""
  config = config_utils.load_config(os.path.join(CONFIGS, config_name), variant)
  config.data.batch_size = batch_size
  mesh, state, step = fixtures.make_step(config)
  batch = parallel.global_batch(fixtures.fixed_batch(config), mesh)
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], batch)
    return metrics["loss"]
  return timing.median_seconds(run, steps), config


def targets_and_loss_time(config, steps: int) -> float:
  """Seconds of matching + encoding + loss alone, on tensors of the model's output shapes."""
  prior_boxes = priors.from_config(config)
  batch = fixtures.fixed_batch(config)
  rng = np.random.default_rng(0)
  shape = (config.data.batch_size, len(prior_boxes))
  loc = rng.normal(size=shape + (4,)).astype(np.float32)
  logits = rng.normal(size=shape + (config.model.num_classes,)).astype(np.float32)

  @jax.jit
  def targets_and_loss(loc, logits, boxes, labels, mask):
    loc_t, cls_t = matching.match_batch(boxes, labels, mask, prior_boxes)
    return jax.value_and_grad(lambda l, g: losses.multibox_loss(l, g, loc_t, cls_t)[0],
                              argnums=(0, 1))(loc, logits)
  return timing.median_seconds(lambda: targets_and_loss(loc, logits, batch["boxes"], batch["labels"],
                                             batch["mask"]), steps)


def torchvision_step_time(batch_size: int, steps: int) -> float | None:
  """Seconds per training step of torchvision's ssd300_vgg16, or None without torchvision."""
  try:
    import torch
    from torchvision.models.detection import ssd300_vgg16
  except ImportError:
    return None
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
  parser.add_argument("--skip_torch", action="store_true")
  args = parser.parse_args()
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on "
        f"{jax.devices()[0].device_kind}")

  quick_s, _ = ours("quickstart.py", 32, max(args.steps, 5))
  print(f"quickstart model, batch 32, 128 px: {quick_s * 1e3:.0f} ms/step, {32 / quick_s:.1f} images/s")

  ssd_s, config = ours("ssd300.py", 8, args.steps)
  share = targets_and_loss_time(config, max(args.steps, 5)) / ssd_s
  print(f"SSD300-VGG16, batch 8, 300 px: {ssd_s:.2f} s/step, {8 / ssd_s:.2f} images/s; "
        f"matching + loss: {100 * share:.1f}% of the step")
  torch_s = None if args.skip_torch else torchvision_step_time(8, args.steps)
  if torch_s is None:
    print("torchvision ssd300_vgg16: skipped (torch/torchvision not installed or --skip_torch)")
  else:
    import torch
    print(f"torchvision ssd300_vgg16, batch 8 ({torch.get_num_threads()} threads): {torch_s:.2f} "
          f"s/step, {8 / torch_s:.2f} images/s; ssd_jax is {torch_s / ssd_s:.2f}x its speed")


if __name__ == "__main__":
  main()
