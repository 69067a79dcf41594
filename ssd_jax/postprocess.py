"""SSD's detection output: decode, per-class greedy NMS, the best detections per image.

One jitted, batched function with static shapes (no host round trip), so it runs on any backend
and inside an evaluation step. The rules are Caffe's DetectionOutput layer's (DESIGN.md), except
for the first:
- decoded boxes are clipped to [0, 1] before NMS, as torchvision's postprocess_detections does.
  Caffe's DetectionOutput does not: it decodes with ``clip_bbox = false``, runs NMS on the
  unclipped boxes and clips only the boxes it writes to result files (``OutputBBox``);
- per class (background 0 excluded) a prior is a candidate when its softmax score is strictly
  greater than ``score_threshold`` (Caffe's and torchvision's ``score > threshold``), and only the
  ``pre_nms_top_k`` best candidates enter NMS;
- greedy NMS: a candidate is suppressed when its IoU with a kept, higher-ranked candidate of the
  same class is strictly greater than ``nms_iou_threshold``; classes never suppress each other;
- the ``max_detections`` best survivors of all classes are returned, by descending score.

Ties: within a class, candidates of equal score rank by ascending prior index (NMS order and the
``pre_nms_top_k`` cut); across classes, detections of equal score rank by ascending class, then
ascending prior index (output order and the ``max_detections`` cut).
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from ssd_jax import boxes as boxes_lib

Detections = tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]


def _gather(x: jnp.ndarray, indices: jnp.ndarray) -> jnp.ndarray:
  """Per image: x [B, N, ...], integer indices [B, ...] into axis 1 -> x[b][indices[b]].

  As one gather from the flattened batch rather than a batched gather (``take_along_axis``,
  vmap): the TF and TFLite converters cannot read gathers with batching dimensions.
  """
  batch, n = x.shape[:2]
  # An iota of the indices' own shape and no -1 in a reshape: jax2onnx cannot divide its
  # symbolic batch size, nor match the size of an arange over it to the batch.
  offsets = jax.lax.broadcasted_iota(indices.dtype, indices.shape, 0) * n
  return x.reshape((batch * n,) + x.shape[2:])[indices + offsets]


def class_nms(boxes: jnp.ndarray, scores: jnp.ndarray, score_threshold: float | jnp.ndarray,
              nms_iou_threshold: float | jnp.ndarray, top_k: int
              ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Greedy NMS of each class of each image.

  boxes [B, P, 4] xyxy, scores [B, N, P] (N classes) -> (indices [B, N, top_k] int32 of the best
  priors, best first and ties by lower index; their scores; keep [B, N, top_k] bool: a candidate
  that survived NMS). The loop runs over candidates for the whole batch at once, and everything
  it reads is carried, not closed over: jax2onnx converts it to one ONNX Loop this way.
  """
  candidate_scores, indices = jax.lax.top_k(scores, top_k)  # top_k puts lower indices first on ties
  candidate = candidate_scores > score_threshold  # [B, N, k]; the threshold cuts a prefix
  candidate_boxes = _gather(boxes, indices)  # [B, N, k, 4]
  # IoU is symmetric bit for bit (min/max and a commutative sum), so row i is also column i.
  iou = jax.vmap(jax.vmap(boxes_lib.iou))(candidate_boxes, candidate_boxes)
  suppresses = iou > nms_iou_threshold  # [B, N, k, k]

  def visit(i, state):
    # keep holds the final decisions for candidates before i and False from i on.
    keep, candidate, suppresses = state
    row = jax.lax.dynamic_index_in_dim(suppresses, i, axis=2, keepdims=False)  # [B, N, k]
    survives = (jax.lax.dynamic_index_in_dim(candidate, i, axis=2, keepdims=False)
                & ~jnp.any(keep & row, axis=-1))
    # Not keep.at[..., i].set: that lowers to a scatter, several times slower on CPU.
    return jax.lax.dynamic_update_index_in_dim(keep, survives, i, axis=2), candidate, suppresses

  keep, _, _ = jax.lax.fori_loop(0, top_k, visit,
                                 (jnp.zeros_like(candidate), candidate, suppresses))
  return indices, candidate_scores, keep


