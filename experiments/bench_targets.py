"""Benchmark: matching + encoding and the MultiBox loss with mining, jitted JAX vs plain numpy.

Workload (issue 2): a batch of 32 images x 8732 SSD300 priors x 50 padded ground-truth boxes
(20 valid), 21 classes; matching with both rules of ``ssd_jax.matching.RULES`` (issue 10), on
random boxes and on images where every valid box is one of 5 boxes repeated (near-duplicates make
Caffe's greedy loop refresh ground truths whose best prior was taken). Baselines measured in the
same run:
- a straightforward vectorised numpy implementation of the same work (per image, as a data
  loader would do it), and
- for the mining step, the argsort-of-argsort selection the reference ports use, in jitted JAX,
  next to our bisection top-k.

With ``--step_batch B`` it also times an SSD300-VGG16 train step at batch B (on
``train_step.synthetic_batch``, as bench_train does) and prints each rule's matching on the first B images of the workload
as a share of that step.

Run: python experiments/bench_targets.py [--repeats 20] [--step_batch 8]
"""

import argparse
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import config_utils, losses, matching, parallel, priors, train_step

import timing  # experiments/timing.py, beside this script

BATCH, MAX_BOXES, VALID, CLASSES = 32, 50, 20, 21


def numpy_match(gt, labels, mask, prior_boxes, threshold=0.5, variances=(0.1, 0.2)):
  """Vectorised numpy matching + encoding of one image (ssd_jax.matching's "torchvision" rule)."""
  gt, labels = gt[mask], labels[mask]
  p_xyxy = np.concatenate([prior_boxes[:, :2] - prior_boxes[:, 2:] / 2,
                           prior_boxes[:, :2] + prior_boxes[:, 2:] / 2], 1)
  lt = np.maximum(gt[:, None, :2], p_xyxy[None, :, :2])
  rb = np.minimum(gt[:, None, 2:], p_xyxy[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), -1)
  area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), -1)
  overlaps = inter / (area(gt)[:, None] + area(p_xyxy)[None] - inter)
  best_gt, best_overlap = overlaps.argmax(0), overlaps.max(0)
  for g, p in enumerate(overlaps.argmax(1)):
    best_gt[p], best_overlap[p] = g, 2.0
  positive = best_overlap >= threshold
  matched = gt[best_gt]
  centre = ((matched[:, :2] + matched[:, 2:]) / 2 - prior_boxes[:, :2]) / (prior_boxes[:, 2:] * variances[0])
  size = np.log((matched[:, 2:] - matched[:, :2]) / prior_boxes[:, 2:]) / variances[1]
  loc = np.where(positive[:, None], np.concatenate([centre, size], 1), 0)
  return loc, np.where(positive, labels[best_gt], 0)


def numpy_loss(loc_pred, logits, loc_t, cls_t, ratio=3):
  """Vectorised numpy MultiBox loss with sort-based hard-negative mining."""
  positive = cls_t > 0
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  ce = -np.take_along_axis(log_p, cls_t[..., None], -1)[..., 0]
  mining = np.where(positive, -np.inf, ce)
  rank = np.argsort(np.argsort(-mining, axis=1, kind="stable"), axis=1)
  num_pos = positive.sum(1, keepdims=True)
  negative = rank < np.minimum(ratio * num_pos, positive.shape[1] - num_pos)
  diff = np.abs(loc_pred - loc_t)
  smooth = np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5).sum(-1)
  return (ce[positive | negative].sum() + smooth[positive].sum()) / max(positive.sum(), 1)


def argsort_of_argsort_mask(values, k):
  """The reference ports' selection: rank every entry by two full sorts per row."""
  rank = jnp.argsort(jnp.argsort(-values, axis=1, stable=True), axis=1)
  return rank < k[:, None]


def crowded(gt, rng):
  """The same batch with each valid box replaced by one of 5 of its image's boxes, +-1 px."""
  gt = gt.copy()
  source = rng.integers(0, 5, (BATCH, VALID))
  gt[:, :VALID] = np.take_along_axis(gt[:, :5], source[..., None], axis=1)
  gt[:, 5:VALID] += rng.choice([-1, 0, 1], (BATCH, VALID - 5, 4)) / 300
  return np.clip(gt, 0, 1).astype(np.float32)


