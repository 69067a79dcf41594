"""Evaluation batches and their detections -> the per-image lists that ``voc.evaluate`` and
``coco.evaluate`` take, in pixels of the original images."""

import numpy as np

# Per image: (boxes [N, 4] xyxy pixels, scores [N], labels [N] in 1..C-1).
ImageDetections = tuple[np.ndarray, np.ndarray, np.ndarray]
# Per image: (boxes [M, 4] xyxy pixels, labels [M] in 1..C-1, difficult [M] bool).
ImageGroundTruth = tuple[np.ndarray, np.ndarray, np.ndarray]


class Collector:
  """Collects evaluation batches and their detections as per-image lists in original pixels.

  ``detections`` and ``ground_truths`` are what ``voc.evaluate`` and ``coco.evaluate`` take;
  ``indices`` (each image's position in the split) and ``image_sizes`` ((height, width)) go with
  them. Images whose ``valid`` flag is False (padding) are skipped. It keeps what it is given, in
  that order: ``evaluate.collect`` gathers every process's rows and orders them by index first.
  """

  def __init__(self):
    self.detections: list[ImageDetections] = []
    self.ground_truths: list[ImageGroundTruth] = []
    self.indices: list[int] = []
    self.image_sizes: list[tuple[int, int]] = []

  @property
  def num_images(self) -> int:
    return len(self.detections)

  def add_batch(self, batch: dict) -> None:
    """Adds one evaluation batch (numpy or device arrays) with its detections.

    ``batch``: the input pipeline's ``boxes`` [B, M, 4] xyxy in [0, 1], ``labels`` [B, M],
    ``mask`` [B, M], ``difficult`` [B, M], ``index`` [B], ``size`` [B, 2] (original height,
    width), ``valid`` [B]; and ``postprocess.detect``'s outputs as ``det_boxes`` [B, K, 4] xyxy in
    [0, 1], ``det_scores`` [B, K], ``det_classes`` [B, K], ``det_valid`` [B, K].
    """
    batch = {key: np.asarray(value) for key, value in batch.items()}
    for i in np.flatnonzero(batch["valid"]):
      height, width = (int(v) for v in batch["size"][i])
      # The data sources divided annotation pixels by (width, height): multiplying back gives
      # the annotation's own numbers (VOC's 1-based inclusive coordinates included).
      scale = np.array([width, height, width, height], np.float64)
      mask = batch["mask"][i].astype(bool)
      self.ground_truths.append((batch["boxes"][i][mask].astype(np.float64) * scale,
                                 batch["labels"][i][mask].astype(int),
                                 batch["difficult"][i][mask].astype(bool)))
      found = batch["det_valid"][i].astype(bool)
      self.detections.append((batch["det_boxes"][i][found].astype(np.float64) * scale,
                              batch["det_scores"][i][found].astype(np.float64),
                              batch["det_classes"][i][found].astype(int)))
      self.indices.append(int(batch["index"][i]))
      self.image_sizes.append((height, width))
