"""Detection evaluation: the per-image detections and ground truth of eval batches (``collector``),
VOC AP (``voc``), COCO AP through pycocotools (``coco``), precision/recall plots (``plots``).
Import the submodule you need: ``coco`` and ``plots`` pull in pycocotools and matplotlib."""

METRICS = ("voc07", "voc", "coco")  # config.eval.metric: VOC07 11-point AP, VOC area AP, COCO
