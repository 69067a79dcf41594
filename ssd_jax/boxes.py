"""Box formats, pairwise IoU and the SSD offset encoding.

Conventions (see DESIGN.md): boxes are ``xyxy`` = (x_min, y_min, x_max, y_max) or ``cxcywh`` =
(centre x, centre y, width, height), both in image-relative units [0, 1]. Every function works
on arrays of shape ``[..., 4]`` and is jit- and vmap-compatible.
"""

from typing import Sequence

import jax.numpy as jnp

Variances = Sequence[float]
DEFAULT_VARIANCES = (0.1, 0.2)


def _check_boxes(name: str, boxes: jnp.ndarray) -> None:
  """Fails at trace time with a clear message unless ``boxes`` is a float [..., 4] array."""
  if boxes.ndim < 1 or boxes.shape[-1] != 4:
    raise ValueError(f"{name}: expected shape [..., 4], got {tuple(boxes.shape)}")
  if not jnp.issubdtype(boxes.dtype, jnp.floating):
    raise TypeError(f"{name}: expected a floating dtype, got {boxes.dtype}")


def xyxy_to_cxcywh(boxes: jnp.ndarray) -> jnp.ndarray:
  """[..., 4] xyxy -> [..., 4] cxcywh."""
  _check_boxes("boxes", boxes)
  mins, maxs = boxes[..., :2], boxes[..., 2:]
  return jnp.concatenate([(mins + maxs) / 2, maxs - mins], axis=-1)


def cxcywh_to_xyxy(boxes: jnp.ndarray) -> jnp.ndarray:
  """[..., 4] cxcywh -> [..., 4] xyxy."""
  _check_boxes("boxes", boxes)
  centres, sizes = boxes[..., :2], boxes[..., 2:]
  return jnp.concatenate([centres - sizes / 2, centres + sizes / 2], axis=-1)


def area(boxes: jnp.ndarray) -> jnp.ndarray:
  """[..., 4] xyxy -> [...] area; inverted boxes count as zero area."""
  sizes = jnp.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
  return sizes[..., 0] * sizes[..., 1]


def iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Pairwise IoU of [N, 4] and [M, 4] xyxy boxes -> [N, M].

  A pair whose union is empty (two zero-area boxes) has IoU 0, never NaN.
  """
  _check_boxes("a", a)
  _check_boxes("b", b)
  if a.ndim != 2 or b.ndim != 2:
    raise ValueError(f"iou: expected [N, 4] and [M, 4], got {a.shape} and {b.shape}")
  # One coordinate at a time ([N, 1] against [1, M]) rather than [N, M, 2] corner pairs: the
  # same values, and onnxruntime runs it twice as fast (its broadcasting Min/Max are slow).
  a_x1, a_y1, a_x2, a_y2 = (a[:, i, None] for i in range(4))
  b_x1, b_y1, b_x2, b_y2 = (b[None, :, i] for i in range(4))
  width = jnp.maximum(jnp.minimum(a_x2, b_x2) - jnp.maximum(a_x1, b_x1), 0.0)
  height = jnp.maximum(jnp.minimum(a_y2, b_y2) - jnp.maximum(a_y1, b_y1), 0.0)
  intersection = width * height  # [N, M]
  union = area(a)[:, None] + area(b)[None, :] - intersection
  # A zero union means both boxes are empty: their IoU is defined as 0.
  return jnp.where(union > 0, intersection / jnp.where(union > 0, union, 1.0), 0.0)


def encode(boxes_xyxy: jnp.ndarray, priors_cxcywh: jnp.ndarray,
           variances: Variances = DEFAULT_VARIANCES) -> jnp.ndarray:
  """Encodes [..., 4] xyxy boxes as SSD offsets against [..., 4] cxcywh priors.

  offsets = ((cx - pcx) / (pw * v0), (cy - pcy) / (ph * v0), log(w / pw) / v1, log(h / ph) / v1).
  Boxes of zero width or height give -inf size offsets; callers encode only matched boxes.
  """
  _check_boxes("boxes_xyxy", boxes_xyxy)
  _check_boxes("priors_cxcywh", priors_cxcywh)
  boxes = xyxy_to_cxcywh(boxes_xyxy)
  centre = (boxes[..., :2] - priors_cxcywh[..., :2]) / (priors_cxcywh[..., 2:] * variances[0])
  size = jnp.log(boxes[..., 2:] / priors_cxcywh[..., 2:]) / variances[1]
  return jnp.concatenate([centre, size], axis=-1)


def decode(offsets: jnp.ndarray, priors_cxcywh: jnp.ndarray,
           variances: Variances = DEFAULT_VARIANCES) -> jnp.ndarray:
  """Decodes [..., 4] SSD offsets against [..., 4] cxcywh priors -> [..., 4] xyxy boxes."""
  _check_boxes("offsets", offsets)
  _check_boxes("priors_cxcywh", priors_cxcywh)
  centres = priors_cxcywh[..., :2] + offsets[..., :2] * variances[0] * priors_cxcywh[..., 2:]
  sizes = priors_cxcywh[..., 2:] * jnp.exp(offsets[..., 2:] * variances[1])
  return cxcywh_to_xyxy(jnp.concatenate([centres, sizes], axis=-1))
