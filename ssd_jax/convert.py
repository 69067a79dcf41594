"""Import of PyTorch weights (torchvision, ssd.pytorch) into our models.

Sources (a state_dict read from a ``.pth`` with ``torch.load(weights_only=True)`` or from an
``.npz`` of the same keys), detected from their keys; each fits the models in ``MODELS``:
- ``torchvision_ssd300_vgg16``: the whole torchvision ``ssd300_vgg16`` detector -> every param of
  an ``ssd300_vgg16`` model (use configs/ssd300_torchvision_coco.py for its COCO_V1 weights).
- ``torchvision_vgg16``: a torchvision VGG16 classifier -> conv1_1..conv5_3, and fc6/fc7 when the
  classifier is usable: fc6 [4096, 512*7*7] and fc7 [4096, 4096] are subsampled into the atrous
  fc6 [1024, 512, 3, 3] / fc7 [1024, 1024, 1, 1] the way Caffe's VGG_ILSVRC_16_layers_fc_reduced
  was made (every 4th filter, every 3rd tap; DeepLab-LargeFOV). IMAGENET1K_V1 has a classifier;
  IMAGENET1K_FEATURES (the Caffe weights torchvision's ssd300_vgg16 starts from) has NaNs there,
  so fc6/fc7 keep their init, as in torchvision. The 1000-way fc8 is dropped.
- ``vgg16_reducedfc``: ssd.pytorch's ``vgg16_reducedfc.pth`` (keys ``0.weight`` .. ``33.bias``), the
  Caffe fc_reduced VGG16 the paper starts from, fc6/fc7 included.
- ``torchvision_resnet34`` / ``torchvision_resnet50``: a torchvision ResNet classifier -> the stem
  and layer1..layer3 of ``ssd300_resnet34`` / ``ssd300_resnet50``, BatchNorm running statistics
  included (layer3's stride differs, its weights do not); layer4 and fc are dropped.
- ``torchvision_mobilenet_v2``: a torchvision MobileNetV2 classifier -> the stem, the 17
  inverted-residual blocks and the last 1x1 conv of ``ssdlite320_mobilenetv2``, BatchNorm
  statistics included; the classifier is dropped. Our BatchNorm epsilon is SSDLite's 1e-3 where
  the ImageNet training used 1e-5, as in torchvision's SSDLite, which starts from the same weights.
Other weights (extra layers, heads) keep their initialisation; BatchNorm's ``num_batches_tracked``
counters are not weights and are skipped. Mind the input normalisation each expects
(config.model.input_mean/std): Caffe-style for IMAGENET1K_FEATURES, vgg16_reducedfc and the
detector; ImageNet mean/std for IMAGENET1K_V1 and the ResNet / MobileNetV2 classifiers.

Training converts on the fly: ``--config.train.init_from=vgg16_features-amdegroot-88682ab5.pth``.
Command: ``python -m ssd_jax.convert --config=configs/ssd300_torchvision_coco.py
--input=ssd300_vgg16_coco-b556d3b4.pth --output=/abs/path/ckpt`` writes an orbax checkpoint of
the model's weights (``checkpoint.save_weights``), for ``--config.train.init_from=/abs/path/ckpt``
or ``checkpoint.load_weights(path, model)``.
"""

import dataclasses
import os
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from ssd_jax import checkpoint, models
from ssd_jax.models import mobilenet, resnet, vgg

_VGG_MODELS = ("ssd300_vgg16", "ssd512_vgg16")
# Source -> the models its weights fit.
MODELS = {
    "torchvision_ssd300_vgg16": ("ssd300_vgg16",),
    "torchvision_vgg16": _VGG_MODELS,
    "vgg16_reducedfc": _VGG_MODELS,
    "torchvision_resnet34": ("ssd300_resnet34",),
    "torchvision_resnet50": ("ssd300_resnet50",),
    "torchvision_mobilenet_v2": ("ssdlite320_mobilenetv2",),
}
SOURCES = tuple(MODELS)
# Model -> the pretrained weights it starts from and where they come from (for error messages).
_VGG16_WEIGHTS = ("torchvision's vgg16 IMAGENET1K_FEATURES state_dict "
                  "(vgg16_features-amdegroot-88682ab5.pth) or ssd.pytorch's vgg16_reducedfc.pth")
