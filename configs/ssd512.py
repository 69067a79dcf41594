"""SSD512 on VGG16 (Caffe `ssd_pascal512.py`): seven source maps, 24564 priors.

Variants: `--config=configs/ssd512.py` (VOC), `--config=configs/ssd512.py:coco`.
Initialisation: the ImageNet VGG16 of configs/ssd300.py (torchvision's `vgg16`
IMAGENET1K_FEATURES state_dict or ssd.pytorch's `vgg16_reducedfc.pth`; README, Experiments).
Command: `python -m ssd_jax.main --config=configs/ssd512.py --workdir=<dir>
  --config.train.init_from=/path/to/vgg16_features-amdegroot-88682ab5.pth`.
Reference result: VOC07+12 trainval -> VOC07 test mAP 79.8 with zoom-out augmentation.
Priors: the released models' sizes per dataset (VOC 35.84..460.8 / 76.8..537.6, COCO 20.48..460.8
/ 51.2..542.72 pixels), truncated to whole pixels as Caffe's PriorBox layer does
(`priors.truncate_sizes`, needed by converted Caffe weights; False uses the fractional sizes).
Matching and augmentation as configs/ssd300.py (Caffe's).
"""

import ml_collections

from ssd_jax import config_utils, priors

# (min_ratio, max_ratio, first_ratio) of the released SSD512 models' prior sizes
# (`priors.caffe_sizes(512, 7, ...)`). VOC (`ssd_pascal512.py`: conv4_3 at 7 %, the rest 15..90 %):
# 35.84, 76.8, 153.6, 230.4, 307.2, 384, 460.8 / 76.8, ..., 537.6 pixels. COCO (the released
# COCO SSD512: 4 %, then 10..90 %): 20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8 / 51.2, ...,
# 542.72.
# The config keeps these as computed; `priors.truncate_sizes` (True, from configs/ssd300.py) makes
# the boxes use them rounded down to whole pixels (35, 76, ...) as Caffe's PriorBox layer does.
_CAFFE_RATIOS = {"voc": (15, 90, 7), "coco": (10, 90, 4)}


def get_config(variant: str = "voc") -> ml_collections.ConfigDict:
  """Returns the SSD512 config; ``variant`` in {"voc", "coco"} picks prior sizes and classes."""
  config = config_utils.sibling_config(__file__, "ssd300", variant)
  config.model.name = "ssd512_vgg16"
  config.model.image_size = 512
  min_sizes, max_sizes = priors.caffe_sizes(512, 7, *_CAFFE_RATIOS[variant])
  config.priors.feature_sizes = (64, 32, 16, 8, 4, 2, 1)
  config.priors.steps = (8, 16, 32, 64, 128, 256, 512)
  config.priors.min_sizes = tuple(min_sizes)
  config.priors.max_sizes = tuple(max_sizes)
  config.priors.aspect_ratios = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))
  return config
