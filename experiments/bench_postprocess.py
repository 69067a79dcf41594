"""Benchmark: SSD detection output (decode, per-class NMS, top 200), jitted JAX vs baselines.

Workload: a batch of 8 images x 8732 SSD300 priors x 21 classes, Caffe's settings (score > 0.01,
top 400 per class, NMS IoU 0.45, 200 per image), on whatever device JAX picks. Two inputs:
- dense: random logits, every class score above the threshold (the worst case: 400 candidates
  for each of the 20 classes of every image);
- sparse: background logits raised by 8, as from a trained model: a few candidates per class.
Baselines in the same run:
- torchvision: SSD.postprocess_detections' algorithm (per image: decode, clip, softmax, per-class
  threshold and top-k, ``torchvision.ops.batched_nms``, keep 200), when torchvision is installed;
  timed with 1 thread and with all cores, the faster counts (on a small shared VM 1 thread wins);
- numpy: the same per image and class, with the classic vectorised greedy NMS (py-faster-rcnn).

Run: python experiments/bench_postprocess.py [--repeats 10]
"""

import argparse
import os
import platform
import sys

import jax
import numpy as np

from ssd_jax import config_utils, postprocess, priors

import timing  # experiments/timing.py, beside this script

BATCH, CLASSES = 8, 21
SCORE, NMS_IOU, TOP_K, KEEP = 0.01, 0.45, 400, 200


def numpy_decode(loc, prior_boxes, variances=(0.1, 0.2)):
  """[P, 4] offsets, [P, 4] cxcywh priors -> [P, 4] xyxy clipped to [0, 1]."""
  centres = prior_boxes[:, :2] + loc[:, :2] * variances[0] * prior_boxes[:, 2:]
  sizes = prior_boxes[:, 2:] * np.exp(loc[:, 2:] * variances[1])
  return np.clip(np.concatenate([centres - sizes / 2, centres + sizes / 2], 1), 0, 1)


def numpy_nms(boxes, scores, threshold):
  """py-faster-rcnn's greedy NMS of boxes already in score order -> kept positions."""
  x0, y0, x1, y1 = boxes.T
  areas = (x1 - x0) * (y1 - y0)
  order, keep = np.arange(len(boxes)), []
  while order.size:
    i, rest = order[0], order[1:]
    keep.append(i)
    iw = np.maximum(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0)
    ih = np.maximum(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0)
    inter = iw * ih
    union = areas[i] + areas[rest] - inter
    order = rest[inter <= threshold * union]
  return np.array(keep, int)


def numpy_detect(loc, logits, prior_boxes):
  """Per image: list of (boxes [K, 4], scores [K], classes [K])."""
  out = []
  for image_loc, image_logits in zip(loc, logits):
    boxes = numpy_decode(image_loc, prior_boxes)
    shifted = np.exp(image_logits - image_logits.max(-1, keepdims=True))
    scores = shifted / shifted.sum(-1, keepdims=True)
    found = []
    for c in range(1, scores.shape[1]):
      candidates = np.flatnonzero(scores[:, c] > SCORE)
      candidates = candidates[np.argsort(-scores[candidates, c], kind="stable")][:TOP_K]
      kept = candidates[numpy_nms(boxes[candidates], scores[candidates, c], NMS_IOU)]
      found.append((kept, scores[kept, c], np.full(len(kept), c)))
    kept, kept_scores, classes = (np.concatenate(x) for x in zip(*found))
    best = np.argsort(-kept_scores, kind="stable")[:KEEP]
    out.append((boxes[kept[best]], kept_scores[best], classes[best]))
  return out


