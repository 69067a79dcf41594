"""Import of PyTorch VGG16 / SSD300 weights into our models, and params-only checkpoints.

Sources (a state_dict read from a ``.pth`` with ``torch.load(weights_only=True)`` or from an
``.npz`` of the same keys), detected from their keys:
- ``torchvision_ssd300_vgg16``: the whole torchvision ``ssd300_vgg16`` detector -> every param of
  an ``ssd300_vgg16`` model (use configs/ssd300_torchvision_coco.py for its COCO_V1 weights).
- ``torchvision_vgg16``: a torchvision VGG16 classifier -> conv1_1..conv5_3, and fc6/fc7 when the
  classifier is usable: fc6 [4096, 512*7*7] and fc7 [4096, 4096] are subsampled into the atrous
  fc6 [1024, 512, 3, 3] / fc7 [1024, 1024, 1, 1] the way Caffe's VGG_ILSVRC_16_layers_fc_reduced
  was made (every 4th filter, every 3rd tap; DeepLab-LargeFOV). IMAGENET1K_V1 has a classifier;
  IMAGENET1K_FEATURES (the Caffe weights torchvision's ssd300_vgg16 starts from) has NaNs there,
  so fc6/fc7 keep their init, as in torchvision. Other params keep their init.
- ``vgg16_reducedfc``: ssd.pytorch's ``vgg16_reducedfc.pth`` (keys ``0.weight`` .. ``33.bias``), the
  Caffe fc_reduced VGG16 the paper starts from, fc6/fc7 included.
Mind the input normalisation each expects (config.model.input_mean/std): Caffe-style for
IMAGENET1K_FEATURES, vgg16_reducedfc and the detector; ImageNet mean/std for IMAGENET1K_V1.

Command: ``python -m ssd_jax.convert --config=configs/ssd300_torchvision_coco.py
--input=ssd300_vgg16_coco-b556d3b4.pth --output=/abs/path/ckpt`` writes an orbax checkpoint of
the model's weights (``checkpoint.save_weights``), for ``--config.train.init_from=/abs/path/ckpt``
or ``checkpoint.load_weights(path, model)``.
"""

import dataclasses
import os
from typing import Callable, Mapping

import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from ssd_jax import checkpoint, models
from ssd_jax.models import vgg

SOURCES = ("torchvision_ssd300_vgg16", "torchvision_vgg16", "vgg16_reducedfc")
_VGG_MODELS = ("ssd300_vgg16", "ssd512_vgg16")


class ConversionError(ValueError):
  """A state_dict or checkpoint that does not fit the model; the message names every key."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """One source tensor -> one of our params (``target`` is a "/"-joined nnx.State path)."""
  source: str
  target: str
  source_shape: tuple[int, ...]
  transform: Callable[[np.ndarray], np.ndarray]


def _conv_rules(source: str, target: str, shapes: Mapping[str, tuple]) -> list[Rule]:
  """PyTorch conv ``source``.weight [O, I, kh, kw] and .bias -> ``target``/kernel [kh, kw, I, O]."""
  kernel = shapes.get(f"{target}/kernel", (0, 0, 0, 0))
  bias = shapes.get(f"{target}/bias", (0,))
  return [Rule(f"{source}.weight", f"{target}/kernel", (kernel[3], kernel[2], *kernel[:2]),
               lambda w: np.transpose(w, (2, 3, 1, 0))),
          Rule(f"{source}.bias", f"{target}/bias", tuple(bias), lambda b: b)]


def _vgg_feature_indices() -> list[int]:
  """Indices of the convs in torchvision's ``vgg16().features`` (conv, ReLU, .., pool a block)."""
  indices, index = [], 0
  for block in vgg.VGG16_BLOCKS:
    for _ in block:
      indices.append(index)
      index += 2
    index += 1
  return indices


def _vgg_conv_rules(prefix: str, shapes: Mapping[str, tuple]) -> list[Rule]:
  """conv1_1..conv5_3 from ``{prefix}{index}`` keys of a VGG16 features Sequential."""
  rules = []
  for index, name in zip(_vgg_feature_indices(), vgg.vgg_conv_names()):
    rules += _conv_rules(f"{prefix}{index}", f"backbone/{name}", shapes)
  return rules


