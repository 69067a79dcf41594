"""torchvision's `ssd300_vgg16` (COCO_V1 weights: 25.1 box AP on COCO val2017), converted.

The SSD300-VGG16 architecture with torchvision's settings: 91 classes (index = COCO category
id, 1..90 with torchvision's "N/A" gaps; 0 = background), anchor scales 0.07, 0.15, 0.33, 0.51,
0.69, 0.87, 1.05 (21..315 pixels) with w, h clamped to [0, 1] (`priors.clip`), and its input
normalisation: GeneralizedRCNNTransform resizes to 300x300 and computes (x - mean) / std with
mean (0.48235, 0.45882, 0.40784), std 1/255. Its box coder's weights (10, 10, 5, 5) on
(dx, dy, dw, dh) are our variances (0.1, 0.2) on (cx, cy, w, h): same offsets, same order.
Initialisation: torchvision's whole `ssd300_vgg16` COCO_V1 state_dict
(ssd300_vgg16_coco-b556d3b4.pth, saved with torch.save on a machine with internet; README,
Experiments), converted on the fly.
Command: `python -m ssd_jax.main --config=configs/ssd300_torchvision_coco.py --workdir=<dir>
  --config.train.init_from=/path/to/ssd300_vgg16_coco-b556d3b4.pth` trains (fine-tunes) from it.
Or convert once, `python -m ssd_jax.convert --config=configs/ssd300_torchvision_coco.py
  --input=ssd300_vgg16_coco-b556d3b4.pth --output=/abs/path/ckpt`, and pass the folder as
`--config.train.init_from=/abs/path/ckpt` (`ssd_jax.checkpoint.load_weights` reads it).
"""

import ml_collections

from ssd_jax import config_utils

_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)


def get_config() -> ml_collections.ConfigDict:
  """SSD300-VGG16 with torchvision's COCO classes, priors and normalisation."""
  config = config_utils.sibling_config(__file__, "ssd300", "coco")
  config.model.num_classes = 91
  config.model.input_mean = (0.48235, 0.45882, 0.40784)
  config.model.input_std = (1 / 255, 1 / 255, 1 / 255)
  config.priors.min_sizes = tuple(300 * s for s in _SCALES[:-1])
  config.priors.max_sizes = tuple(300 * s for s in _SCALES[1:])
  config.priors.truncate_sizes = False  # torchvision uses the fractional sizes
  config.priors.clip = True
  config.matching.rule = "torchvision"  # its SSDMatcher, for parity with the converted weights
  # torchvision's reference "ssd" augmentation: bilinear resize (in the model's transform),
  # RandomPhotometricDistort hue (-0.05, 0.05) turns = 18 degrees, wrapping.
  config.augment.resize_methods = ("bilinear",)
  config.augment.hue_delta = 18.0
  config.augment.hue_clamp_below_zero = False
  return config