def torchvision_detect(loc, logits, prior_boxes):
  """torchvision SSD.postprocess_detections' steps on torch tensors (boxes in [0, 1])."""
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.ops import batched_nms  # pylint: disable=import-outside-toplevel
  variances = torch.tensor([0.1, 0.1, 0.2, 0.2])
  out = []
  with torch.no_grad():
    all_scores = torch.softmax(logits, dim=-1)
    for image_loc, scores in zip(loc, all_scores):
      offsets = image_loc * variances
      centres = prior_boxes[:, :2] + offsets[:, :2] * prior_boxes[:, 2:]
      sizes = prior_boxes[:, 2:] * torch.exp(offsets[:, 2:])
      boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1).clamp(0, 1)
      image_boxes, image_scores, image_labels = [], [], []
      for label in range(1, scores.shape[1]):
        score = scores[:, label]
        keep = score > SCORE
        score, box = score[keep], boxes[keep]
        score, idxs = score.topk(min(TOP_K, score.numel()))
        image_boxes.append(box[idxs])
        image_scores.append(score)
        image_labels.append(torch.full_like(score, label, dtype=torch.int64))
      image_boxes, image_scores = torch.cat(image_boxes), torch.cat(image_scores)
      image_labels = torch.cat(image_labels)
      keep = batched_nms(image_boxes, image_scores, image_labels, NMS_IOU)[:KEEP]
      out.append((image_boxes[keep], image_scores[keep], image_labels[keep]))
  return out


def check_agreement(ours, reference):
  """Fails loudly unless both give the same scores and classes per image."""
  _, scores, classes, valid = (np.asarray(x) for x in ours)
  for i, (_, ref_scores, ref_classes) in enumerate(reference):
    same = (valid[i].sum() == len(ref_scores)
            and np.allclose(scores[i][valid[i]], ref_scores, atol=1e-6)
            and np.array_equal(classes[i][valid[i]], ref_classes))
    if not same:
      raise AssertionError(f"image {i}: ssd_jax and numpy detections differ")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  config = config_utils.load_config(os.path.join(os.path.dirname(__file__), "..", "configs",
                                                 "ssd300.py"))
  prior_boxes = priors.from_config(config)
  rng = np.random.default_rng(0)
  loc = rng.normal(0, 1, size=(BATCH, len(prior_boxes), 4)).astype(np.float32)
  logits = rng.normal(0, 1, size=(BATCH, len(prior_boxes), CLASSES)).astype(np.float32)
  sparse = logits.copy()
  sparse[..., 0] += 8.0
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import torchvision  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    torch = None
    print("torchvision is not installed: the torchvision baseline is skipped")

  print(f"python {sys.version.split()[0]}, jax {jax.__version__} on {jax.devices()[0].device_kind}"
        f", {platform.machine()}, {os.cpu_count()} cpus"
        + (f", torch {torch.__version__}" if torch else ""))
  print(f"batch {BATCH} x {len(prior_boxes)} priors x {CLASSES} classes, median of {args.repeats}")
  print(f"{'input':8s} {'ssd_jax ms':>10s} {'numpy ms':>9s} {'speed-up':>8s}"
        + (f" {'torchvision ms':>14s} {'speed-up':>8s}" if torch else ""))
  device_priors = jax.device_put(prior_boxes)
  for name, image_logits in (("dense", logits), ("sparse", sparse)):
    device_loc, device_logits = jax.device_put(loc), jax.device_put(image_logits)
    ours = timing.median_seconds(lambda: postprocess.detect(device_loc, device_logits, device_priors),
                  args.repeats)
    reference = timing.median_seconds(lambda: numpy_detect(loc, image_logits, prior_boxes), args.repeats)
    line = f"{name:8s} {ours * 1e3:10.2f} {reference * 1e3:9.2f} {reference / ours:7.1f}x"
    check_agreement(postprocess.detect(device_loc, device_logits, device_priors),
                    numpy_detect(loc, image_logits, prior_boxes))
    if torch:
      tensors = [torch.from_numpy(x) for x in (loc, image_logits, prior_boxes)]
      timings = {}
      for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        timings[threads] = timing.median_seconds(lambda: torchvision_detect(*tensors), args.repeats)
      threads, baseline = min(timings.items(), key=lambda item: item[1])
      line += f" {baseline * 1e3:14.2f} {baseline / ours:7.1f}x  ({threads} torch thread(s))"
    print(line)


if __name__ == "__main__":
  main()
