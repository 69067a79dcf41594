"""Tests of the weight import (no torch needed): key mapping against hand-written tables of
torchvision's ssd300_vgg16, ResNet and MobileNetV2 names (test_convert_parity.py checks the
tables against torchvision itself), the fc6/fc7 subsampling, error reporting, weights
checkpoints, ``train.init_from`` and the command line."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from ssd_jax import checkpoint, config_utils, convert, models
from ssd_jax.config_validation import ConfigError

ROOT = os.path.join(os.path.dirname(__file__), "..")

# torchvision ssd300_vgg16 module prefixes -> our layer names (from its printed state_dict).
TORCHVISION_SSD300 = {
    **{f"backbone.features.{i}": name for i, name in zip(
        (0, 2, 5, 7, 10, 12, 14, 17, 19, 21),
        ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
         "conv4_1", "conv4_2", "conv4_3"))},
    "backbone.extra.0.1": "conv5_1", "backbone.extra.0.3": "conv5_2",
    "backbone.extra.0.5": "conv5_3", "backbone.extra.0.7.1": "fc6", "backbone.extra.0.7.3": "fc7",
    "backbone.extra.1.0": "conv8_1", "backbone.extra.1.2": "conv8_2",
    "backbone.extra.2.0": "conv9_1", "backbone.extra.2.2": "conv9_2",
    "backbone.extra.3.0": "conv10_1", "backbone.extra.3.2": "conv10_2",
    "backbone.extra.4.0": "conv11_1", "backbone.extra.4.2": "conv11_2",
}


def load(name: str):
  return config_utils.load_config(os.path.join(ROOT, "configs", name + ".py"))


def tiny(name: str = "ssd300_torchvision_coco"):
  config = load(name)
  config.model.width = 0.125
  return config


def abstract_params(config) -> dict[str, np.ndarray]:
  """Flat weights (params, BatchNorm statistics) of ``config``'s model, zero-filled (shapes are
  all conversion needs)."""
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  return {key: np.zeros(value.shape, np.float32)
          for key, value in checkpoint.flat_weights(model).items()}


def concrete_model(config, values: dict[str, np.ndarray]) -> models.SSD:
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  checkpoint.set_weights(model, values)
  return model


def torchvision_state_dict(params: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
  """A random state_dict with torchvision ssd300_vgg16's keys and PyTorch layouts."""
  rng = np.random.default_rng(seed)
  random = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
  state = {"backbone.scale_weight": random(*params["backbone/conv4_3_norm/scale"].shape)}
  layers = {prefix: f"backbone/{name}" for prefix, name in TORCHVISION_SSD300.items()}
  for level in range(6):
    layers[f"head.regression_head.module_list.{level}"] = f"head/loc/{level}"
    layers[f"head.classification_head.module_list.{level}"] = f"head/conf/{level}"
  for prefix, target in layers.items():
    kh, kw, cin, cout = params[f"{target}/kernel"].shape
    state[f"{prefix}.weight"] = random(cout, cin, kh, kw)
    state[f"{prefix}.bias"] = random(cout)
  return state


def test_torchvision_ssd300_keys_land_on_the_right_params():
  params = abstract_params(tiny())
  state = torchvision_state_dict(params)
  converted = convert.convert_state_dict(state, params, "ssd300_vgg16")
  assert convert.detect_source(state) == "torchvision_ssd300_vgg16"
  np.testing.assert_array_equal(converted["backbone/conv4_3_norm/scale"],
                                state["backbone.scale_weight"])
  for prefix, name in TORCHVISION_SSD300.items():
    weight, kernel = state[f"{prefix}.weight"], converted[f"backbone/{name}/kernel"]
    o, i, y, x = (d - 1 for d in weight.shape)  # a corner element: no transpose can fake it
    assert kernel[y, x, i, o] == weight[o, i, y, x]
    np.testing.assert_array_equal(converted[f"backbone/{name}/bias"], state[f"{prefix}.bias"])
  weight = state["head.classification_head.module_list.5.weight"]
  np.testing.assert_array_equal(converted["head/conf/5/kernel"], weight.transpose(2, 3, 1, 0))
  changed = [k for k in params if np.any(converted[k] != params[k])]
  assert sorted(changed) == sorted(params), "every param is converted"


