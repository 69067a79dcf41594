"""Every experiment config loads and passes validation; the COCO schedule is the paper's."""

import glob
import os

import pytest

from conftest import CONFIG_DIR
from ssd_jax import config_utils, config_validation, priors

CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")))


# Priors per config and variant, from the papers and references (not from our configs): the sum
# over source maps of f^2 cells x boxes per cell (4 with aspect ratios {2}, 6 with {2, 3}).
SSD300 = 38**2 * 4 + 19**2 * 6 + 10**2 * 6 + 5**2 * 6 + 3**2 * 4 + 1 * 4  # the paper's 8732
PRIOR_COUNTS = {
    ("ssd300.py", None): SSD300, ("ssd300.py", "coco"): SSD300, ("ssd300_coco.py", None): SSD300,
    ("ssd300_resnet34.py", None): SSD300, ("ssd300_resnet34.py", "coco"): SSD300,
    ("ssd300_resnet50.py", None): SSD300, ("ssd300_resnet50.py", "coco"): SSD300,
    ("ssd300_torchvision_coco.py", None): SSD300,
    # SSD512 (Caffe ssd_pascal512.py): maps 64..1, the paper's 24564.
    ("ssd512.py", None): 64**2 * 4 + (32**2 + 16**2 + 8**2 + 4**2) * 6 + (2**2 + 1) * 4,
    ("ssd512.py", "coco"): 24564,
    # SSDLite320 (torchvision): maps 20, 10, 5, 3, 2, 1 with 6 boxes each, torchvision's 3234.
    ("ssdlite_mobilenetv2.py", None): (20**2 + 10**2 + 5**2 + 3**2 + 2**2 + 1) * 6,
    ("ssdlite_mobilenetv2.py", "coco"): 3234,
    # The quickstart: maps 16, 8, 4, 2, 1 with aspect ratios {2}, {2, 3}, {2, 3}, {2}, {2}.
    ("quickstart.py", None): 16**2 * 4 + 8**2 * 6 + 4**2 * 6 + 2**2 * 4 + 1 * 4,
    # Its tiny variant: maps 8, 4, 2, 1, 1 (64 px input), the same boxes per cell.
    ("quickstart.py", "tiny"): 8**2 * 4 + 4**2 * 6 + 2**2 * 6 + 1 * 4 + 1 * 4,
}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_validates(name):
  config = config_utils.load_config(os.path.join(CONFIG_DIR, name))
  config_validation.validate(config)


@pytest.mark.parametrize("name,variant", list(PRIOR_COUNTS), ids=lambda v: str(v))
def test_prior_count_of_each_config(name, variant):
  config = config_utils.load_config(os.path.join(CONFIG_DIR, name), variant)
  config_validation.validate(config)
  boxes = priors.from_config(config)
  assert boxes.shape == (PRIOR_COUNTS[name, variant], 4)


def test_prior_counts_cover_every_config():
  assert {name for name, _ in PRIOR_COUNTS} == set(CONFIGS)
  assert PRIOR_COUNTS["ssd300.py", None] == 8732 and PRIOR_COUNTS["ssd512.py", None] == 24564
  assert PRIOR_COUNTS["ssdlite_mobilenetv2.py", None] == 3234


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


@pytest.mark.parametrize("field, value, expected", [
    ("augment.resize_methods", ("bilinear", "cubic"), r"config.augment.resize_methods=\('bilinear', 'cubic'\): expected a non-empty tuple of \('bilinear',"),
    ("augment.resize_methods", (), r"config.augment.resize_methods=\(\): expected a non-empty"),
    ("data.max_image_size", 0, r"config.data.max_image_size=0: expected a positive integer")])
def test_validation_names_a_bad_augmentation_field(ssd300_config, field, value, expected):
  config = ssd300_config.copy_and_resolve_references()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(config_validation.ConfigError, match=expected):
    config_validation.validate(config)


def test_matching_rules_of_the_published_configs():
  rule = lambda name: config_utils.load_config(os.path.join(CONFIG_DIR, name)).matching.rule
  assert rule("ssd300.py") == rule("ssd512.py") == rule("ssd300_coco.py") == "caffe"
  assert rule("ssd300_torchvision_coco.py") == "torchvision"  # parity with its converted weights


