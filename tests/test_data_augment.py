"""The host's augmentation ops (draws, window and boxes; eager == tf.data, patch constraints,
valid boxes, flips, statistics of the draws) and, through ``pixel_augment``, what they make of the
pixels: boxes on the image content, the photometric ranges, Caffe's hue clamp."""

import os

import jax
import numpy as np
import pytest
import tensorflow as tf

from ssd_jax import config_utils, pixel_augment
from ssd_jax.data import augment

import tf_reference as reference  # the previous tf.data pixel ops

_CONFIG = config_utils.load_config(os.path.join(os.path.dirname(__file__), "..", "configs",
                                                "ssd300.py"))
_CONFIG.model.image_size = 64
_CONFIG.data.max_image_size = 128
_RED, _BLUE = (250, 10, 10), (10, 10, 250)


_BOXES = ((0.1, 0.2, 0.5, 0.6), (0.3, 0.3, 0.9, 0.8), (0.0, 0.0, 1.0, 1.0))


def _example(seed: int = 0, boxes=_BOXES, height: int = 45, width: int = 60) -> dict:
  rng = np.random.default_rng(seed)
  return {"image": tf.constant(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)),
          "boxes": tf.constant(boxes, tf.float32), "labels": tf.range(1, len(boxes) + 1),
          "difficult": tf.constant([False, True, False][:len(boxes)]),
          "seed": tf.constant([seed, 7], tf.int64)}


def _ops() -> dict[str, augment.Op]:
  train = augment.train_ops(_CONFIG)
  return {"expand": train[0], "patch": train[1], "flip": train[2], "method": train[3],
          "photometric": train[4], "fit_canvas": train[5],
          "all": lambda e: augment.apply(train, e),
          "eval": lambda e: augment.apply(augment.eval_ops(_CONFIG), e)}


def _options(methods=("bilinear",), fill=(0.0, 0.0, 0.0), clamp=False, size=64):
  """Device options whose normalisation is the identity (mean 0, std 1/255): 0..255 pixels."""
  return pixel_augment.Options(size=size, methods=tuple(methods), fill=tuple(fill),
                               mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3,
                               hue_clamp_below_zero=clamp, channel_swap=False)


def _on_device(example: dict, options: pixel_augment.Options) -> np.ndarray:
  """The device's pixel work on one example drawn by the host ops -> float32 [S, S, 3]; absent
  draws are neutral (whole image, the first method, no distortion)."""
  image = np.asarray(example["image"])
  neutral = {"window": (0.0, 0.0, 1.0, 1.0), "method": 0, "photometric": (0, 1, 1, 1, 0),
             "channel_order": (0, 1, 2)}
  drawn = {key: np.asarray(example.get(key, value)) for key, value in neutral.items()}
  return np.asarray(_augment_one(
      image, np.int32(image.shape[:2]), drawn["window"].astype(np.float32),
      drawn["method"].astype(np.int32), drawn["photometric"].astype(np.float32),
      drawn["channel_order"].astype(np.int32), options))


_augment_one = jax.jit(pixel_augment.augment_one, static_argnums=6)


@pytest.mark.parametrize("name", list(_ops()))
def test_op_gives_the_same_result_eagerly_and_in_tf_data(name):
  op = _ops()[name]
  for seed in range(3):
    example = _example(seed)
    eager = op(example)
    (graph,) = tf.data.Dataset.from_tensors(example).map(op).as_numpy_iterator()
    assert set(eager) == set(graph)
    for key in eager:
      np.testing.assert_allclose(eager[key].numpy(), graph[key], rtol=1e-5, atol=1e-4, err_msg=key)


@pytest.mark.parametrize("min_iou", [0.1, 0.3, 0.5, 0.7, 0.9, 0.0])
def test_min_iou_patch_satisfies_its_constraint(min_iou):
  boxes = tf.constant([[0.1, 0.1, 0.45, 0.5], [0.02, 0.03, 0.98, 0.97]])
  chosen = 0
  for seed in range(40):
    patch, sampler = augment.sample_patch_box(boxes, tf.constant([seed, 1], tf.int64), False,
                                              (min_iou,), (0.3, 1.0), (0.5, 2.0), 50)
    if sampler.numpy() == -1:  # no trial succeeded: the whole image
      np.testing.assert_array_equal(patch, [0, 0, 1, 1])
      continue
    chosen += 1
    width, height = (patch[2:] - patch[:2]).numpy()
    assert 0.3 ** 2 - 1e-5 <= width * height <= 1 + 1e-5
    assert 0.5 - 1e-5 <= width / height <= 2 + 1e-5
    assert (patch >= 0).numpy().all() and (patch <= 1 + 1e-6).numpy().all()
    assert augment._iou(patch[None], boxes).numpy().max() >= min_iou
    assert augment._centres_inside(boxes, patch[None]).numpy().any()
  assert chosen >= 5  # 50 trials are often not enough for the strict samplers


