"""Tests of the weight import (no torch needed): key mapping against a hand-written table of
torchvision's ssd300_vgg16 names, the fc6/fc7 subsampling, error reporting, params-only
checkpoints and the command line."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssd_jax import checkpoint, config_utils, convert, models

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
  """Flat params of the model of ``config``, zero-filled (shapes are all conversion needs)."""
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  return {"/".join(map(str, p)): np.zeros(v.shape, np.float32)
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def concrete_model(config, values: dict[str, np.ndarray]) -> models.SSD:
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
    var.set_value(jnp.zeros(var.shape))
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
