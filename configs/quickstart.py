"""Quickstart: a small dense SSD on synthetic shapes, trained and evaluated on 2 CPU cores.

Command: python -m ssd_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
Initialisation: random weights (no pretrained backbone needed).
Generates the shapes dataset (a VOC-format folder under data/) on first use, trains, evaluates
and writes pictures. Expected: VOC07 mAP@0.5 0.960 on the held-out shapes after 1,000 steps, in
about 3 minutes of wall time on 2 quiet CPU cores (158 s; experiments/RESULTS.md).
"""

import ml_collections

from ssd_jax import config_utils

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """SSD300's recipe scaled down: 128 px input, 5 source maps, 6 shape classes.

  ``configs/quickstart.py:tiny`` is a seconds-long version for tests and smoke runs: 64 px
  input, half-width model, 64 training images, 8 steps.
  """
  if variant not in ("", "tiny"):
    raise ValueError(f"configs/quickstart.py: unknown variant {variant!r}; known: '', 'tiny'")
  config = config_utils.sibling_config(__file__, "ssd300")
  config.model.name = "ssd_tiny"
  config.model.image_size = 128
  config.model.num_classes = len(SHAPES) + 1
  # Trained from scratch, so the usual ImageNet statistics rather than Caffe's 0..255 inputs.
  config.model.input_mean = (0.485, 0.456, 0.406)
  config.model.input_std = (0.229, 0.224, 0.225)

  # Maps 16, 8, 4, 2, 1 cells; sizes cover the shapes' 0.25..0.6 of the image side.
  config.priors.feature_sizes = (16, 8, 4, 2, 1)
  config.priors.steps = (8, 16, 32, 64, 128)
  config.priors.min_sizes = (16, 32, 52, 76, 100)
  config.priors.max_sizes = (32, 52, 76, 100, 128)
  config.priors.aspect_ratios = ((2,), (2, 3), (2, 3), (2,), (2,))

  config.data.source = "synthetic"
  config.data.data_dir = "data"
  config.data.train_splits = (("shapes", "train"),)
  config.data.eval_splits = (("shapes", "test"),)
  config.data.class_names = SHAPES
  config.data.batch_size = 32
  config.data.max_boxes = 8
  config.data.shuffle_buffer = 512
  config.data.synthetic.image_size = 128
  config.data.max_image_size = 128  # the shapes' size: nothing shrunk, nothing padded
  # The augmentation its figures were measured with: bilinear resize, hue +-18 degrees wrapping
  # (Caffe's random interpolation and 36 degrees are for the Caffe-recipe configs).
  config.augment.resize_methods = ("bilinear",)
  config.augment.hue_delta = 18.0
  config.augment.hue_clamp_below_zero = False

  config.optimizer.learning_rate = 1e-2
  config.optimizer.warmup_steps = 50
  config.optimizer.warmup_init_factor = 0.1
  config.optimizer.decay_steps = (700, 900)
  config.train.num_steps = 1000
  config.train.requires_pretrained = False  # trained from random weights
  config.train.checkpoint_every = 250
  config.train.eval_every = 500
  config.train.log_every_seconds = 10.0
  if variant == "tiny":
    _make_tiny(config)
  return config


def _make_tiny(config: ml_collections.ConfigDict) -> None:
  config.model.image_size = 64
  config.model.width = 0.5
  config.priors.feature_sizes = (8, 4, 2, 1, 1)  # the last stride-2 conv keeps 1x1
  config.priors.steps = (8, 16, 32, 64, 64)
  config.priors.min_sizes = (8, 16, 26, 38, 50)
  config.priors.max_sizes = (16, 26, 38, 50, 64)
  config.data.synthetic.image_size = 64
  config.data.max_image_size = 64
  config.data.synthetic.num_train = 64
  config.data.synthetic.num_test = 16
  config.data.batch_size = 8
  config.data.eval_batch_size = 8
  config.data.shuffle_buffer = 64
  config.optimizer.warmup_steps = 2
  config.optimizer.decay_steps = (6,)
  config.train.num_steps = 8
  config.train.checkpoint_every = 4
  config.train.eval_every = 8
  config.train.log_every_seconds = 1.0