PRETRAINED = {
    "ssd300_vgg16": _VGG16_WEIGHTS + " (or a whole torchvision ssd300_vgg16 state_dict)",
    "ssd512_vgg16": _VGG16_WEIGHTS,
    "ssd300_resnet34": "torchvision's resnet34 IMAGENET1K_V1 state_dict (resnet34-b627a593.pth)",
    "ssd300_resnet50": "torchvision's resnet50 IMAGENET1K_V1 or IMAGENET1K_V2 state_dict "
                       "(resnet50-0676ba61.pth / resnet50-11ad3fa6.pth)",
    "ssdlite320_mobilenetv2": "torchvision's mobilenet_v2 IMAGENET1K_V1 or IMAGENET1K_V2 "
                              "state_dict (mobilenet_v2-b0353104.pth / mobilenet_v2-7ebf99e0.pth)",
}
STATE_DICT_SUFFIXES = (".pth", ".pt", ".npz")


class ConversionError(checkpoint.WeightsMismatchError):
  """A state_dict that does not fit the model (or cannot be read); the message names every key."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """One source tensor -> one of our weights (``target``: a "/"-joined nnx.State path)."""
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


def _conv_bn_rules(conv: str, bn: str, target: str, shapes: Mapping[str, tuple]) -> list[Rule]:
  """PyTorch Conv2d ``conv`` (no bias) + BatchNorm2d ``bn`` -> our ConvBN ``target``.

  BatchNorm's weight/bias are our scale/bias params, its running_mean/running_var our mean/var
  statistics. A depthwise weight [C, 1, kh, kw] becomes [kh, kw, 1, C], flax's grouped layout.
  """
  kernel = shapes.get(f"{target}/conv/kernel", (0, 0, 0, 0))
  channels = tuple(shapes.get(f"{target}/bn/scale", (0,)))
  rules = [Rule(f"{conv}.weight", f"{target}/conv/kernel", (kernel[3], kernel[2], *kernel[:2]),
                lambda w: np.transpose(w, (2, 3, 1, 0)))]
  for theirs, ours in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
                       ("running_var", "var")):
    rules.append(Rule(f"{bn}.{theirs}", f"{target}/bn/{ours}", channels, lambda v: v))
  return rules


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


def resnet_rules(depth: str, shapes: Mapping[str, tuple]) -> list[Rule]:
  """torchvision ``resnet34`` / ``resnet50`` -> the stem and layer1..3 of our ResNetBackbone.

  torchvision names a block's units conv{i}/bn{i} (2 per BasicBlock, 3 per Bottleneck) and its
  projection downsample.0 (conv) / downsample.1 (BN); a projection is converted where our block
  has one (the same blocks as torchvision's, since the shapes agree).
  """
  block, counts = resnet.ARCHITECTURES[depth]
  units = 2 if block is resnet.BasicBlock else 3
  rules = _conv_bn_rules("conv1", "bn1", "backbone/stem", shapes)
  for stage, count in enumerate(counts, 1):
    for index in range(count):
      theirs, ours = f"layer{stage}.{index}", f"backbone/layer{stage}/{index}"
      for unit in range(1, units + 1):
        rules += _conv_bn_rules(f"{theirs}.conv{unit}", f"{theirs}.bn{unit}",
                                f"{ours}/conv{unit}", shapes)
      if f"{ours}/downsample/conv/kernel" in shapes:
        rules += _conv_bn_rules(f"{theirs}.downsample.0", f"{theirs}.downsample.1",
                                f"{ours}/downsample", shapes)
  return rules


def mobilenet_v2_rules(shapes: Mapping[str, tuple]) -> list[Rule]:
  """torchvision ``mobilenet_v2`` -> our MobileNetV2Backbone (without the SSDLite extras).

  ``features.0`` is the stem, ``features.1..17`` our blocks 0..16 and ``features.18`` the last
  1x1 conv, each Conv2dNormActivation a [conv, BN] pair. A block's ``conv`` is [expand pair,
  depthwise pair, project conv, project BN], without the expand pair when its expansion is 1.
  """
  rules = _conv_bn_rules("features.0.0", "features.0.1", "backbone/stem", shapes)
  expansions = [t for t, _, repeats, _ in mobilenet.MOBILENET_V2 for _ in range(repeats)]
  for index, expansion in enumerate(expansions):
    theirs, ours = f"features.{index + 1}.conv", f"backbone/blocks/{index}"
    units = ["depthwise"] if expansion == 1 else ["expand", "depthwise"]
    for position, unit in enumerate(units):
      rules += _conv_bn_rules(f"{theirs}.{position}.0", f"{theirs}.{position}.1",
                              f"{ours}/{unit}", shapes)
    rules += _conv_bn_rules(f"{theirs}.{len(units)}", f"{theirs}.{len(units) + 1}",
                            f"{ours}/project", shapes)
  last = len(expansions) + 1
  return rules + _conv_bn_rules(f"features.{last}.0", f"features.{last}.1", "backbone/last",
                                shapes)


def _dropped(state_dict: Mapping[str, np.ndarray], prefixes: tuple[str, ...]) -> set[str]:
  """Keys deliberately not converted: those under ``prefixes`` and BatchNorm's step counters."""
  return {key for key in state_dict
          if key.startswith(prefixes) or key.endswith(".num_batches_tracked")}


