"""SSD300 on VGG16, the paper's main model (Liu et al. 2016; Caffe `ssd_pascal.py`).

Variants: `--config=configs/ssd300.py` (VOC prior sizes), `--config=configs/ssd300.py:coco`
(the COCO prior sizes of Caffe's `ssd_coco.py`: min 21..261, max 45..315).
Reference result: VOC07+12 trainval -> VOC07 test mAP 77.2 with zoom-out augmentation.
"""

import ml_collections

# Min/max prior sizes in pixels of the released Caffe models, per dataset. Derivable with
# `ssd_jax.priors.caffe_sizes(300, 6, min_ratio, 90, first_ratio)`: VOC (20, 90, 10), COCO (15, 90, 7).
_PRIOR_SIZES = {
    "voc": ((30, 60, 111, 162, 213, 264), (60, 111, 162, 213, 264, 315)),
    "coco": ((21, 45, 99, 153, 207, 261), (45, 99, 153, 207, 261, 315)),
}
_NUM_CLASSES = {"voc": 21, "coco": 81}  # background included


def get_config(variant: str = "voc") -> ml_collections.ConfigDict:
  """Returns the SSD300 config; ``variant`` in {"voc", "coco"} picks prior sizes and classes."""
  if variant not in _PRIOR_SIZES:
    raise ValueError(f"configs/ssd300.py: unknown variant {variant!r}; known: {sorted(_PRIOR_SIZES)}")
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = "ssd300_vgg16"
  config.model.image_size = 300
  config.model.num_classes = _NUM_CLASSES[variant]
  config.model.dtype = "float32"  # compute dtype ("bfloat16" for mixed precision); params float32
  config.model.width = 1.0  # channel multiplier; < 1 only for tiny test models
  # The model takes (x - input_mean) / input_std of RGB images in [0, 1]
  # (`ssd_jax.models.normalize_images`). These are the Caffe VGG16 numbers (mean-subtracted 0-255
  # pixels, in RGB order), which torchvision's VGG16 IMAGENET1K_FEATURES and ssd300_vgg16 use.
  config.model.input_mean = (0.48235, 0.45882, 0.40784)
  config.model.input_std = (1 / 255, 1 / 255, 1 / 255)

  min_sizes, max_sizes = _PRIOR_SIZES[variant]
  config.priors = ml_collections.ConfigDict()
  config.priors.feature_sizes = (38, 19, 10, 5, 3, 1)
  config.priors.steps = (8, 16, 32, 64, 100, 300)
  config.priors.min_sizes = min_sizes
  config.priors.max_sizes = max_sizes
  config.priors.aspect_ratios = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
  config.priors.clip = False

  config.matching = ml_collections.ConfigDict()
  config.matching.iou_threshold = 0.5
  config.matching.variances = (0.1, 0.2)

  config.loss = ml_collections.ConfigDict()
  config.loss.neg_pos_ratio = 3
  config.loss.alpha = 1.0
  return config
