"""SSD300 on ResNet-34, the backbone of the MLPerf SSD benchmark (NVIDIA SSD300 v1.1 layout).

ResNet-34 cut after layer3 with layer3 at stride 1 (first source map 38x38, 256 channels), five
extra levels with BatchNorm; priors, matching and loss as configs/ssd300.py (pass `:coco` for the
COCO prior sizes and 81 classes, as MLPerf and NVIDIA train it).
Backbone init: torchvision's ImageNet ResNet-34, hence the ImageNet input normalisation.
Command: `python -m ssd_jax.main --config=configs/ssd300_resnet34.py:coco --workdir=<dir>`.
Reference result: MLPerf training stops at COCO val2017 box AP 0.23 (MLPerf v0.6+ target).
"""

import ml_collections

from ssd_jax import config_utils


def get_config(variant: str = "voc") -> ml_collections.ConfigDict:
  """SSD300-ResNet34; ``variant`` in {"voc", "coco"} as in configs/ssd300.py."""
  config = config_utils.sibling_config(__file__, "ssd300", variant)
  config.model.name = "ssd300_resnet34"
  config.model.input_mean = (0.485, 0.456, 0.406)
  config.model.input_std = (0.229, 0.224, 0.225)

  # Optimiser: MLPerf's base learning rate (2.5e-3 per 32 images) on NVIDIA SSD300 v1.1's epoch schedule. SGD, momentum 0.9, weight decay 5e-4
  # on weights only (its "tencent trick": no decay on biases and BatchNorm), 300 warmup steps,
  # 65 COCO epochs at batch 32 (3,697 steps each) with x0.1 at epochs 43 and 54.
  config.optimizer.learning_rate = 0.0025
  config.optimizer.bias_lr_multiplier = 1.0
  config.optimizer.no_decay_names = ("scale",)  # BatchNorm scales (their biases are "bias")
  config.optimizer.warmup_steps = 300
  config.optimizer.warmup_init_factor = 0.0
  config.optimizer.decay_steps = (43 * 3697, 54 * 3697)
  config.train.num_steps = 65 * 3697
  return config