def make_inputs(prior_boxes):
  rng = np.random.default_rng(0)
  lo = rng.uniform(0, 0.8, (BATCH, MAX_BOXES, 2))
  gt = np.concatenate([lo, lo + rng.uniform(0.05, 0.2, (BATCH, MAX_BOXES, 2))], -1).astype(np.float32)
  labels = rng.integers(1, CLASSES, (BATCH, MAX_BOXES)).astype(np.int32)
  mask = np.broadcast_to(np.arange(MAX_BOXES) < VALID, (BATCH, MAX_BOXES)).copy()
  num_priors = len(prior_boxes)
  loc_pred = rng.normal(size=(BATCH, num_priors, 4)).astype(np.float32)
  logits = rng.normal(size=(BATCH, num_priors, CLASSES)).astype(np.float32)
  return gt, labels, mask, loc_pred, logits


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--step_batch", type=int, default=0,
                      help="also time an SSD300 train step at this batch (0: skip)")
  args = parser.parse_args()
  config = config_utils.load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "ssd300.py"))
  prior_boxes = priors.from_config(config)
  gt, labels, mask, loc_pred, logits = make_inputs(prior_boxes)

  jax_match = jax.jit(matching.match_batch, static_argnames="rule")
  crowded_gt = crowded(gt, np.random.default_rng(1))
  t_rules = {(rule, name): timing.median_seconds(
      lambda: jax_match(boxes, labels, mask, prior_boxes, rule=rule), args.repeats)
      for rule in matching.RULES for name, boxes in (("random", gt), ("crowded", crowded_gt))}
  t_match_np = timing.median_seconds(lambda: [numpy_match(*x, prior_boxes) for x in zip(gt, labels, mask)],
                      max(3, args.repeats // 4))

  loc_t, cls_t = (np.asarray(x) for x in jax_match(gt, labels, mask, prior_boxes, rule="torchvision"))
  jax_loss = jax.jit(lambda *a: losses.multibox_loss(*a)[0])
  t_loss = timing.median_seconds(lambda: jax_loss(loc_pred, logits, loc_t, cls_t), args.repeats)
  t_loss_np = timing.median_seconds(lambda: numpy_loss(loc_pred, logits, loc_t, cls_t), max(3, args.repeats // 4))
  np.testing.assert_allclose(jax_loss(loc_pred, logits, loc_t, cls_t),
                             numpy_loss(loc_pred, logits, loc_t, cls_t), rtol=1e-4)

  mining = np.where(cls_t > 0, -np.inf, np.abs(logits[..., 0])).astype(np.float32)
  k = np.minimum(3 * (cls_t > 0).sum(1), (cls_t == 0).sum(1)).astype(np.int32)
  ours, double_sort = jax.jit(losses.top_k_mask), jax.jit(argsort_of_argsort_mask)
  np.testing.assert_array_equal(ours(mining, k), double_sort(mining, k))
  t_topk = timing.median_seconds(lambda: ours(mining, k), args.repeats)
  t_double = timing.median_seconds(lambda: double_sort(mining, k), args.repeats)

  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, python {sys.version.split()[0]}")
  print(f"workload: batch {BATCH} x {len(prior_boxes)} priors x {MAX_BOXES} boxes ({VALID} valid)")
  print(f"{'step':40s} {'ssd_jax ms':>11s} {'baseline ms':>12s} {'speed-up':>9s}  baseline")
  rows = [(f"matching + encoding, {rule}, {name}", t_rules[rule, name], t_match_np,
           "numpy torchvision rule, per image") for rule, name in t_rules]
  rows += [("multibox loss with mining", t_loss, t_loss_np, "numpy, argsort-of-argsort"),
           ("hard-negative selection only", t_topk, t_double, "jax argsort-of-argsort")]
  for name, ours_s, base_s, baseline in rows:
    print(f"{name:40s} {ours_s * 1e3:11.2f} {base_s * 1e3:12.2f} {base_s / ours_s:8.1f}x  {baseline}")

  if args.step_batch:
    step_share(config, args.step_batch, gt, labels, mask, prior_boxes, jax_match, args.repeats)


def step_share(config, batch_size, gt, labels, mask, prior_boxes, jax_match, repeats):
  """Prints an SSD300 train step's seconds and each matching rule's share of it."""
  config = config.copy_and_resolve_references()
  config.data.batch_size = batch_size
  mesh = parallel.create_mesh(config)
  _, state, step = train_step.make_step(config, mesh)
  batch = parallel.global_batch(train_step.synthetic_batch(config), mesh)
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], batch)
    return metrics["loss"]
  t_step = timing.median_seconds(run, 2)
  print(f"SSD300-VGG16 train step, batch {batch_size}, rule {config.matching.rule}: {t_step:.2f} s")
  for rule in matching.RULES:
    t = timing.median_seconds(lambda: jax_match(gt[:batch_size], labels[:batch_size],
                                                mask[:batch_size], prior_boxes, rule=rule), repeats)
    print(f"matching + encoding, {rule}, batch {batch_size}: {t * 1e3:.2f} ms = "
          f"{100 * t / t_step:.2f}% of the step")


if __name__ == "__main__":
  main()
