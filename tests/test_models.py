"""Tests of the SSD models: parameter counts, output shapes against every config's priors, the
prior order of the heads, gradients, BatchNorm modes, mixed precision and the pooling/L2Norm
layers. Models are tiny (``config.model.width``) wherever the test does real computation."""

import functools
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssd_jax import config_utils, losses, matching, models, priors
from ssd_jax.models import heads, layers

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")


def load(name: str, *args):
  return config_utils.load_config(os.path.join(CONFIG_DIR, name + ".py"), *args)


def abstract_model(config) -> models.SSD:
  return nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))


@functools.cache
def unchanged_abstract_model(path: str, *args) -> models.SSD:
  """The abstract model of a config file as it is (eval_shape takes seconds on big models)."""
  return abstract_model(config_utils.load_config(path, *args))


def build(config, seed: int = 0) -> models.SSD:
  """The model of ``config`` with seeded host-side random params.

  Eager init compiles one RNG program per parameter shape (~0.3-0.5 s each on 2 CPU cores), so
  tests fill an abstract model instead: He-normal kernels, small biases, identity BatchNorm.
  """
  model = abstract_model(config)
  rng = np.random.default_rng(seed)
  for path, var in nnx.to_flat_state(nnx.state(model)):
    if path[-1] == "kernel":
      value = rng.normal(size=var.shape) * np.sqrt(2 / np.prod(var.shape[:-1]))
    elif path[-1] == "scale" and path[-2] == "conv4_3_norm":
      value = np.full(var.shape, 20.0)
    elif path[-1] in ("scale", "var"):
      value = np.ones(var.shape)
    elif path[-1] == "bias":
      value = 0.01 * rng.normal(size=var.shape)
    else:
      value = np.zeros(var.shape)
    var.set_value(jnp.asarray(value, var.dtype))
  return model


def count_params(model) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def conv_params(cin: int, cout: int, k: int) -> int:
  return k * k * cin * cout + cout


# SSD512 by hand from SSD300 (21 classes): conv12_1 (1x1, 256 -> 128) and conv12_2 (4x4,
# 128 -> 256); the 256-channel head of level 5 (conv10_2) predicts 6 boxes instead of 4 (2 more
# boxes: 8 loc + 42 class channels); and a new 256-channel head with 4 boxes (16 + 84 channels).
SSD512_PARAMS = (26_285_486 + conv_params(256, 128, 1) + conv_params(128, 256, 4)
                 + conv_params(256, 8, 3) + conv_params(256, 42, 3)
                 + conv_params(256, 16, 3) + conv_params(256, 84, 3))


@pytest.mark.parametrize("config_name,args,expected", [
    ("ssd300", (), 26_285_486),  # torchvision ssd300_vgg16(num_classes=21)
    ("ssd512", (), SSD512_PARAMS),  # = 27,188,676; torchvision's highres extractor + SSDHead too
    ("ssd300_resnet34", (), 14_167_342),  # torch structure, see test_convert_parity.py
    ("ssd300_resnet50", (), 15_428_142),
    ("ssdlite_mobilenetv2", (), 3_399_108),
    ("ssd300_torchvision_coco", (), 35_641_826),  # torchvision ssd300_vgg16() (91 classes)
])
def test_parameter_count(config_name, args, expected):
  path = os.path.join(CONFIG_DIR, config_name + ".py")
  assert count_params(unchanged_abstract_model(path, *args)) == expected


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py"))),
                         ids=os.path.basename)
def test_outputs_match_priors_of_every_config(path):
  config = config_utils.load_config(path)
  model = unchanged_abstract_model(path)
  size = config.model.image_size
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state,
                       jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  num_priors = priors.from_config(config).shape[0]
  assert out.loc.shape == (1, num_priors, 4)
  assert out.logits.shape == (1, num_priors, config.model.num_classes)
  assert out.loc.dtype == out.logits.dtype == jnp.float32
  assert [f.shape[1:3] for f in out.features] == [(s, s) for s in config.priors.feature_sizes]


