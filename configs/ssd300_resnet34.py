"""SSD300 on ResNet-34, the backbone of the MLPerf SSD benchmark (NVIDIA SSD300 v1.1 layout).

ResNet-34 cut after layer3 with layer3 at stride 1 (first source map 38x38, 256 channels), five
extra levels with BatchNorm; priors, matching and loss as configs/ssd300.py (pass `:coco` for the
COCO prior sizes and 81 classes, as MLPerf and NVIDIA train it).
Initialisation: torchvision's `resnet34` IMAGENET1K_V1 state_dict (resnet34-b627a593.pth; README,
Experiments), stem to layer3 with its BatchNorm statistics; hence the ImageNet input normalisation.
Command: `python -m ssd_jax.main --config=configs/ssd300_resnet34.py:coco --workdir=<dir>
  --config.train.init_from=/path/to/resnet34-b627a593.pth`.
Reference result: MLPerf training stops at COCO val2017 box AP 0.23 (MLPerf v0.6+ target).
"""

import ml_collections

from ssd_jax import config_utils


def get_config(variant: str = "voc") -> ml_collections.ConfigDict:
  """SSD300-ResNet34; ``variant`` in {"voc", "coco"} as in configs/ssd300.py.

  Everything as configs/ssd300_resnet50.py (NVIDIA SSD300 v1.1's recipe and epoch schedule)
  but the backbone and MLPerf's base learning rate, 2.5e-3 per 32 images.
  """
  config = config_utils.sibling_config(__file__, "ssd300_resnet50", variant)
  config.model.name = "ssd300_resnet34"
  config.optimizer.learning_rate = 2.5e-3
  return config