def ssd300_vgg16_rules(shapes: Mapping[str, tuple]) -> list[Rule]:
  """torchvision ``ssd300_vgg16`` state_dict -> our ssd300_vgg16 (see SSDFeatureExtractorVGG).

  Its ``backbone.features`` holds conv1_1..conv4_3; ``backbone.extra.0`` is [pool4, conv5_1,
  ReLU, conv5_2, ReLU, conv5_3, ReLU, (pool5, fc6, ReLU, fc7, ReLU)]; ``extra.1..4`` are
  conv8..conv11 as [1x1, ReLU, 3x3, ReLU]. Head channels are box-major, a * D + d, like ours, and
  torchvision's (dx, dy, dw, dh) with weights (10, 10, 5, 5) equal our (cx, cy, w, h) offsets
  with variances (0.1, 0.2): loc channels need no permutation.
  """
  indices = _vgg_feature_indices()
  names = vgg.vgg_conv_names()
  scale = "backbone/conv4_3_norm/scale"
  rules = [Rule("backbone.scale_weight", scale, shapes.get(scale, (0,)), lambda s: s)]
  for index, name in zip(indices[:10], names[:10]):
    rules += _conv_rules(f"backbone.features.{index}", f"backbone/{name}", shapes)
  for index, name in zip((1, 3, 5), names[10:]):
    rules += _conv_rules(f"backbone.extra.0.{index}", f"backbone/{name}", shapes)
  rules += _conv_rules("backbone.extra.0.7.1", "backbone/fc6", shapes)
  rules += _conv_rules("backbone.extra.0.7.3", "backbone/fc7", shapes)
  for level, (name1, name2) in enumerate(vgg.extra_names("ssd300"), 1):
    rules += _conv_rules(f"backbone.extra.{level}.0", f"backbone/{name1}", shapes)
    rules += _conv_rules(f"backbone.extra.{level}.2", f"backbone/{name2}", shapes)
  for level in range(6):
    rules += _conv_rules(f"head.regression_head.module_list.{level}", f"head/loc/{level}", shapes)
    rules += _conv_rules(f"head.classification_head.module_list.{level}", f"head/conf/{level}",
                         shapes)
  return rules


def _fc_reduced_rules() -> list[Rule]:
  """VGG16 classifier fc6/fc7 -> the atrous fc6 / 1x1 fc7 of SSD (1/4 of the filters)."""
  def fc6(w):  # [4096, 512 * 7 * 7] -> [3, 3, 512, 1024]: every 4th filter, taps 0, 3, 6 of 7x7
    return np.transpose(w.reshape(w.shape[0], -1, 7, 7)[::4, :, ::3, ::3], (2, 3, 1, 0))
  def fc7(w):  # [4096, 4096] -> [1, 1, 1024, 1024]: every 4th filter and input
    return np.transpose(w[::4, ::4], (1, 0))[None, None]
  every_4th = lambda b: b[::4]  # noqa: E731
  return [Rule("classifier.0.weight", "backbone/fc6/kernel", (4096, 512 * 7 * 7), fc6),
          Rule("classifier.0.bias", "backbone/fc6/bias", (4096,), every_4th),
          Rule("classifier.3.weight", "backbone/fc7/kernel", (4096, 4096), fc7),
          Rule("classifier.3.bias", "backbone/fc7/bias", (4096,), every_4th)]


