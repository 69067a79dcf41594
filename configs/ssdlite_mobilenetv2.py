"""SSDLite on MobileNetV2 at 320x320 (Sandler et al. 2018, section 6.2), for mobile inference.

Source maps 20, 10, 5, 3, 2, 1 (see ssd_jax/models/mobilenet.py); depthwise-separable heads.
Priors follow torchvision's `ssdlite320_mobilenet_v3_large` (not the TF object-detection API's
anchor generator of the paper): scales 0.2 + 0.15 k (k = 0..5) and 1.0 for the extra box of the
last map, aspect ratios [2, 3] on every map (6 boxes per cell), cell centres (i + 0.5) / f_k and
w, h clamped to [0, 1]: 3234 priors. The steps below are 320 / f_k in pixels.
Initialisation: torchvision's `mobilenet_v2` IMAGENET1K_V1 state_dict (mobilenet_v2-b0353104.pth;
README, Experiments), with its BatchNorm statistics; hence the ImageNet input normalisation.
Command: `python -m ssd_jax.main --config=configs/ssdlite_mobilenetv2.py:coco --workdir=<dir>
  --config.train.init_from=/path/to/mobilenet_v2-b0353104.pth`.
Reference result: the paper reports 22.1 COCO test-dev AP (TF, its own anchors and recipe).
"""

import ml_collections

from ssd_jax import config_utils

_SCALES = (0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0)


def get_config(variant: str = "voc") -> ml_collections.ConfigDict:
  """SSDLite320-MobileNetV2; ``variant`` in {"voc", "coco"} as in configs/ssd300.py."""
  config = config_utils.sibling_config(__file__, "ssd300", variant)
  config.model.name = "ssdlite320_mobilenetv2"
  config.model.image_size = 320
  config.model.input_mean = (0.485, 0.456, 0.406)
  config.model.input_std = (0.229, 0.224, 0.225)

  feature_sizes = (20, 10, 5, 3, 2, 1)
  config.priors.feature_sizes = feature_sizes
  config.priors.steps = tuple(320 / size for size in feature_sizes)
  config.priors.min_sizes = tuple(320 * s for s in _SCALES[:-1])
  config.priors.max_sizes = tuple(320 * s for s in _SCALES[1:])
  config.priors.truncate_sizes = False  # torchvision uses the fractional sizes
  config.priors.aspect_ratios = ((2, 3),) * 6
  config.priors.clip = True

  # torchvision's SSDLite recipe (references/detection, ssdlite320_mobilenet_v3_large): SGD,
  # momentum 0.9, lr 0.15 for 8 x 24 = 192 images, weight decay 4e-5 on every parameter, cosine
  # decay over 600 COCO epochs (616 steps each at batch 192) after a 1,000-step warmup from 1/1000,
  # and its "ssdlite" augmentation: IoU crop and flip only (no zoom-out, no colour distortion).
  config.data.batch_size = 192
  config.optimizer.learning_rate = 0.15
  config.optimizer.reference_batch_size = 192
  config.optimizer.weight_decay = 4e-5
  config.optimizer.bias_names = ()
  config.optimizer.bias_lr_multiplier = 1.0
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 1000
  config.optimizer.warmup_init_factor = 1e-3
  config.train.num_steps = 600 * 616
  config.augment.expand_prob = 0.0
  config.augment.resize_methods = ("bilinear",)
  for distortion in ("brightness", "contrast", "saturation", "hue"):
    config.augment[f"{distortion}_prob"] = 0.0
  return config