def _centre_tap_head(config, channels: int = 4) -> heads.MultiBoxHead:
  """A head whose output channel j at a cell is (j + 1) * input channel 0 of that same cell."""
  boxes = priors.boxes_per_cell(config.priors.aspect_ratios)
  separable = config.model.name.startswith("ssdlite")
  head = nnx.eval_shape(lambda: heads.MultiBoxHead(
      [channels] * len(boxes), boxes, config.model.num_classes, separable=separable,
      rngs=nnx.Rngs(0)))
  for path, var in nnx.to_flat_state(nnx.state(head)):
    value = np.zeros(var.shape)
    if path[-1] == "kernel" and "depthwise" in path:
      value[1, 1] = 1.0  # [3, 3, 1, C]: identity at the centre tap only
    elif path[-1] == "kernel":
      centre = var.shape[0] // 2
      value[centre, centre, 0] = np.arange(1, var.shape[-1] + 1)
    elif path[-1] in ("scale", "var"):
      value[:] = 1.0
    var.set_value(jnp.asarray(value, var.dtype))
  head.eval()
  return head


@pytest.mark.parametrize("config_name", ["ssd300", "ssd512", "ssdlite_mobilenetv2"])
def test_head_rows_follow_prior_order(config_name):
  config = load(config_name)
  config.model.num_classes = 3
  head = _centre_tap_head(config)
  boxes = priors.boxes_per_cell(config.priors.aspect_ratios)
  all_priors = priors.from_config(config)
  sizes = config.priors.feature_sizes
  starts = np.cumsum([0] + [s * s * k for s, k in zip(sizes, boxes)])
  for level, size in enumerate(sizes):
    # Bottom-left and middle cells: a column-major or box-major flattening would move them.
    for y, x in {(size - 1, 0), (size // 2, size // 3)}:
      features = [jnp.zeros((1, s, s, 4)) for s in sizes]
      features[level] = features[level].at[0, y, x, 0].set(1.0)
      loc, logits = head(features)
      rows = np.flatnonzero(np.any(np.asarray(loc[0]) != 0, axis=-1))
      step = config.priors.steps[level] / config.model.image_size
      level_priors = all_priors[starts[level]:starts[level + 1]]
      centred = np.all(np.abs(level_priors[:, :2] - [(x + 0.5) * step, (y + 0.5) * step]) < 1e-5,
                       axis=-1)
      np.testing.assert_array_equal(rows, starts[level] + np.flatnonzero(centred))
      assert len(rows) == boxes[level]
      # Channel a * D + d of the cell is column d of its a-th box.
      for out, depth in ((loc, 4), (logits, config.model.num_classes)):
        values = np.asarray(out[0, rows]).ravel()
        np.testing.assert_allclose(values / values[0], np.arange(1, len(values) + 1), rtol=1e-5)
      assert np.count_nonzero(np.asarray(logits[0]).any(axis=-1)) == boxes[level]


def _random_targets(config, batch: int):
  """Match one ground truth per source map (a centred prior of that map) for every image."""
  all_priors = priors.from_config(config)
  boxes = priors.boxes_per_cell(config.priors.aspect_ratios)
  sizes = config.priors.feature_sizes
  starts = np.cumsum([0] + [s * s * k for s, k in zip(sizes, boxes)])
  centre_cells = [starts[m] + ((s // 2) * s + s // 2) * boxes[m] for m, s in enumerate(sizes)]
  gt = all_priors[centre_cells]  # cxcywh
  gt = np.concatenate([gt[:, :2] - gt[:, 2:] / 2, gt[:, :2] + gt[:, 2:] / 2], axis=-1)
  labels = 1 + np.arange(len(gt)) % (config.model.num_classes - 1)
  match = jax.vmap(lambda b, l: matching.match(b, l, jnp.ones(len(gt), bool),
                                               jnp.asarray(all_priors)))
  return match(jnp.tile(gt, (batch, 1, 1)), jnp.tile(labels, (batch, 1)))


@pytest.mark.parametrize("config_name,width", [
    ("ssd300", 0.125),
    pytest.param("ssd512", 0.125, marks=pytest.mark.slow),
    ("ssd300_resnet34", 0.125),
    pytest.param("ssd300_resnet50", 0.125, marks=pytest.mark.slow),
    ("ssdlite_mobilenetv2", 0.25),
])
@pytest.mark.usefixtures("fast_compile")
def test_every_parameter_gets_a_gradient(config_name, width):
  config = load(config_name)
  config.model.width = width
  model = build(config)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  size = config.model.image_size
  images = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  loc_targets, cls_targets = _random_targets(config, 2)

  @jax.jit
  def grads(params, rest):
    def loss_fn(params):
      # copy=True: the BatchStats of `rest` were created outside this grad trace.
      out = nnx.merge(graphdef, params, rest, copy=True)(images)
      return losses.multibox_loss(out.loc, out.logits, loc_targets, cls_targets)[0]
    return jax.value_and_grad(loss_fn)(params)

  loss, grad = grads(params, rest)
  assert np.isfinite(loss) and loss > 0
  zero = [path for path, g in nnx.to_flat_state(grad) if not np.any(np.asarray(g.get_value()))]
  assert not zero, f"parameters without gradient: {zero}"


@pytest.mark.usefixtures("fast_compile")
def test_batchnorm_updates_in_train_mode_only():
  config = load("ssd300_resnet34")
  config.model.width = 0.125
  model = build(config)
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3)) + 0.5

  def run(model, images):
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    @jax.jit
    def forward(params, stats, images):
      model = nnx.merge(graphdef, params, stats, copy=True)
      return model(images).logits, nnx.state(model, nnx.BatchStat)
    return forward(params, stats, images), stats

  model.train()
  (_, new_stats), old_stats = run(model, images)
  unchanged = [p for (p, a), (_, b) in zip(nnx.to_flat_state(old_stats),
                                           nnx.to_flat_state(new_stats))
               if np.array_equal(a.get_value(), b.get_value())]
  assert not unchanged, f"train mode left these batch_stats unchanged: {unchanged}"

  model.eval()
  (logits, new_stats), old_stats = run(model, images)
  for a, b in zip(jax.tree.leaves(old_stats), jax.tree.leaves(new_stats)):
    np.testing.assert_array_equal(a, b)
  # Eval mode normalises with the running statistics: an image's output ignores its batch mates.
  (alone, _), _ = run(model, images[:1])
  np.testing.assert_allclose(alone, logits[:1], rtol=1e-4, atol=1e-4)


def test_bfloat16_compute_keeps_float32_params():
  config = load("ssd300")
  config.model.width = 0.125
  reference = build(config)
  config.model.dtype = "bfloat16"
  model = build(config)
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
  images = jax.random.normal(jax.random.key(2), (1, 300, 300, 3))
  out = nnx.jit(lambda m, x: m(x))(model, images)
  expected = nnx.jit(lambda m, x: m(x))(reference, images)
  assert out.loc.dtype == out.logits.dtype == jnp.float32
  assert all(f.dtype == jnp.bfloat16 for f in out.features)
  for got, want in ((out.loc, expected.loc), (out.logits, expected.logits)):
    scale = float(jnp.max(jnp.abs(want)))
    assert float(jnp.max(jnp.abs(got - want))) < 0.05 * scale


def test_unknown_model_name_lists_known_models():
  config = load("ssd300")
  config.model.name = "ssd300_vgg19"
  with pytest.raises(ValueError, match="ssd300_vgg16.*ssdlite320_mobilenetv2"):
    models.create_model(config, nnx.Rngs(0))


def test_max_pool_ceil_mode_matches_pytorch_semantics():
  x = jnp.arange(25.0).reshape(1, 5, 5, 1)
  np.testing.assert_array_equal(layers.max_pool(x, 2, 2, ceil_mode=True)[0, ..., 0],
                                [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
  assert layers.max_pool(x, 2, 2)[0, ..., 0].shape == (2, 2)
  # PyTorch drops a last window starting in the padding: 5 + 2 * 1 padding -> 3 windows, not 4.
  np.testing.assert_array_equal(layers.max_pool(x, 2, 2, padding=1, ceil_mode=True)[0, 0, :, 0],
                                [0, 2, 4])
  assert layers.max_pool(jnp.zeros((1, 75, 75, 1)), 2, 2, ceil_mode=True).shape[1:3] == (38, 38)
  assert layers.max_pool(jnp.zeros((1, 19, 19, 1)), 3, 1, padding=1).shape[1:3] == (19, 19)


def test_l2norm_scales_unit_vectors():
  norm = layers.L2Norm(8)
  x = jax.random.normal(jax.random.key(3), (2, 3, 3, 8)) * 100
  y = norm(x)
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), 20.0, rtol=1e-5)
  np.testing.assert_allclose(y / jnp.linalg.norm(y, axis=-1, keepdims=True),
                             x / jnp.linalg.norm(x, axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)


def np_max_pool_first_max(x: np.ndarray, k: int, ceil_mode: bool, g: np.ndarray | None = None):
  """Plain-loop k x k / stride k max pool of [B, H, W, C] (-inf padding in ceil mode) and, given
  the output gradient ``g``, the input gradient with each window's to its first maximum (Caffe)."""
  b, h, w, c = x.shape
  rows, cols = ((-(-n // k) if ceil_mode else n // k) for n in (h, w))
  y = np.full((b, rows, cols, c), -np.inf, x.dtype)
  grad = np.zeros_like(x)
  for n, i, j, ch in np.ndindex(b, rows, cols, c):
    best = None
    for dy, dx in np.ndindex(k, k):
      r, s = i * k + dy, j * k + dx
      if r < h and s < w and (best is None or x[n, r, s, ch] > x[n, best[0], best[1], ch]):
        best = (r, s)
    y[n, i, j, ch] = x[n, best[0], best[1], ch]
    if g is not None:
      grad[n, best[0], best[1], ch] += g[n, i, j, ch]
  return y, grad


def reduce_window_max_pool(x, k: int, ceil_mode: bool):
  """The lax.reduce_window formulation the tile max replaced (select-and-scatter gradient)."""
  pad = lambda n: (0, (-n) % k if ceil_mode else 0)  # noqa: E731
  if not ceil_mode:
    x = x[:, :x.shape[1] // k * k, :x.shape[2] // k * k]
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, k, k, 1),
                               ((0, 0), pad(x.shape[1]), pad(x.shape[2]), (0, 0)))


@pytest.mark.parametrize("shape,k,ceil_mode", [((2, 75, 75, 3), 2, True), ((1, 6, 7, 2), 2, False),
                                               ((1, 7, 5, 2), 3, True), ((1, 8, 8, 1), 2, True)])
def test_tile_max_pool_values_and_first_max_gradient(shape, k, ceil_mode):
  rng = np.random.default_rng(0)
  # ReLU of small integers: most windows hold ties, many are all zero.
  x = np.maximum(rng.integers(-2, 3, shape), 0).astype(np.float32)
  y_ref, _ = np_max_pool_first_max(x, k, ceil_mode)
  g = rng.normal(size=y_ref.shape).astype(np.float32)
  _, grad_ref = np_max_pool_first_max(x, k, ceil_mode, g)
  pool = lambda v: layers.max_pool(v, k, k, ceil_mode=ceil_mode)  # noqa: E731
  y, vjp = jax.vjp(pool, jnp.asarray(x))
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], grad_ref)
  # Same values and gradient as the select-and-scatter pool, ties included.
  y_rw, vjp_rw = jax.vjp(lambda v: reduce_window_max_pool(v, k, ceil_mode), jnp.asarray(x))
  np.testing.assert_array_equal(y, y_rw)
  np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], vjp_rw(jnp.asarray(g))[0])


def test_tile_max_pool_jits_in_bfloat16():
  x = jax.random.normal(jax.random.key(0), (1, 5, 5, 4), jnp.bfloat16)
  y, grad = jax.jit(jax.value_and_grad(lambda v: layers.max_pool(v, 2, 2, ceil_mode=True)
                                       .astype(jnp.float32).sum()))(x)
  # Each of the 3 x 3 windows of each of the 4 channels sends its 1 to one element.
  assert grad.dtype == jnp.bfloat16 and float(grad.astype(jnp.float32).sum()) == 3 * 3 * 4


@pytest.mark.parametrize("shape,window,stride,padding", [((2, 19, 19, 3), 3, 1, 1),
                                                         ((1, 16, 15, 2), 3, 2, 1),
                                                         ((1, 9, 9, 2), 3, 2, 0)])
def test_window_max_equals_reduce_window_with_its_gradient(shape, window, stride, padding):
  """pool5 (3x3 / 1, pad 1) and ResNet's stem pool (3x3 / 2, pad 1): values and gradients equal
  to lax.reduce_window's bit for bit, ties and negative values (an all-negative border) included."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.integers(-3, 2, shape).astype(np.float32))
  pads = ((padding, padding), (padding, padding))
  reference = lambda v: jax.lax.reduce_window(  # noqa: E731
      v, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
      ((0, 0), *pads, (0, 0)))
  y, vjp = jax.vjp(lambda v: layers.max_pool(v, window, stride, padding=padding), x)
  y_ref, vjp_ref = jax.vjp(reference, x)
  g = jnp.asarray(rng.normal(size=y_ref.shape).astype(np.float32))
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])