def test_bad_state_dict_names_every_offending_key(tmp_path):
  params = abstract_params(tiny())
  state = torchvision_state_dict(params)
  expected_fc7 = state.pop("backbone.extra.0.7.3.weight").shape
  state["backbone.extra.9.weight"] = np.zeros(3, np.float32)
  state["head.regression_head.module_list.2.bias"] = np.zeros(5, np.float32)
  with pytest.raises(convert.ConversionError) as error:
    convert.convert_state_dict(state, params, "ssd300_vgg16")
  message = str(error.value)
  assert "3 problem(s)" in message
  assert f"missing key 'backbone.extra.0.7.3.weight' (expected shape {expected_fc7})" in message
  assert "unexpected key 'backbone.extra.9.weight'" in message
  assert "'head.regression_head.module_list.2.bias' has shape (5,), expected (24,)" in message
  # Nothing is written when the input is bad.
  np.savez(tmp_path / "bad.npz", **state)
  with pytest.raises(convert.ConversionError):
    convert.convert_file(tiny(), str(tmp_path / "bad.npz"), str(tmp_path / "ckpt"))
  assert not (tmp_path / "ckpt").exists()


def test_wrong_class_count_and_wrong_model_are_reported():
  config = tiny()
  state = torchvision_state_dict(abstract_params(config))
  config.model.num_classes = 21
  with pytest.raises(convert.ConversionError, match="classification_head.module_list.0.weight"):
    convert.convert_state_dict(state, abstract_params(config), "ssd300_vgg16")
  with pytest.raises(convert.ConversionError, match="fit models .*ssd300_vgg16"):
    convert.convert_state_dict(state, {}, "ssd300_resnet34")
  with pytest.raises(convert.ConversionError, match="known sources"):
    convert.detect_source({"model.conv.weight": np.zeros(1)})


def test_fc6_fc7_subsampling_follows_caffe_fc_reduced():
  rules = {r.target: r for r in convert._fc_reduced_rules()}  # pylint: disable=protected-access
  w6 = np.random.default_rng(0).normal(size=(8, 2 * 49))  # 8 filters, 2 input channels, 7x7
  fc6 = rules["backbone/fc6/kernel"].transform(w6)
  assert fc6.shape == (3, 3, 2, 2)
  for y, x, i, o in np.ndindex(fc6.shape):
    assert fc6[y, x, i, o] == w6[4 * o, i * 49 + 3 * y * 7 + 3 * x]
  w7 = np.arange(64.0).reshape(8, 8)
  fc7 = rules["backbone/fc7/kernel"].transform(w7)
  np.testing.assert_array_equal(fc7[0, 0], w7[::4, ::4].T)
  np.testing.assert_array_equal(rules["backbone/fc6/bias"].transform(np.arange(8)), [0, 4])