def detect_source(state_dict: Mapping[str, np.ndarray]) -> str:
  """Which of SOURCES a state_dict is, from its keys."""
  if any(key.startswith(("backbone.", "head.")) for key in state_dict):
    return "torchvision_ssd300_vgg16"
  if "features.0.0.weight" in state_dict:  # Conv2dNormActivation: [conv, BN] per unit
    return "torchvision_mobilenet_v2"
  if "features.0.weight" in state_dict:
    return "torchvision_vgg16"
  if "0.weight" in state_dict:
    return "vgg16_reducedfc"
  if "layer1.0.conv1.weight" in state_dict:
    return ("torchvision_resnet50" if "layer1.0.conv3.weight" in state_dict
            else "torchvision_resnet34")
  raise ConversionError(f"unrecognised state_dict (first keys {sorted(state_dict)[:5]}); "
                        f"known sources: {list(SOURCES)}")


def _rules(source: str, shapes: Mapping[str, tuple], state_dict: Mapping[str, np.ndarray],
           ) -> tuple[list[Rule], set[str]]:
  """(rules, keys deliberately not converted) of ``source`` for a model of ``shapes``."""
  if source == "torchvision_ssd300_vgg16":
    return ssd300_vgg16_rules(shapes), set()
  if source == "torchvision_vgg16":
    return vgg16_rules(shapes, state_dict)
  if source == "vgg16_reducedfc":
    return vgg16_reducedfc_rules(shapes), set()
  if source == "torchvision_mobilenet_v2":
    return mobilenet_v2_rules(shapes), _dropped(state_dict, ("classifier.",))
  depth = source.removeprefix("torchvision_")
  return resnet_rules(depth, shapes), _dropped(state_dict, ("layer4.", "fc."))


def convert_state_dict(state_dict: Mapping[str, np.ndarray], weights: Mapping[str, Any],
                       model_name: str, source: str | None = None) -> dict[str, Any]:
  """Returns ``weights`` with every converted tensor replaced; the others keep their values.

  ``weights`` maps "/"-joined paths of the model's params and BatchNorm statistics
  (``checkpoint.flat_weights``) to arrays, or to shape-only placeholders such as
  jax.ShapeDtypeStruct, to check a state_dict before initialising anything. Raises
  ConversionError naming every missing, unexpected or mis-shaped key (with the expected shape)
  before anything is converted.
  """
  source = source or detect_source(state_dict)
  if source not in SOURCES:
    raise ConversionError(f"unknown source {source!r}; known sources: {list(SOURCES)}")
  if model_name not in MODELS[source]:
    raise ConversionError(f"{source} weights fit models {list(MODELS[source])}, "
                          f"not {model_name!r}")
  shapes = {key: tuple(value.shape) for key, value in weights.items()}
  rules, ignored = _rules(source, shapes, state_dict)
  converted = _apply(rules, ignored, state_dict, weights)
  skipped = sorted(key for key in ignored if not key.endswith(".num_batches_tracked"))
  if skipped:  # e.g. a classifier's fc layers
    logging.info("%s: dropped %d tensors of %s (%s has no such layers)", source, len(skipped),
                 ", ".join(sorted({key.split(".")[0] for key in skipped})), model_name)
  return converted


