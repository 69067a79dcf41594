"""SSD512 on VGG16 (Caffe `ssd_pascal512.py`): seven source maps, 24564 priors.

Variants: `--config=configs/ssd512.py` (VOC), `--config=configs/ssd512.py:coco`.
Reference result: VOC07+12 trainval -> VOC07 test mAP 79.8 with zoom-out augmentation.
"""

import ml_collections

from ssd_jax import config_utils

# Min/max prior sizes in pixels of the released SSD512 models (VOC and COCO use the same ones):
# `ssd_jax.priors.caffe_sizes(512, 7, min_ratio=10, max_ratio=90, first_ratio=4)`.
_MIN_SIZES = (20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8)
_MAX_SIZES = (51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72)


def get_config(variant: str = "voc") -> ml_collections.ConfigDict:
  """Returns the SSD512 config; ``variant`` in {"voc", "coco"} picks the number of classes."""
  config = config_utils.sibling_config(__file__, "ssd300", variant)
  config.model.name = "ssd512_vgg16"
  config.model.image_size = 512
  config.priors.feature_sizes = (64, 32, 16, 8, 4, 2, 1)
  config.priors.steps = (8, 16, 32, 64, 128, 256, 512)
  config.priors.min_sizes = _MIN_SIZES
  config.priors.max_sizes = _MAX_SIZES
  config.priors.aspect_ratios = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))
  return config