def _vgg_features(params, prefix: str, indices, seed: int = 1) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  state = {}
  names = [f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
  for index, name in zip(indices, names):
    kh, kw, cin, cout = params[f"backbone/{name}/kernel"].shape
    state[f"{prefix}{index}.weight"] = rng.normal(size=(cout, cin, kh, kw)).astype(np.float32)
    state[f"{prefix}{index}.bias"] = rng.normal(size=cout).astype(np.float32)
  return state


VGG_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def test_vgg16_without_usable_classifier_keeps_fc_init():
  params = abstract_params(tiny("ssd512"))
  state = _vgg_features(params, "features.", VGG_INDICES)
  state.update({f"classifier.{i}.{p}": np.full(3, np.nan, np.float32)
                for i in (0, 3, 6) for p in ("weight", "bias")})
  converted = convert.convert_state_dict(state, params, "ssd512_vgg16")
  np.testing.assert_array_equal(converted["backbone/conv5_3/bias"], state["features.28.bias"])
  assert not np.any(converted["backbone/fc6/kernel"])  # untouched (zeros here)
  assert not np.any(converted["backbone/conv12_2/kernel"])


def test_vgg16_reducedfc_converts_fc6_fc7():
  params = abstract_params(tiny("ssd300"))
  state = _vgg_features(params, "", VGG_INDICES)
  for index, name in ((31, "fc6"), (33, "fc7")):
    kh, kw, cin, cout = params[f"backbone/{name}/kernel"].shape
    state[f"{index}.weight"] = np.ones((cout, cin, kh, kw), np.float32)
    state[f"{index}.bias"] = np.ones(cout, np.float32)
  assert convert.detect_source(state) == "vgg16_reducedfc"
  converted = convert.convert_state_dict(state, params, "ssd300_vgg16")
  assert np.all(converted["backbone/fc6/kernel"] == 1)
  assert np.all(converted["backbone/fc7/bias"] == 1)


def test_weights_checkpoint_round_trip(tmp_path):
  config = tiny()
  params = abstract_params(config)
  values = convert.convert_state_dict(torchvision_state_dict(params), params, "ssd300_vgg16")
  checkpoint.save_weights(str(tmp_path / "ckpt"), concrete_model(config, values))
  restored = concrete_model(config, params)
  checkpoint.load_weights(str(tmp_path / "ckpt"), restored)
  for key, value in checkpoint.flat_weights(restored).items():
    np.testing.assert_array_equal(value, values[key])
  other = tiny("ssd512")
  with pytest.raises(checkpoint.WeightsMismatchError,
                     match="missing weight 'backbone/conv12_1/bias'"):
    checkpoint.load_weights(str(tmp_path / "ckpt"), concrete_model(other, abstract_params(other)))


def test_command_line_writes_a_loadable_checkpoint(tmp_path):
  config = tiny()
  state = torchvision_state_dict(abstract_params(config))
  np.savez(tmp_path / "ssd300.npz", **state)
  subprocess.run([sys.executable, "-m", "ssd_jax.convert",
                  f"--config={ROOT}/configs/ssd300_torchvision_coco.py",
                  "--config.model.width=0.125", f"--input={tmp_path}/ssd300.npz",
                  f"--output={tmp_path}/ckpt"], check=True, cwd=ROOT)
  model = concrete_model(config, abstract_params(config))
  checkpoint.load_weights(str(tmp_path / "ckpt"), model)
  np.testing.assert_array_equal(checkpoint.flat_weights(model)["head/loc/3/bias"],
                                state["head.regression_head.module_list.3.bias"])


# torchvision classifier layouts, written from torchvision/models/resnet.py and mobilenetv2.py:
# block counts of layer1..layer4, and MobileNetV2's inverted_residual_setting (t, c, n, s).
RESNET_BLOCKS = {"resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3)}
MOBILENET_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                        (6, 160, 3, 2), (6, 320, 1, 1))


class _StateDict:
  """Builds a random torchvision-style state_dict and records where each unit should land."""

  def __init__(self, seed: int = 0):
    self.rng = np.random.default_rng(seed)
    self.state: dict[str, np.ndarray] = {}
    self.targets: dict[str, str | None] = {}  # conv / BN module -> our ConvBN path (None: dropped)

  def random(self, *shape: int) -> np.ndarray:
    return self.rng.normal(size=shape).astype(np.float32)

  def conv(self, name: str, cout: int, cin: int, k: int, target: str | None) -> None:
    self.state[f"{name}.weight"] = self.random(cout, cin, k, k)
    self.targets[name] = target and f"{target}/conv"

  def bn(self, name: str, channels: int, target: str | None) -> None:
    self.state.update({f"{name}.weight": self.random(channels),
                       f"{name}.bias": self.random(channels),
                       f"{name}.running_mean": self.random(channels),
                       f"{name}.running_var": self.rng.uniform(0.5, 2, channels).astype(np.float32),
                       f"{name}.num_batches_tracked": np.array(7, np.int64)})
    self.targets[name] = target and f"{target}/bn"

  def unit(self, conv: str, bn: str, cout: int, cin: int, k: int, target: str | None) -> None:
    self.conv(conv, cout, cin, k, target)
    self.bn(bn, cout, target)


def torchvision_resnet(depth: str, seed: int = 0) -> _StateDict:
  """torchvision ``resnet34`` / ``resnet50`` (v1.5) state_dict: stem, layer1..4, fc."""
  sd = _StateDict(seed)
  bottleneck = depth == "resnet50"
  sd.unit("conv1", "bn1", 64, 3, 7, "backbone/stem")
  cin = 64
  for stage, (width, count) in enumerate(zip((64, 128, 256, 512), RESNET_BLOCKS[depth]), 1):
    for index in range(count):
      theirs = f"layer{stage}.{index}"
      ours = None if stage == 4 else f"backbone/layer{stage}/{index}"  # SSD drops layer4
      at = lambda name: ours and f"{ours}/{name}"  # noqa: E731
      cout = width * 4 if bottleneck else width
      if bottleneck:
        sd.unit(f"{theirs}.conv1", f"{theirs}.bn1", width, cin, 1, at("conv1"))
        sd.unit(f"{theirs}.conv2", f"{theirs}.bn2", width, width, 3, at("conv2"))
        sd.unit(f"{theirs}.conv3", f"{theirs}.bn3", cout, width, 1, at("conv3"))
      else:
        sd.unit(f"{theirs}.conv1", f"{theirs}.bn1", width, cin, 3, at("conv1"))
        sd.unit(f"{theirs}.conv2", f"{theirs}.bn2", width, width, 3, at("conv2"))
      if (stage > 1 and index == 0) or cin != cout:
        sd.unit(f"{theirs}.downsample.0", f"{theirs}.downsample.1", cout, cin, 1,
                at("downsample"))
      cin = cout
  sd.state.update({"fc.weight": sd.random(1000, cin), "fc.bias": sd.random(1000)})
  return sd


def torchvision_mobilenet_v2(seed: int = 0) -> _StateDict:
  """torchvision ``mobilenet_v2`` state_dict: features.0..18, classifier.1."""
  sd = _StateDict(seed)
  sd.unit("features.0.0", "features.0.1", 32, 3, 3, "backbone/stem")
  cin, index = 32, 0
  for t, c, n, _ in MOBILENET_V2_SETTING:
    for _ in range(n):
      prefix, hidden, ours = f"features.{index + 1}.conv", cin * t, f"backbone/blocks/{index}"
      position = 0
      if t != 1:
        sd.unit(f"{prefix}.0.0", f"{prefix}.0.1", hidden, cin, 1, f"{ours}/expand")
        position = 1
      sd.unit(f"{prefix}.{position}.0", f"{prefix}.{position}.1", hidden, 1, 3,
              f"{ours}/depthwise")
      sd.unit(f"{prefix}.{position + 1}", f"{prefix}.{position + 2}", c, hidden, 1,
              f"{ours}/project")
      cin, index = c, index + 1
  sd.unit("features.18.0", "features.18.1", 1280, cin, 1, "backbone/last")
  sd.state.update({"classifier.1.weight": sd.random(1000, 1280),
                   "classifier.1.bias": sd.random(1000)})
  return sd


def assert_landed(sd: _StateDict, converted: dict[str, np.ndarray], params) -> None:
  """Every recorded unit sits at its target, transposed; everything else keeps its value."""
  landed = set()
  for module, target in sd.targets.items():
    if target is None:
      continue
    if target.endswith("/conv"):
      weight, kernel = sd.state[f"{module}.weight"], converted[f"{target}/kernel"]
      o, i, y, x = (d - 1 for d in weight.shape)  # a corner element: no transpose can fake it
      assert kernel[y, x, i, o] == weight[o, i, y, x], module
      np.testing.assert_array_equal(kernel, weight.transpose(2, 3, 1, 0))
      landed.add(f"{target}/kernel")
    else:
      for theirs, ours in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
                           ("running_var", "var")):
        np.testing.assert_array_equal(converted[f"{target}/{ours}"],
                                      sd.state[f"{module}.{theirs}"])
        landed.add(f"{target}/{ours}")
  backbone = {k for k in params if k.startswith("backbone/") and "/extras/" not in k}
  assert landed == backbone, "every backbone weight but the extras' comes from the state_dict"
  assert all(not np.any(converted[k]) for k in set(params) - landed), "the others are untouched"