def test_patch_keeps_boxes_whose_centre_is_inside_clipped_to_it():
  op = augment.sample_patch(False, (0.3,), (0.3, 1.0), (0.5, 2.0), 50)
  boxes = np.array([[0.1, 0.1, 0.45, 0.5], [0.5, 0.4, 0.95, 0.9], [0.05, 0.7, 0.2, 0.95]],
                   np.float32)
  for seed in range(20):
    out = op(_example(seed, boxes))
    patch = out["window"].numpy()  # the window started as the unit square
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = ((centres > patch[:2]) & (centres < patch[2:])).all(axis=1)
    expected = (np.clip(boxes[inside], np.tile(patch[:2], 2), np.tile(patch[2:], 2)) -
                np.tile(patch[:2], 2)) / np.tile(patch[2:] - patch[:2], 2)
    np.testing.assert_allclose(out["boxes"], expected, atol=1e-5)
    np.testing.assert_array_equal(out["labels"], np.arange(1, 4)[inside])


def test_boxes_stay_in_the_unit_square_and_never_invert():
  ops = augment.train_ops(_CONFIG)
  boxes = ((0.0, 0.0, 0.02, 0.03), (0.97, 0.96, 1.0, 1.0), (0.2, 0.1, 0.8, 0.95),
           (0.0, 0.0, 1.0, 1.0))
  for seed in range(60):
    example = {**_example(seed, boxes), "difficult": tf.zeros([4], tf.bool)}
    out = augment.apply(ops, example)
    b = out["boxes"].numpy()
    assert (b >= 0).all() and (b <= 1).all(), b
    assert (b[:, 2:] > b[:, :2]).all(), b
    assert len(b) >= 1 and len(b) == len(out["labels"]) == len(out["difficult"])
    np.testing.assert_array_equal(out["image"], example["image"])  # pixels: on the device
    np.testing.assert_array_equal(out["image_size"], [45, 60])


def test_flipping_twice_is_the_identity():
  flip = augment.horizontal_flip(1.0)
  example = augment.expand(1.0, 2.0)(_example(3))
  twice = flip(flip(example))
  np.testing.assert_array_equal(twice["window"], example["window"])
  np.testing.assert_allclose(twice["boxes"], example["boxes"], atol=1e-6)
  np.testing.assert_array_equal(_on_device(twice, _options()), _on_device(example, _options()))
  once = _on_device(flip(example), _options())
  np.testing.assert_allclose(once, _on_device(example, _options())[:, ::-1], atol=1e-2)


def _bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
  """Reference bilinear sampling of [H, W, C] at pixel coordinates ys [S] x xs [S]."""
  y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
  y1, x1 = np.minimum(y0 + 1, image.shape[0] - 1), np.minimum(x0 + 1, image.shape[1] - 1)
  wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
  top = image[y0][:, x0] * (1 - wx) + image[y0][:, x1] * wx
  bottom = image[y1][:, x0] * (1 - wx) + image[y1][:, x1] * wx
  return top * (1 - wy) + bottom * wy


def test_resize_samples_pixel_centres_of_the_window():
  example = _example(1)
  image = example["image"].numpy().astype(np.float64)
  centres = (np.arange(64) + 0.5) / 64
  options = _options(fill=(1, 2, 3))
  out = _on_device(example, options)
  np.testing.assert_allclose(out, _bilinear(image, centres * 44, centres * 59), atol=1e-2)
  window = (0.5, -0.5, 1.5, 0.5)  # only the bottom left quarter shows the image
  out = _on_device({**example, "window": window}, options)
  u = 0.5 + centres  # x across the window, in image units
  np.testing.assert_allclose(out[32:, :32],
                             _bilinear(image, (centres[32:] - 0.5) * 44, u[:32] * 59), atol=1e-2)
  np.testing.assert_allclose(out[:32].reshape(-1, 3), np.tile([1, 2, 3], (32 * 64, 1)), atol=1e-4)
  np.testing.assert_allclose(out[32:, 32:].reshape(-1, 3), np.tile([1, 2, 3], (32 * 32, 1)),
                             atol=1e-4)


