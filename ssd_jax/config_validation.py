"""Checks an experiment config before any work starts: one clear error naming the field.

Every enumerated field is checked against the constant of the module that reads it, so a typo
stops the command in its first seconds rather than after training steps.
"""

import ml_collections

from ssd_jax import evaluation, matching, models, optimizer, pixel_augment
from ssd_jax.config_utils import ConfigError
from ssd_jax.data import sources

__all__ = ["ConfigError", "validate"]


def _require(ok: bool, field: str, value, expected: str) -> None:
  if not ok:
    raise ConfigError(f"config.{field}={value!r}: expected {expected}")


def _value(config: ml_collections.ConfigDict, field: str):
  for key in field.split("."):
    config = config[key]
  return config


def _positive_int(config: ml_collections.ConfigDict, field: str) -> None:
  value = _value(config, field)
  _require(isinstance(value, int) and value > 0, field, value, "a positive integer")


def _one_of(config: ml_collections.ConfigDict, field: str, choices) -> None:
  value = _value(config, field)
  _require(value in choices, field, value, f"one of {tuple(choices)}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first field whose value cannot work."""
  for field in ("data.batch_size", "train.num_steps", "train.checkpoint_every",
                "train.keep_checkpoints", "model.image_size", "model.num_classes",
                "data.max_image_size"):
    _positive_int(config, field)
  methods = tuple(config.augment.resize_methods)
  _require(bool(methods) and set(methods) <= set(pixel_augment.METHODS), "augment.resize_methods",
           methods, f"a non-empty tuple of {pixel_augment.METHODS}")
  for field, choices in (("model.name", models.model_names()), ("model.dtype", models.DTYPES),
                         ("optimizer.name", optimizer.OPTIMIZERS),
                         ("optimizer.schedule", optimizer.SCHEDULES),
                         ("data.source", sources.SOURCES), ("data.on_bad_data", sources.ON_BAD_DATA),
                         ("eval.metric", evaluation.METRICS), ("matching.rule", matching.RULES)):
    _one_of(config, field, choices)
  _require(config.model.num_classes >= 2, "model.num_classes", config.model.num_classes,
           ">= 2 (background is class 0)")
  _require(config.optimizer.learning_rate > 0, "optimizer.learning_rate",
           config.optimizer.learning_rate, "> 0")
  _require(0 < config.matching.iou_threshold <= 1, "matching.iou_threshold",
           config.matching.iou_threshold, "a value in (0, 1]")
  _require(config.loss.neg_pos_ratio >= 0, "loss.neg_pos_ratio", config.loss.neg_pos_ratio, ">= 0")
  _require(config.mesh.data_devices == -1 or config.mesh.data_devices > 0, "mesh.data_devices",
           config.mesh.data_devices, "-1 (all devices) or a positive count")
  lengths = {name: len(config.priors[name]) for name in
             ("feature_sizes", "steps", "min_sizes", "max_sizes", "aspect_ratios")}
  _require(len(set(lengths.values())) == 1, "priors", lengths, "one entry per feature map in each field")
