"""SSD300 on VGG16 for COCO 2017 (Caffe `ssd_coco.py`): 81 classes, COCO prior sizes, 400k steps.

Initialisation: the ImageNet VGG16 of configs/ssd300.py (torchvision's `vgg16`
IMAGENET1K_FEATURES state_dict or ssd.pytorch's `vgg16_reducedfc.pth`; README, Experiments).
Command: python -m ssd_jax.main --config=configs/ssd300_coco.py --workdir=<dir>
  --config.train.init_from=/path/to/vgg16_features-amdegroot-88682ab5.pth
  (needs tfds `coco/2017` prepared under --config.data.data_dir; nothing is downloaded).
Reference result: 25.1 AP on COCO test-dev (the paper's SSD300*, trained on trainval35k).
Time: 400k steps of batch 32; at 0.5 images/s on a 2-core CPU that is not a CPU job: use
accelerators (see the README).
"""

import ml_collections

from ssd_jax import config_utils


def get_config() -> ml_collections.ConfigDict:
  """SSD300 with ``configs/ssd300.py:coco`` and the 400k-iteration COCO schedule."""
  config = config_utils.sibling_config(__file__, "ssd300", "coco")
  config.optimizer.decay_steps = (280_000, 360_000)
  config.train.num_steps = 400_000
  config.train.eval_every = 20_000
  return config