def _scene(seed: int, height: int = 90, width: int = 120):
  """A blue image with a red rectangle; returns (example, its box)."""
  rng = np.random.default_rng(seed)
  x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 30)
  x1, y1 = x0 + rng.integers(25, 40), y0 + rng.integers(20, 30)
  image = np.empty((height, width, 3), np.uint8)
  image[...] = _BLUE
  image[y0:y1, x0:x1] = _RED
  box = (x0 / width, y0 / height, x1 / width, y1 / height)
  return {**_example(seed, (box,), height, width), "image": tf.constant(image)}


def test_boxes_follow_the_image_content_through_the_geometric_ops():
  fill = (0.0, 255.0, 0.0)  # green fill: neither object nor background
  ops = augment.train_ops(_CONFIG)[:3]
  seen_expand = 0
  for seed in range(40):
    out = augment.apply(ops, _scene(seed))
    image = _on_device(out, _options(fill=fill))
    seen_expand += (image[..., 1] > 200).any()
    for x0, y0, x1, y1 in out["boxes"].numpy() * 64:
      inner = image[int(np.ceil(y0)) + 1:int(y1) - 1, int(np.ceil(x0)) + 1:int(x1) - 1]
      np.testing.assert_allclose(inner.reshape(-1, 3), np.broadcast_to(_RED, (inner.size // 3, 3)),
                                 atol=1)
      assert inner.size > 0
      ring = np.concatenate([image[max(int(y0) - 2, 0), int(x0):int(x1)],
                             image[min(int(np.ceil(y1)) + 1, 63), int(x0):int(x1)]])
      assert not np.allclose(ring, _RED, atol=30) or y0 < 2 or y1 > 61  # red ends at the box
  assert seen_expand > 0


def test_photometric_distortion_leaves_the_fill_and_respects_ranges():
  fill = (100.0, 110.0, 120.0)
  example = augment.expand(1.0, 3.0)(_example(5))
  plain = _on_device(example, _options(fill=fill))
  _, inside = reference.tf_resample(example["image"].numpy(), example["window"].numpy(), 64,
                                    "bilinear", fill)
  brightness = augment.photometric(1.0, 32.0, 0, (1, 1), 0, (1, 1), 0, 0, 0.5, 0.0)
  for seed in range(5):
    drawn = brightness({**example, "seed": tf.constant([seed, 0], tf.int64)})
    out = _on_device(drawn, _options(fill=fill))
    np.testing.assert_array_equal(out[~inside], plain[~inside])
    delta = out[inside] - plain[inside]
    unclipped = (out[inside] > 0) & (out[inside] < 255)
    assert np.ptp(delta[unclipped]) < 1e-3 and abs(delta[unclipped][0]) <= 32
  nothing = augment.photometric(0, 32.0, 0, (0.5, 1.5), 0, (0.5, 1.5), 0, 18.0, 0.5, 0.0)
  np.testing.assert_array_equal(_on_device(nothing(example), _options(fill=fill)), plain)
  everything = augment.photometric(1, 32.0, 1, (0.5, 1.5), 1, (0.5, 1.5), 1, 18.0, 0.5, 1.0)
  out = _on_device(everything(example), _options(fill=fill))
  assert out.min() >= 0 and out.max() <= 255 and not np.allclose(out, plain)


def test_normalize_uses_the_model_mean_and_std():
  image = tf.fill([8, 8, 3], 255.0)
  out = augment.normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))({"image": image})["image"].numpy()
  np.testing.assert_allclose(out[0, 0], [1.0, 3.0, 0.5], rtol=1e-6)


_DRAWN = ("window", "boxes", "labels", "method", "photometric", "channel_order")


def test_seed_decides_everything():
  ops = augment.train_ops(_CONFIG)
  a, b = (augment.apply(ops, _example(0)) for _ in range(2))
  for key in _DRAWN:
    np.testing.assert_array_equal(a[key], b[key])
  other = augment.apply(ops, {**_example(0), "seed": tf.constant([1, 7], tf.int64)})
  assert not np.array_equal(a["photometric"], other["photometric"])
  assert not np.array_equal(a["window"], other["window"])