def _select_batch(boxes: jnp.ndarray, scores: jnp.ndarray, score_threshold, nms_iou_threshold,
                  pre_nms_top_k: int, max_detections: int) -> Detections:
  """boxes [B, P, 4] xyxy, scores [B, P, C] -> indices, scores, classes, valid, each [B, K]."""
  _, num_priors, num_classes = scores.shape
  top_k = min(pre_nms_top_k, num_priors)
  class_scores = jnp.swapaxes(scores[..., 1:], 1, 2)  # [B, C-1, P]
  indices, kept_scores, keep = class_nms(boxes, class_scores, score_threshold, nms_iou_threshold,
                                         top_k)  # [B, C-1, k]
  kept_scores = jnp.where(keep, kept_scores, -jnp.inf)  # the dropped rank last
  classes = jnp.broadcast_to(jnp.arange(1, num_classes, dtype=jnp.int32)[:, None],
                             indices.shape[1:])
  flat = [x.reshape(x.shape[0], -1) for x in (kept_scores, indices, keep)]  # class-major
  flat.insert(2, jnp.broadcast_to(classes.reshape(-1), flat[0].shape))
  # Fewer candidates than max_detections: pad with rows that are never valid.
  missing = max(max_detections - flat[0].shape[1], 0)
  fill = (-jnp.inf, 0, 0, False)
  flat = [jnp.pad(x, ((0, 0), (0, missing)), constant_values=v) for x, v in zip(flat, fill)]
  kept_scores, indices, classes, keep = flat
  # top_k puts the lower flat index first on ties: lower class, then (within a class, whose
  # candidates are in rank order) lower prior index.
  best_scores, best = jax.lax.top_k(kept_scores, max_detections)
  indices, classes, keep = (_gather(x, best) for x in (indices, classes, keep))
  return (jnp.where(keep, indices, 0), jnp.where(keep, best_scores, 0.0),
          jnp.where(keep, classes, 0), keep)


def select(boxes: jnp.ndarray, scores: jnp.ndarray, *, score_threshold=0.01,
           nms_iou_threshold=0.45, pre_nms_top_k: int = 400, max_detections: int = 200
           ) -> Detections:
  """Per-class NMS and the best detections of a batch of already decoded boxes and class scores.

  boxes [B, P, 4] xyxy, scores [B, P, C] (class 0 background) -> (prior indices [B, K] int32,
  scores [B, K], classes [B, K] int32 in 1..C-1, valid [B, K] bool) with K = max_detections,
  valid rows first by descending score; invalid rows hold index 0, score 0 and class 0.
  """
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(f"select: boxes must be [B, P, 4], got {boxes.shape}")
  if scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2] or scores.shape[-1] < 2:
    raise ValueError(f"select: scores must be [B, P, C>=2] matching boxes {boxes.shape}, "
                     f"got {scores.shape}")
  if pre_nms_top_k < 1 or max_detections < 1:
    raise ValueError(f"select: pre_nms_top_k ({pre_nms_top_k}) and max_detections "
                     f"({max_detections}) must be >= 1")
  return _select_batch(boxes, scores, score_threshold, nms_iou_threshold, pre_nms_top_k,
                       max_detections)


@functools.partial(jax.jit, static_argnames=("variances", "pre_nms_top_k", "max_detections"))
def detect(loc_pred: jnp.ndarray, cls_logits: jnp.ndarray, priors: jnp.ndarray, *,
           variances: Sequence[float] = boxes_lib.DEFAULT_VARIANCES, score_threshold=0.01,
           nms_iou_threshold=0.45, pre_nms_top_k: int = 400, max_detections: int = 200
           ) -> Detections:
  """SSD detections of a batch of head outputs.

  loc_pred [B, P, 4] offsets, cls_logits [B, P, C] (any float dtype; softmax in float32),
  priors [P, 4] cxcywh -> (boxes [B, K, 4] float32 xyxy in [0, 1], scores [B, K] float32,
  classes [B, K] int32 in 1..C-1, valid [B, K] bool), K = max_detections, valid rows first by
  descending score; invalid rows are zero boxes with score 0 and class 0. ``variances`` must be
  a tuple (it is static).
  """
  if loc_pred.ndim != 3 or cls_logits.ndim != 3 or loc_pred.shape[:2] != cls_logits.shape[:2]:
    raise ValueError(f"detect: expected loc_pred [B, P, 4] and cls_logits [B, P, C], got "
                     f"{loc_pred.shape} and {cls_logits.shape}")
  if priors.shape != (loc_pred.shape[1], 4):
    raise ValueError(f"detect: priors must be [{loc_pred.shape[1]}, 4], got {priors.shape}")
  decoded = boxes_lib.decode(loc_pred.astype(jnp.float32), priors.astype(jnp.float32), variances)
  decoded = jnp.clip(decoded, 0.0, 1.0)
  scores = jax.nn.softmax(cls_logits.astype(jnp.float32), axis=-1)
  indices, scores, classes, valid = select(
      decoded, scores, score_threshold=score_threshold, nms_iou_threshold=nms_iou_threshold,
      pre_nms_top_k=pre_nms_top_k, max_detections=max_detections)
  boxes = _gather(decoded, indices)
  return jnp.where(valid[..., None], boxes, 0.0), scores, classes, valid


def detect_args(config: ml_collections.ConfigDict) -> dict:
  """``detect``'s keyword arguments from a config: ``config.detection``'s thresholds and sizes
  and ``config.matching.variances``. The one place a config becomes detection settings (the
  jitted detector, the exported artifacts and their metadata all use it)."""
  d = config.detection
  return {"variances": tuple(config.matching.variances), "score_threshold": d.score_threshold,
          "nms_iou_threshold": d.nms_iou_threshold, "pre_nms_top_k": d.pre_nms_top_k,
          "max_detections": d.max_detections}