# What the init_from message must name for each published config (quickstart: nothing needed).
PRETRAINED = {"ssd300.py": ("IMAGENET1K_FEATURES", "vgg16_reducedfc.pth"),
              "ssd300_coco.py": ("IMAGENET1K_FEATURES", "vgg16_reducedfc.pth"),
              "ssd512.py": ("IMAGENET1K_FEATURES", "vgg16_reducedfc.pth"),
              "ssd300_torchvision_coco.py": ("IMAGENET1K_FEATURES", "ssd300_vgg16"),
              "ssd300_resnet34.py": ("resnet34 IMAGENET1K_V1",),
              "ssd300_resnet50.py": ("resnet50 IMAGENET1K_V1",),
              "ssdlite_mobilenetv2.py": ("mobilenet_v2 IMAGENET1K_V1",)}


@pytest.mark.parametrize("name", CONFIGS)
def test_published_configs_need_pretrained_weights_or_scratch(name, tmp_path):
  # Imported here: train brings TensorFlow, which must load after torch (test_convert.py).
  from ssd_jax import train  # pylint: disable=g-import-not-at-top
  variants = ("", "tiny") if name == "quickstart.py" else (None,)
  for variant in variants:
    config = config_utils.load_config(os.path.join(CONFIG_DIR, name), variant)
    if name not in PRETRAINED:
      train.check_init_from(config)  # random weights are the quickstart's recipe
      continue
    with pytest.raises(config_validation.ConfigError) as error:
      train.check_init_from(config)
    message = str(error.value)
    assert "\n" not in message and "--config.train.init_from=FILE" in message
    assert "--config.train.init_from=scratch" in message
    for expected in PRETRAINED[name]:
      assert expected in message
    config.train.init_from = "scratch"
    train.check_init_from(config)
  assert set(PRETRAINED) | {"quickstart.py"} == set(CONFIGS)


def test_init_from_must_exist_and_be_weights(ssd300_config, tmp_path):
  from ssd_jax import train  # pylint: disable=g-import-not-at-top  (see above)
  config = ssd300_config.copy_and_resolve_references()
  config.train.init_from = str(tmp_path / "vgg16_reducedfc.pth")
  with pytest.raises(FileNotFoundError, match="config.train.init_from=.*no such file"):
    train.check_init_from(config)
  (tmp_path / "weights.txt").write_text("")
  config.train.init_from = str(tmp_path / "weights.txt")
  with pytest.raises(config_validation.ConfigError, match=r"a state_dict file ending in \.pth"):
    train.check_init_from(config)
  config.train.init_from = str(tmp_path)  # a folder: a weights checkpoint, read later
  train.check_init_from(config)


# Each enumerated field, a misspelling of it and the values it takes.
ENUMERATED = [
    ("model.name", "ssd300_vgg", ("ssd300_resnet34", "ssd300_resnet50", "ssd300_vgg16",
                                  "ssd512_vgg16", "ssd_tiny", "ssdlite320_mobilenetv2")),
    ("model.dtype", "bfloat", ("float32", "bfloat16", "float16")),
    ("optimizer.name", "adam", ("sgd",)),
    ("optimizer.schedule", "cosin", ("piecewise", "cosine")),
    ("data.source", "voc", ("tfds", "voc_folder", "coco_json", "synthetic")),
    ("data.on_bad_data", "warn", ("skip", "error")),
    ("eval.metric", "voc12", ("voc07", "voc", "coco")),
    ("matching.rule", "bipartite", ("caffe", "torchvision")),
]


def config_from_command_line(override: str):
  """The quickstart config as ``main`` parses it with one ``--config.field=value`` override."""
  from absl import flags
  from ml_collections import config_flags
  argv = ["main", f"--config={os.path.join(CONFIG_DIR, 'quickstart.py')}:tiny", override]
  flag_values = flags.FlagValues()
  # The override flags are defined from the argv the config flag is given (main's: sys.argv).
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize("field,value,choices", ENUMERATED, ids=[f for f, _, _ in ENUMERATED])
def test_every_enumerated_field_is_checked_before_work(field, value, choices):
  config = config_from_command_line(f"--config.{field}={value}")
  with pytest.raises(config_validation.ConfigError) as error:
    config_validation.validate(config)
  assert str(error.value) == f"config.{field}={value!r}: expected one of {choices}"