@pytest.mark.parametrize("config_name, depth", [("ssd300_resnet34", "resnet34"),
                                                ("ssd300_resnet50", "resnet50")])
def test_torchvision_resnet_lands_on_the_backbone(config_name, depth, caplog):
  config = load(config_name)
  params = abstract_params(config)
  sd = torchvision_resnet(depth)
  assert convert.detect_source(sd.state) == f"torchvision_{depth}"
  with caplog.at_level(logging.INFO):
    converted = convert.convert_state_dict(sd.state, params, config.model.name)
  assert_landed(sd, converted, params)
  assert "dropped" in caplog.text and "fc, layer4" in caplog.text
  other = "ssd300_resnet50" if depth == "resnet34" else "ssd300_resnet34"
  with pytest.raises(convert.ConversionError, match=f"torchvision_{depth} weights fit models"):
    convert.convert_state_dict(sd.state, params, other)


def test_torchvision_mobilenet_v2_lands_on_the_backbone(caplog):
  config = load("ssdlite_mobilenetv2")
  params = abstract_params(config)
  sd = torchvision_mobilenet_v2()
  assert convert.detect_source(sd.state) == "torchvision_mobilenet_v2"
  with caplog.at_level(logging.INFO):
    converted = convert.convert_state_dict(sd.state, params, config.model.name)
  assert_landed(sd, converted, params)
  assert "dropped 2 tensors of classifier" in caplog.text
  # The running statistics end up in the model's BatchNorm state, not only in a dict.
  model = concrete_model(config, converted)
  stats = {"/".join(map(str, p)): v.get_value()
           for p, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}
  np.testing.assert_array_equal(stats["backbone/blocks/13/expand/bn/var"],
                                sd.state["features.14.conv.0.1.running_var"])