def test_drawn_examples_on_the_device_equal_the_previous_tf_data_ops():
  """The whole path for the Caffe recipe: the host's draws, then the device's pixel work, against
  the previous pipeline's TF pixel ops fed the same draws."""
  options = pixel_augment.Options.from_config(_CONFIG)
  ops = augment.train_ops(_CONFIG)
  methods = set()
  for seed in range(12):
    out = augment.apply(ops, _example(seed))
    method = options.methods[int(out["method"])]
    methods.add(method)
    pixels, inside = reference.tf_resample(out["image"].numpy(), out["window"].numpy(), 64, method,
                                           options.fill)
    pixels = reference.tf_photometric(pixels, inside, out["photometric"].numpy(),
                                      out["channel_order"].numpy(), True)
    expected = reference.tf_normalize(pixels, options.mean, options.std)
    # ssd300's std is 1/255: normalised units are 0..255 units.
    np.testing.assert_allclose(_on_device(out, options), expected, rtol=0,
                               atol=reference.END_TO_END_TOLERANCE, err_msg=f"{seed} {method}")
  assert len(methods) >= 4


def _in_tf_data(op, examples):
  """``op`` mapped over ``examples`` (a list of dicts of equal structure) inside tf.data."""
  stacked = {key: tf.stack([e[key] for e in examples]) for key in examples[0]}
  return list(tf.data.Dataset.from_tensor_slices(stacked).map(op).as_numpy_iterator())


def test_sampler_aspect_ratio_is_drawn_in_range_then_clamped():
  # Caffe's SampleBBox: a ~ U[0.5, 2], then clamped to [s^2, 1 / s^2]. At scale 0.8 that is
  # [0.64, 1.5625]: a = 0.64 with probability 0.14 / 1.5, a = 1.5625 with 0.4375 / 1.5.
  grid = (np.arange(20) + 0.5) / 20
  cx, cy = (c.ravel() for c in np.meshgrid(grid, grid))
  boxes = tf.constant(np.stack([cx - 0.01, cy - 0.01, cx + 0.01, cy + 0.01], 1), tf.float32)

  def draw(example):  # one sampler, unconstrained: every patch holds a grid centre, trial 0 wins
    patch, _ = augment.sample_patch_box(example["boxes"], example["seed"], False, (0.0,),
                                        (0.8, 0.8), (0.5, 2.0), 5)
    return {"aspect": (patch[2] - patch[0]) / (patch[3] - patch[1])}
  examples = [{"boxes": boxes, "seed": tf.constant([seed, 3], tf.int64)} for seed in range(1500)]
  aspects = np.array([out["aspect"] for out in _in_tf_data(draw, examples)])
  for example, graph in zip(examples[:10], aspects):
    np.testing.assert_allclose(draw(example)["aspect"], graph, rtol=1e-6)
  assert aspects.min() >= 0.64 - 1e-4 and aspects.max() <= 1.5625 + 1e-4
  at_low, at_high = np.isclose(aspects, 0.64, rtol=1e-4), np.isclose(aspects, 1.5625, rtol=1e-4)
  assert abs(at_low.mean() - 0.14 / 1.5) < 0.03 and abs(at_high.mean() - 0.4375 / 1.5) < 0.04
  between = aspects[~at_low & ~at_high]
  assert abs(np.mean(between < 1.1) - 0.46 / 0.9225) < 0.05  # uniform in between


def test_resize_method_is_drawn_uniformly_per_example():
  draw = augment.resize_method(5)
  examples = [_example(seed) for seed in range(300)]
  drawn = np.array([out["method"] for out in _in_tf_data(draw, examples)])
  counts = np.bincount(drawn, minlength=5)
  assert len(counts) == 5 and all(35 <= n <= 85 for n in counts), counts  # 60 expected each
  assert int(draw(examples[0])["method"]) == drawn[0]


def test_flip_and_zoom_out_come_with_their_probabilities():
  examples = [_example(seed) for seed in range(400)]
  flipped = [out["window"][2] < out["window"][0] for out in _in_tf_data(
      lambda e: augment.horizontal_flip(0.5)(e), examples)]
  assert abs(np.mean(flipped) - 0.5) < 0.08
  windows = np.array([out["window"] for out in _in_tf_data(augment.expand(0.5, 4.0), examples)])
  ratio = windows[:, 2] - windows[:, 0]  # the canvas side in image sides
  zoomed = ratio > 1
  assert abs(zoomed.mean() - 0.5) < 0.08
  np.testing.assert_allclose(windows[:, 3] - windows[:, 1], ratio, rtol=1e-5)  # square zoom
  assert ratio.max() <= 4 and abs(np.median(ratio[zoomed]) - 2.5) < 0.3  # uniform in [1, 4]
  # The image lies on its canvas: the window holds the unit square.
  assert (windows[:, :2] <= 1e-6).all() and (windows[:, 2:] >= 1 - 1e-6).all()