def _apply(rules: list[Rule], ignored: set[str], state_dict: Mapping[str, np.ndarray],
           weights: Mapping[str, Any]) -> dict[str, Any]:
  """Checks every rule, then applies them all (or raises, converting nothing)."""
  errors = [f"unexpected key {key!r} {tuple(state_dict[key].shape)}"
            for key in sorted(set(state_dict) - {r.source for r in rules} - ignored)]
  converted = {}
  for rule in rules:
    if rule.target not in weights:
      errors.append(f"{rule.source!r}: the model has no weight {rule.target!r}")
    elif rule.source not in state_dict:
      errors.append(f"missing key {rule.source!r} (expected shape {rule.source_shape})")
    elif tuple(state_dict[rule.source].shape) != rule.source_shape:
      errors.append(f"key {rule.source!r} has shape {tuple(state_dict[rule.source].shape)}, "
                    f"expected {rule.source_shape}")
    else:
      value = np.asarray(rule.transform(np.asarray(state_dict[rule.source], np.float32)))
      if value.shape != tuple(weights[rule.target].shape):
        errors.append(f"key {rule.source!r} converts to shape {value.shape} but "
                      f"{rule.target!r} has {tuple(weights[rule.target].shape)} "
                      "(config.model.width?)")
      converted[rule.target] = value
  if errors:
    raise ConversionError(f"{len(errors)} problem(s) converting the state_dict:\n  "
                          + "\n  ".join(errors))
  return {**weights, **converted}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state_dict from a ``.pth`` / ``.pt`` (needs torch: the ``convert`` extra) or an ``.npz``."""
  if not path.endswith(STATE_DICT_SUFFIXES):
    raise ConversionError(f"{path}: expected a state_dict file ending in "
                          f"{' or '.join(STATE_DICT_SUFFIXES)}")
  if path.endswith(".npz"):
    with np.load(path) as data:
      return {key: data[key] for key in data.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional dependency)
  except ImportError:
    raise ConversionError(f"{path}: reading a .pth needs torch, which is not installed: "
                          "pip install -e '.[convert]' (the `convert` extra), or save the "
                          "state_dict as .npz where torch is") from None
  state_dict = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state_dict, Mapping) or not all(
      isinstance(v, torch.Tensor) for v in state_dict.values()):
    raise ConversionError(f"{path}: expected a flat state_dict of tensors")
  return {key: value.detach().float().numpy() for key, value in state_dict.items()}


def converted_weights(config: ml_collections.ConfigDict, input_path: str,
                      source: str | None = None) -> dict[str, Any]:
  """The weights of ``config``'s model converted from the state_dict at ``input_path``.

  Checked against the model's shapes without initialising it; the weights the source does not
  cover are jax.ShapeDtypeStruct placeholders (``model_with`` initialises them).
  """
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  return convert_state_dict(read_state_dict(input_path), checkpoint.flat_weights(model),
                            config.model.name, source)


def model_with(config: ml_collections.ConfigDict, values: Mapping[str, Any],
               seed: int = 0) -> models.SSD:
  """The model of ``config`` holding ``values`` (from ``converted_weights``); the weights they
  do not cover get the model's initialisation with ``seed``."""
  build = lambda: models.create_model(config, nnx.Rngs(seed))  # noqa: E731
  if all(isinstance(value, np.ndarray) for value in values.values()):
    # Params and BatchNorm statistics are all a model holds: nothing left to initialise.
    model = nnx.eval_shape(build)
    checkpoint.set_weights(model, values)
    return model
  model = build()  # eager init compiles one RNG program per shape: only paid when needed
  initial = checkpoint.flat_weights(model)
  checkpoint.set_weights(model, {key: value if isinstance(value, np.ndarray) else initial[key]
                                 for key, value in values.items()})
  return model


def convert_file(config: ml_collections.ConfigDict, input_path: str, output_path: str,
                 source: str | None = None, seed: int = 0) -> None:
  """Imports ``input_path`` into the model of ``config`` and saves its weights at ``output_path``.

  The state_dict is checked against the model's shapes before anything is initialised; weights
  the source does not cover get the model's seeded initialisation.
  """
  values = converted_weights(config, input_path, source)
  checkpoint.save_weights(output_path, model_with(config, values, seed))


def main() -> None:
  """``python -m ssd_jax.convert``; flags are defined here so importing this module defines none."""
  config = config_flags.DEFINE_config_file("config", None, "Config of the target model.",
                                           lock_config=True)
  input_path = flags.DEFINE_string("input", None, ".pth, .pt or .npz state_dict to convert.")
  output = flags.DEFINE_string("output", None, "Directory of the orbax checkpoint to write.")
  source = flags.DEFINE_enum("source", None, SOURCES, "Format of --input; detected if unset.")
  seed = flags.DEFINE_integer("seed", 0, "Init seed of the weights the source does not cover.")
  flags.mark_flags_as_required(["config", "input", "output"])

  def run(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments {argv[1:]}")
    convert_file(config.value, input_path.value, output.value, source.value, seed.value)
    logging.info("wrote %s", os.path.abspath(output.value))
  app.run(run)


if __name__ == "__main__":
  main()
