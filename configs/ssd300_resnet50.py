"""SSD300 on ResNet-50, as NVIDIA's SSD300 v1.1 (DeepLearningExamples, PyTorch/Detection/SSD).

ResNet-50 (v1.5) cut after layer3 with layer3 at stride 1 (first source map 38x38, 1024
channels), five extra levels with BatchNorm; priors, matching and loss as configs/ssd300.py
(pass `:coco` for NVIDIA's COCO setup: prior sizes 21..315 and 81 classes).
Initialisation: torchvision's `resnet50` IMAGENET1K_V1 state_dict (resnet50-0676ba61.pth, as
NVIDIA; README, Experiments), stem to layer3 with its BatchNorm statistics; hence the ImageNet
input normalisation.
Command: `python -m ssd_jax.main --config=configs/ssd300_resnet50.py:coco --workdir=<dir>
  --config.train.init_from=/path/to/resnet50-0676ba61.pth`.
Reference result: NVIDIA reports about 25 COCO val2017 box AP after 65 epochs.
"""

import ml_collections

from ssd_jax import config_utils


def get_config(variant: str = "voc") -> ml_collections.ConfigDict:
  """SSD300-ResNet50; ``variant`` in {"voc", "coco"} as in configs/ssd300.py."""
  config = config_utils.sibling_config(__file__, "ssd300", variant)
  config.model.name = "ssd300_resnet50"
  config.model.input_mean = (0.485, 0.456, 0.406)
  config.model.input_std = (0.229, 0.224, 0.225)

  # Optimiser: NVIDIA SSD300 v1.1's recipe. SGD, momentum 0.9, weight decay 5e-4
  # on weights only (its "tencent trick": no decay on biases and BatchNorm), 300 warmup steps,
  # 65 COCO epochs at batch 32 (3,697 steps each) with x0.1 at epochs 43 and 54.
  config.optimizer.learning_rate = 0.0026
  config.optimizer.bias_lr_multiplier = 1.0
  config.optimizer.no_decay_names = ("scale",)  # BatchNorm scales (their biases are "bias")
  config.optimizer.warmup_steps = 300
  config.optimizer.warmup_init_factor = 0.0
  config.optimizer.decay_steps = (43 * 3697, 54 * 3697)
  config.train.num_steps = 65 * 3697
  # NVIDIA's input pipeline: bilinear resize, ColorJitter hue 0.05 turns (18 degrees, wrapping).
  config.augment.resize_methods = ("bilinear",)
  config.augment.hue_delta = 18.0
  config.augment.hue_clamp_below_zero = False
  return config