def test_fit_canvas_shrinks_only_images_larger_than_the_canvas():
  example = _example(2)
  kept = augment.fit_canvas(60)(example)
  np.testing.assert_array_equal(kept["image"], example["image"])
  np.testing.assert_array_equal(kept["image_size"], [45, 60])
  np.testing.assert_array_equal(kept["window"], [0, 0, 1, 1])
  flat = {**example, "image": tf.fill([45, 60, 3], tf.constant(77, tf.uint8))}
  shrunk = augment.fit_canvas(48)(flat)
  np.testing.assert_array_equal(shrunk["image_size"], [36, 48])  # aspect kept
  assert shrunk["image"].dtype == tf.uint8 and (shrunk["image"].numpy() == 77).all()
  np.testing.assert_array_equal(shrunk["boxes"], example["boxes"])  # image units: unchanged
  tall = augment.fit_canvas(48)({**example, "image": tf.zeros([300, 20, 3], tf.uint8)})
  np.testing.assert_array_equal(tall["image_size"], [48, 3])


def _hue_wheel():
  """[1, 360, 3] float 0..255 image of fully saturated colours, one per degree of hue."""
  hsv = np.stack([np.arange(360) / 360, np.ones(360), np.ones(360)], -1)[None].astype(np.float32)
  return tf.image.hsv_to_rgb(hsv) * 255


def _hue_degrees(image) -> np.ndarray:
  return tf.image.rgb_to_hsv(tf.convert_to_tensor(image) / 255).numpy()[..., 0] * 360


@pytest.mark.parametrize("clamp", [False, True])
def test_hue_shift_is_uniform_within_delta_degrees(clamp):
  hue_only = augment.photometric(0, 0, 0, (1, 1), 0, (1, 1), 1.0, 36.0, 0.5, 0.0)
  wheel = _hue_wheel()
  examples = [{"image": wheel, "seed": tf.constant([seed, 9], tf.int64)} for seed in range(400)]
  drawn = _in_tf_data(hue_only, examples)
  np.testing.assert_array_equal(hue_only(examples[0])["photometric"], drawn[0]["photometric"])
  distort = jax.jit(jax.vmap(lambda params: pixel_augment.photometric(
      wheel.numpy(), params, np.int32([0, 1, 2]), clamp, False)))
  outputs = np.asarray(distort(np.stack([out["photometric"] for out in drawn])))
  before = _hue_degrees(wheel)[0]
  shifts = []
  for image in outputs:
    after = _hue_degrees(image)[0]
    shift = (after[180] - before[180] + 180) % 360 - 180  # mid-wheel: never clamped
    shifts.append(shift)
    low = before < -shift - 0.5  # pixels a negative shift pushes below hue 0
    if clamp and low.any():
      np.testing.assert_allclose(after[low], 0, atol=0.5)  # Caffe's 8-bit arithmetic stops at 0
    wrapped = (before + shift) % 360
    keep = ~low if clamp else np.ones(360, bool)
    distance = np.abs((after[keep] - wrapped[keep] + 180) % 360 - 180)
    assert distance.max() < 0.5
  shifts = np.array(shifts)
  assert shifts.min() >= -36.01 and shifts.max() <= 36.01
  # Uniform on [-36, 36]: half of the shifts beyond +-18 degrees (the old, ssd.pytorch range).
  assert abs(np.mean(np.abs(shifts) > 18) - 0.5) < 0.08 and abs(np.mean(shifts > 0) - 0.5) < 0.08


def test_caffe_recipe_configs_use_caffes_augmentation_details():
  load = lambda name: config_utils.load_config(os.path.join(os.path.dirname(__file__), "..",
                                                            "configs", name))
  caffe = ("bilinear", "area", "nearest", "bicubic", "lanczos3")
  for name in ("ssd300.py", "ssd512.py", "ssd300_coco.py"):
    a = load(name).augment
    assert tuple(a.resize_methods) == caffe and a.hue_delta == 36.0 and a.hue_clamp_below_zero
    assert tuple(a.patch_aspect_range) == (0.5, 2.0)
  for name in ("quickstart.py", "ssd300_resnet50.py", "ssd300_resnet34.py",
               "ssd300_torchvision_coco.py", "ssdlite_mobilenetv2.py"):
    assert tuple(load(name).augment.resize_methods) == ("bilinear",), name