def test_bad_backbone_state_dict_names_every_key_and_converts_nothing(tmp_path):
  config = load("ssd300_resnet34")
  params = abstract_params(config)
  state = torchvision_resnet("resnet34").state
  del state["layer2.0.downsample.1.running_var"]
  state["layer3.9.conv1.weight"] = np.zeros((256, 256, 3, 3), np.float32)
  state["layer1.1.bn2.weight"] = np.zeros(65, np.float32)
  with pytest.raises(convert.ConversionError) as error:
    convert.convert_state_dict(state, params, "ssd300_resnet34")
  message = str(error.value)
  assert "3 problem(s)" in message
  assert "missing key 'layer2.0.downsample.1.running_var' (expected shape (128,))" in message
  assert "unexpected key 'layer3.9.conv1.weight'" in message
  assert "'layer1.1.bn2.weight' has shape (65,), expected (64,)" in message
  np.savez(tmp_path / "bad.npz", **state)
  with pytest.raises(convert.ConversionError):
    convert.convert_file(config, str(tmp_path / "bad.npz"), str(tmp_path / "ckpt"))
  assert not (tmp_path / "ckpt").exists()


def test_pth_without_torch_names_the_convert_extra(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  with pytest.raises(convert.ConversionError, match=r"needs torch.*\[convert\]"):
    convert.read_state_dict(str(tmp_path / "vgg16.pth"))
  with pytest.raises(convert.ConversionError, match="ending in .pth or .pt or .npz"):
    convert.read_state_dict(str(tmp_path / "vgg16.bin"))


def test_init_from_converts_a_state_dict_file_on_the_fly(tmp_path):
  # Imported here: train brings TensorFlow, and test_convert_parity.py (which imports this
  # module) must import torch before TensorFlow is loaded, or torchvision's import crashes.
  from ssd_jax import train  # pylint: disable=g-import-not-at-top
  config = tiny()
  params = abstract_params(config)
  state = torchvision_state_dict(params)
  np.savez(tmp_path / "ssd300.npz", **state)
  config.train.init_from = str(tmp_path / "ssd300.npz")
  model = train.initial_model(config)
  expected = convert.convert_state_dict(state, params, "ssd300_vgg16")
  for key, value in checkpoint.flat_weights(model).items():
    np.testing.assert_array_equal(value, expected[key])
  # A file that does not fit: one ConfigError naming the field and every bad key.
  state["head.classification_head.module_list.1.bias"] = np.zeros(3, np.float32)
  np.savez(tmp_path / "bad.npz", **state)
  config.train.init_from = str(tmp_path / "bad.npz")
  with pytest.raises(ConfigError, match=r"(?s)init_from=.*bad.npz.*module_list.1.bias' has shape"):
    train.initial_model(config)
