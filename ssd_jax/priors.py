"""Default boxes ("priors") of SSD, in the order the heads emit them.

Order (DESIGN.md): feature map by feature map, row-major over cells (y, then x), then per cell the
min-size square, the sqrt(min * max) square, then for each aspect ratio r the pair (r, 1/r) with
w = s * sqrt(r), h = s / sqrt(r). Centres sit at ((x + 0.5) * step, (y + 0.5) * step) / image_size,
as in Caffe's PriorBox with offset 0.5. Output boxes are cxcywh in [0, 1] image units.

These are plain numpy: priors are constants computed once on the host and closed over by jit.
"""

import math
from typing import Sequence

import ml_collections
import numpy as np


def cell_boxes(min_size: float, max_size: float, aspect_ratios: Sequence[float]) -> list[tuple[float, float]]:
  """(w, h) in pixels of the boxes of one cell, in head order: 2 + 2 * len(aspect_ratios) boxes."""
  sizes = [(min_size, min_size)]
  big = math.sqrt(min_size * max_size)
  sizes.append((big, big))
  for ratio in aspect_ratios:
    if ratio <= 0 or ratio == 1:
      raise ValueError(f"aspect_ratios: expected ratios > 0 other than 1 (1 is implicit), got {ratio}")
    root = math.sqrt(ratio)
    sizes += [(min_size * root, min_size / root), (min_size / root, min_size * root)]
  return sizes


def boxes_per_cell(aspect_ratios: Sequence[Sequence[float]]) -> list[int]:
  """Boxes per cell for each feature map, e.g. [4, 6, 6, 6, 4, 4] for SSD300."""
  return [2 + 2 * len(ratios) for ratios in aspect_ratios]


def generate(image_size: int, feature_sizes: Sequence[int], steps: Sequence[float],
             min_sizes: Sequence[float], max_sizes: Sequence[float],
             aspect_ratios: Sequence[Sequence[float]], clip: bool = False,
             truncate_sizes: bool = False) -> np.ndarray:
  """All priors of a square input of ``image_size`` pixels -> float32 [P, 4] cxcywh in [0, 1].

  Sizes and steps are in pixels (the explicit form of the released Caffe models).
  ``clip`` clamps w and h to [0, 1], as torchvision's DefaultBoxGenerator does (needed for its
  converted weights); centres stay where they are, even those past the image edge (e.g. SSD300's
  10x10 map with step 32 puts its last centres at 1.01).
  ``truncate_sizes`` rounds each min/max size down to whole pixels before use, as Caffe's PriorBox
  layer does (``int min_size_ = min_sizes_[s]``): SSD512's 35.84 becomes 35, and the extra box
  sqrt(35 * 76). The released SSD512 models were trained so; SSD300's sizes are whole already.
  """
  lengths = {len(feature_sizes), len(steps), len(min_sizes), len(max_sizes), len(aspect_ratios)}
  if len(lengths) != 1:
    raise ValueError("priors: feature_sizes, steps, min_sizes, max_sizes and aspect_ratios must "
                     f"have one entry per feature map, got lengths {sorted(lengths)}")
  if truncate_sizes:
    min_sizes, max_sizes = [math.floor(s) for s in min_sizes], [math.floor(s) for s in max_sizes]
  levels = []
  for size, step, min_size, max_size, ratios in zip(
      feature_sizes, steps, min_sizes, max_sizes, aspect_ratios):
    centres = (np.arange(size, dtype=np.float64) + 0.5) * step / image_size
    cy, cx = np.meshgrid(centres, centres, indexing="ij")  # [S, S], y major
    wh = np.asarray(cell_boxes(min_size, max_size, ratios), np.float64) / image_size  # [K, 2]
    xy = np.stack([cx, cy], axis=-1).reshape(-1, 1, 2)  # [S*S, 1, 2]
    level = np.concatenate(np.broadcast_arrays(xy, wh[None]), axis=-1)  # [S*S, K, 4]
    levels.append(level.reshape(-1, 4))
  priors = np.concatenate(levels, axis=0)
  if clip:
    priors[:, 2:] = np.clip(priors[:, 2:], 0.0, 1.0)
  return priors.astype(np.float32)


def paper_scales(num_maps: int, s_min: float = 0.2, s_max: float = 0.9) -> list[float]:
  """The paper's scales s_k = s_min + (s_max - s_min) / (m - 1) * (k - 1), k = 1..m+1.

  Entry m+1 extends the same progression; it sizes the extra sqrt(s_m * s_{m+1}) box of the last
  map, which the paper leaves open.
  """
  if num_maps < 2:
    raise ValueError(f"paper_scales: num_maps must be >= 2, got {num_maps}")
  step = (s_max - s_min) / (num_maps - 1)
  return [s_min + step * k for k in range(num_maps + 1)]


def sizes_from_scales(image_size: int, scales: Sequence[float]) -> tuple[list[float], list[float]]:
  """Scales [m+1] -> (min_sizes, max_sizes) in pixels, min_k = s_k, max_k = s_{k+1}."""
  pixels = [s * image_size for s in scales]
  return pixels[:-1], pixels[1:]


def caffe_sizes(image_size: int, num_maps: int, min_ratio: int, max_ratio: int,
                first_ratio: int) -> tuple[list[float], list[float]]:
  """Min/max sizes in pixels exactly as the released ``ssd_pascal.py`` scripts compute them.

  They apply the paper's formula in whole percent, with the step rounded down, to all maps but the
  first; the first (conv4_3) gets ``first_ratio`` percent and a max size of ``min_ratio`` percent.
  SSD300 VOC (20, 90, 10) -> 30, 60, 111, 162, 213, 264 / 60, 111, 162, 213, 264, 315;
  SSD512 VOC (``ssd_pascal512``: 15, 90, 7) -> 35.84, 76.8, 153.6, 230.4, 307.2, 384, 460.8 /
  76.8, ..., 537.6; SSD512 COCO (10, 90, 4) -> 20.48, 51.2, 133.12, ..., 460.8 / 51.2, ..., 542.72.
  """
  step = (max_ratio - min_ratio) // (num_maps - 2)
  ratios = [min_ratio + step * k for k in range(num_maps - 1)]
  min_sizes = [image_size * first_ratio / 100] + [image_size * r / 100 for r in ratios]
  max_sizes = [image_size * min_ratio / 100] + [image_size * (r + step) / 100 for r in ratios]
  return min_sizes, max_sizes


def from_config(config: ml_collections.ConfigDict) -> np.ndarray:
  """Priors [P, 4] cxcywh of an experiment config (``config.model.image_size``, ``config.priors``)."""
  p = config.priors
  return generate(config.model.image_size, p.feature_sizes, p.steps, p.min_sizes, p.max_sizes,
                  p.aspect_ratios, clip=p.clip, truncate_sizes=p.truncate_sizes)