def vgg16_rules(shapes: Mapping[str, tuple], state_dict: Mapping[str, np.ndarray],
                ) -> tuple[list[Rule], set[str]]:
  """torchvision VGG16 classifier -> (rules, keys deliberately ignored)."""
  rules = _vgg_conv_rules("features.", shapes)
  classifier = {f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")}
  if not classifier & set(state_dict):
    return rules, set()
  fc_rules = _fc_reduced_rules()
  usable = all(np.all(np.isfinite(state_dict[r.source])) for r in fc_rules
               if r.source in state_dict)
  if not usable:
    logging.warning("VGG16 classifier has non-finite values (IMAGENET1K_FEATURES): fc6/fc7 keep "
                    "their initialisation.")
    return rules, classifier
  return rules + fc_rules, {"classifier.6.weight", "classifier.6.bias"}


def vgg16_reducedfc_rules(shapes: Mapping[str, tuple]) -> list[Rule]:
  """ssd.pytorch's vgg16_reducedfc: a plain layer list (convs, ReLUs, pools; fc6 31, fc7 33)."""
  return (_vgg_conv_rules("", shapes) + _conv_rules("31", "backbone/fc6", shapes)
          + _conv_rules("33", "backbone/fc7", shapes))


def detect_source(state_dict: Mapping[str, np.ndarray]) -> str:
  """Which of SOURCES a state_dict is, from its keys."""
  if any(key.startswith(("backbone.", "head.")) for key in state_dict):
    return "torchvision_ssd300_vgg16"
  if "features.0.weight" in state_dict:
    return "torchvision_vgg16"
  if "0.weight" in state_dict:
    return "vgg16_reducedfc"
  raise ConversionError(f"unrecognised state_dict (first keys {sorted(state_dict)[:5]}); "
                        f"known sources: {list(SOURCES)}")


def convert_state_dict(state_dict: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
                       model_name: str, source: str | None = None) -> dict[str, np.ndarray]:
  """Returns ``params`` with every converted tensor replaced; the others keep their values.

  ``params`` maps "/"-joined param paths to arrays (or shape-only placeholders such as
  jax.ShapeDtypeStruct, to check a state_dict before initialising anything). Raises
  ConversionError naming every missing, unexpected or mis-shaped key (with the expected shape)
  before anything is converted.
  """
  source = source or detect_source(state_dict)
  if source not in SOURCES:
    raise ConversionError(f"unknown source {source!r}; known sources: {list(SOURCES)}")
  allowed = ("ssd300_vgg16",) if source == "torchvision_ssd300_vgg16" else _VGG_MODELS
  if model_name not in allowed:
    raise ConversionError(f"{source} weights fit models {list(allowed)}, not {model_name!r}")
  shapes = {key: tuple(value.shape) for key, value in params.items()}
  ignored: set[str] = set()
  if source == "torchvision_ssd300_vgg16":
    rules = ssd300_vgg16_rules(shapes)
  elif source == "torchvision_vgg16":
    rules, ignored = vgg16_rules(shapes, state_dict)
  else:
    rules = vgg16_reducedfc_rules(shapes)
  return _apply(rules, ignored, state_dict, params)


def _apply(rules: list[Rule], ignored: set[str], state_dict: Mapping[str, np.ndarray],
           params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Checks every rule, then applies them all (or raises, converting nothing)."""
  errors = [f"unexpected key {key!r} {tuple(state_dict[key].shape)}"
            for key in sorted(set(state_dict) - {r.source for r in rules} - ignored)]
  converted = {}
  for rule in rules:
    if rule.target not in params:
      errors.append(f"{rule.source!r}: the model has no parameter {rule.target!r}")
    elif rule.source not in state_dict:
      errors.append(f"missing key {rule.source!r} (expected shape {rule.source_shape})")
    elif tuple(state_dict[rule.source].shape) != rule.source_shape:
      errors.append(f"key {rule.source!r} has shape {tuple(state_dict[rule.source].shape)}, "
                    f"expected {rule.source_shape}")
    else:
      value = np.asarray(rule.transform(np.asarray(state_dict[rule.source], np.float32)))
      if value.shape != params[rule.target].shape:
        errors.append(f"key {rule.source!r} converts to shape {value.shape} but "
                      f"{rule.target!r} has {params[rule.target].shape} (config.model.width?)")
      converted[rule.target] = value
  if errors:
    raise ConversionError(f"{len(errors)} problem(s) converting the state_dict:\n  "
                          + "\n  ".join(errors))
  return {**params, **converted}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state_dict from a ``.pth`` (needs torch: the ``convert`` extra) or an ``.npz``."""
  if path.endswith(".npz"):
    with np.load(path) as data:
      return {key: data[key] for key in data.files}
  import torch  # pylint: disable=g-import-not-at-top  (optional dependency)
  state_dict = torch.load(path, map_location="cpu", weights_only=True)
  if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
    raise ConversionError(f"{path}: expected a flat state_dict of tensors")
  return {key: value.detach().float().numpy() for key, value in state_dict.items()}


def convert_file(config: ml_collections.ConfigDict, input_path: str, output_path: str,
                 source: str | None = None, seed: int = 0) -> None:
  """Imports ``input_path`` into the model of ``config`` and saves its params at ``output_path``.

  The state_dict is checked against the model's shapes before anything is initialised; params
  the source does not cover get the model's seeded initialisation.
  """
  state_dict = read_state_dict(input_path)
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(seed)))
  values = convert_state_dict(state_dict, checkpoint.flat_weights(model), config.model.name,
                              source)
  if any(not isinstance(value, np.ndarray) for value in values.values()):
    # Eager init compiles one RNG program per parameter shape: only pay for it when needed.
    model = models.create_model(config, nnx.Rngs(seed))
    initial = checkpoint.flat_weights(model)
    values = {k: v if isinstance(v, np.ndarray) else initial[k] for k, v in values.items()}
  checkpoint.set_weights(model, values)
  checkpoint.save_weights(output_path, model)


def main() -> None:
  """``python -m ssd_jax.convert``; flags are defined here so importing this module defines none."""
  config = config_flags.DEFINE_config_file("config", None, "Config of the target model.",
                                           lock_config=True)
  input_path = flags.DEFINE_string("input", None, ".pth or .npz state_dict to convert.")
  output = flags.DEFINE_string("output", None, "Directory of the orbax checkpoint to write.")
  source = flags.DEFINE_enum("source", None, SOURCES, "Format of --input; detected if unset.")
  seed = flags.DEFINE_integer("seed", 0, "Init seed of the params the source does not cover.")
  flags.mark_flags_as_required(["config", "input", "output"])

  def run(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments {argv[1:]}")
    convert_file(config.value, input_path.value, output.value, source.value, seed.value)
    logging.info("wrote %s", os.path.abspath(output.value))
  app.run(run)


if __name__ == "__main__":
  main()
