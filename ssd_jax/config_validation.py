"""Checks an experiment config before any work starts: one clear error naming the field."""

import ml_collections


class ConfigError(ValueError):
  """A config field has a value that cannot work; the message names the field."""


def _require(ok: bool, field: str, value, expected: str) -> None:
  if not ok:
    raise ConfigError(f"config.{field}={value!r}: expected {expected}")


def _positive_int(config: ml_collections.ConfigDict, field: str) -> None:
  value = config
  for key in field.split("."):
    value = value[key]
  _require(isinstance(value, int) and value > 0, field, value, "a positive integer")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first field whose value cannot work."""
  from ssd_jax import matching, models  # the matching rules, the registry of model names

  for field in ("data.batch_size", "train.num_steps", "train.checkpoint_every",
                "train.keep_checkpoints", "model.image_size", "model.num_classes"):
    _positive_int(config, field)
  _require(config.model.name in models.model_names(), "model.name", config.model.name,
           f"one of {models.model_names()}")
  _require(config.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype",
           config.model.dtype, "float32, bfloat16 or float16")
  _require(config.model.num_classes >= 2, "model.num_classes", config.model.num_classes,
           ">= 2 (background is class 0)")
  _require(config.optimizer.learning_rate > 0, "optimizer.learning_rate",
           config.optimizer.learning_rate, "> 0")
  _require(0 < config.matching.iou_threshold <= 1, "matching.iou_threshold",
           config.matching.iou_threshold, "a value in (0, 1]")
  _require(config.matching.rule in matching.RULES, "matching.rule", config.matching.rule,
           f"one of {matching.RULES}")
  _require(config.loss.neg_pos_ratio >= 0, "loss.neg_pos_ratio", config.loss.neg_pos_ratio, ">= 0")
  _require(config.mesh.data_devices == -1 or config.mesh.data_devices > 0, "mesh.data_devices",
           config.mesh.data_devices, "-1 (all devices) or a positive count")
  lengths = {name: len(config.priors[name]) for name in
             ("feature_sizes", "steps", "min_sizes", "max_sizes", "aspect_ratios")}
  _require(len(set(lengths.values())) == 1, "priors", lengths, "one entry per feature map in each field")
