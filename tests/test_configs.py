"""Every experiment config loads and passes validation; the COCO schedule is the paper's."""

import glob
import os

import pytest

from conftest import CONFIG_DIR
from ssd_jax import config_utils, config_validation, priors

CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_validates(name):
  config = config_utils.load_config(os.path.join(CONFIG_DIR, name))
  config_validation.validate(config)
  assert len(priors.from_config(config)) > 0


def test_ssd300_coco_schedule():
  config = config_utils.load_config(os.path.join(CONFIG_DIR, "ssd300_coco.py"))
  assert config.model.num_classes == 81 and config.priors.min_sizes[0] == 21
  assert config.train.num_steps == 400_000 and tuple(config.optimizer.decay_steps) == (280_000, 360_000)


def test_validation_names_the_bad_field(ssd300_config):
  config = ssd300_config.copy_and_resolve_references()
  config.matching.iou_threshold = 1.5
  with pytest.raises(config_validation.ConfigError, match=r"config.matching.iou_threshold=1.5"):
    config_validation.validate(config)


def test_validation_names_an_unknown_matching_rule(ssd300_config):
  config = ssd300_config.copy_and_resolve_references()
  config.matching.rule = "bipartite"
  with pytest.raises(config_validation.ConfigError,
                     match=r"config.matching.rule='bipartite': expected one of \('caffe', 'torchvision'\)"):
    config_validation.validate(config)


def test_matching_rules_of_the_published_configs():
  rule = lambda name: config_utils.load_config(os.path.join(CONFIG_DIR, name)).matching.rule
  assert rule("ssd300.py") == rule("ssd512.py") == rule("ssd300_coco.py") == "caffe"
  assert rule("ssd300_torchvision_coco.py") == "torchvision"  # parity with its converted weights
