"""Default boxes: counts, known values and order, against a Caffe-style loop reference."""

import math
import os

import numpy as np
import pytest

from conftest import CONFIG_DIR
from ssd_jax import config_utils, priors


def caffe_prior_box(image_size, feature_size, step, min_size, max_size, ratios):
  """Caffe PriorBoxLayer::Forward_cpu for one map (flip on, offset 0.5), as nested loops."""
  min_size, max_size = int(min_size), int(max_size)  # `int min_size_ = min_sizes_[s];`
  out = []
  for h in range(feature_size):
    for w in range(feature_size):
      cx, cy = (w + 0.5) * step, (h + 0.5) * step
      out.append((cx, cy, min_size, min_size))
      side = math.sqrt(min_size * max_size)
      out.append((cx, cy, side, side))
      for r in ratios:
        for ar in (r, 1 / r):
          out.append((cx, cy, min_size * math.sqrt(ar), min_size / math.sqrt(ar)))
  return np.array(out) / image_size


def load(name, variant="voc"):
  return config_utils.load_config(os.path.join(CONFIG_DIR, name), variant)


@pytest.mark.parametrize("name,count", [("ssd300.py", 8732), ("ssd512.py", 24564)])
@pytest.mark.parametrize("variant", ["voc", "coco"])
def test_prior_counts(name, count, variant):
  assert priors.from_config(load(name, variant)).shape == (count, 4)


def test_ssd300_known_priors(ssd300_priors):
  np.testing.assert_allclose(ssd300_priors[0], [4 / 300, 4 / 300, 30 / 300, 30 / 300], rtol=1e-6)
  side = math.sqrt(30 * 60) / 300
  np.testing.assert_allclose(ssd300_priors[1], [4 / 300, 4 / 300, side, side], rtol=1e-6)
  np.testing.assert_allclose(ssd300_priors[2], [4 / 300, 4 / 300, 30 * math.sqrt(2) / 300,
                                                30 / math.sqrt(2) / 300], rtol=1e-6)
  np.testing.assert_allclose(ssd300_priors[-1, :2], [0.5, 0.5], rtol=1e-6)
  # The next cell of the first map starts after 4 boxes, one step (8 px) to the right.
  np.testing.assert_allclose(ssd300_priors[4, :2], [12 / 300, 4 / 300], rtol=1e-6)
  # The second map starts after 38 * 38 * 4 = 5776 boxes, with 6 boxes per cell.
  np.testing.assert_allclose(ssd300_priors[5776, :2], [8 / 300, 8 / 300], rtol=1e-6)
  np.testing.assert_allclose(ssd300_priors[5776 + 6, :2], [24 / 300, 8 / 300], rtol=1e-6)


@pytest.mark.parametrize("name", ["ssd300.py", "ssd512.py"])
def test_order_matches_caffe_loops_map_by_map(name):
  config = load(name)
  p = config.priors
  expected = np.concatenate([
      caffe_prior_box(config.model.image_size, *level)
      for level in zip(p.feature_sizes, p.steps, p.min_sizes, p.max_sizes, p.aspect_ratios)])
  np.testing.assert_allclose(priors.from_config(config), expected, rtol=1e-5, atol=1e-7)


def test_boxes_per_cell_matches_head_layout(ssd300_config):
  assert priors.boxes_per_cell(ssd300_config.priors.aspect_ratios) == [4, 6, 6, 6, 4, 4]
  counts = [s * s * k for s, k in zip(ssd300_config.priors.feature_sizes,
                                      priors.boxes_per_cell(ssd300_config.priors.aspect_ratios))]
  assert counts == [5776, 2166, 600, 150, 36, 4]


def test_caffe_sizes_reproduce_the_released_configs():
  voc, coco = load("ssd300.py"), load("ssd300.py", "coco")
  assert voc.priors.min_sizes == (30, 60, 111, 162, 213, 264)
  assert voc.priors.max_sizes == (60, 111, 162, 213, 264, 315)
  assert coco.priors.min_sizes == (21, 45, 99, 153, 207, 261)
  assert coco.priors.max_sizes == (45, 99, 153, 207, 261, 315)
  assert priors.caffe_sizes(300, 6, 20, 90, 10) == (list(voc.priors.min_sizes), list(voc.priors.max_sizes))
  assert priors.caffe_sizes(300, 6, 15, 90, 7) == (list(coco.priors.min_sizes), list(coco.priors.max_sizes))


@pytest.mark.parametrize("variant,min_sizes,max_sizes", [
    # ssd_pascal512.py: min_ratio 15, max_ratio 90, conv4_3 at 7 % / 15 %.
    ("voc", (35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
     (76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6)),
    # The COCO SSD512: min_ratio 10, max_ratio 90, conv4_3 at 4 % / 10 %.
    ("coco", (20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8),
     (51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72)),
])
def test_ssd512_prior_sizes_per_dataset(variant, min_sizes, max_sizes):
  config = load("ssd512.py", variant)
  np.testing.assert_allclose(config.priors.min_sizes, min_sizes, rtol=1e-12)
  np.testing.assert_allclose(config.priors.max_sizes, max_sizes, rtol=1e-12)
  assert config.priors.truncate_sizes
  boxes = priors.from_config(config)
  assert boxes.shape == (24564, 4)
  # Caffe's PriorBox truncates to whole pixels: int(35.84) = 35 and sqrt(35 * 76) for VOC.
  low, high = math.floor(min_sizes[0]), math.floor(max_sizes[0])
  np.testing.assert_allclose(boxes[0], [4 / 512, 4 / 512, low / 512, low / 512], rtol=1e-6)
  np.testing.assert_allclose(boxes[1, 2:], [math.sqrt(low * high) / 512] * 2, rtol=1e-6)
  last_map = boxes[-4:]  # 1x1 map: min 460.8 -> 460, max 537.6 -> 537 (VOC)
  np.testing.assert_allclose(last_map[1, 2:], [math.sqrt(460 * math.floor(max_sizes[-1])) / 512] * 2,
                             rtol=1e-6)


def test_truncate_sizes_equals_whole_pixel_sizes_and_is_a_switch():
  config = load("ssd512.py")
  p = config.priors
  args = (512, p.feature_sizes, p.steps)
  whole = priors.generate(*args, [math.floor(s) for s in p.min_sizes],
                          [math.floor(s) for s in p.max_sizes], p.aspect_ratios)
  np.testing.assert_array_equal(priors.generate(*args, p.min_sizes, p.max_sizes, p.aspect_ratios,
                                                truncate_sizes=True), whole)
  config.priors.truncate_sizes = False
  fractional = priors.from_config(config)
  np.testing.assert_allclose(fractional[0, 2:], [35.84 / 512] * 2, rtol=1e-6)
  assert not np.allclose(fractional, whole)
  # SSD300's Caffe sizes are whole pixels: truncation changes nothing.
  ssd300 = load("ssd300.py")
  ssd300.priors.truncate_sizes = False
  np.testing.assert_array_equal(priors.from_config(ssd300), priors.from_config(load("ssd300.py")))


def test_torchvision_configs_keep_fractional_sizes():
  for name in ("ssd300_torchvision_coco.py", "ssdlite_mobilenetv2.py"):
    assert not config_utils.load_config(os.path.join(CONFIG_DIR, name)).priors.truncate_sizes


def test_paper_scales_formula():
  scales = priors.paper_scales(6, 0.2, 0.9)
  np.testing.assert_allclose(scales, [0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.04])
  min_sizes, max_sizes = priors.sizes_from_scales(300, scales)
  np.testing.assert_allclose(min_sizes, [60, 102, 144, 186, 228, 270])
  np.testing.assert_allclose(max_sizes, [102, 144, 186, 228, 270, 312])


def test_clip_clamps_to_unit_square(ssd300_config):
  p = ssd300_config.priors
  unclipped = priors.generate(300, p.feature_sizes, p.steps, p.min_sizes, p.max_sizes, p.aspect_ratios)
  clipped = priors.generate(300, p.feature_sizes, p.steps, p.min_sizes, p.max_sizes,
                            p.aspect_ratios, clip=True)
  assert unclipped[:, 2:].max() > 1 and clipped[:, 2:].max() == 1
  np.testing.assert_array_equal(clipped[:, 2:], np.clip(unclipped[:, 2:], 0, 1))
  # Centres are never moved, even the ones past the edge (10x10 map, step 32: 9.5 * 32 / 300).
  np.testing.assert_array_equal(clipped[:, :2], unclipped[:, :2])
  assert clipped[:, 0].max() == pytest.approx(9.5 * 32 / 300)


def test_bad_prior_config_raises():
  with pytest.raises(ValueError, match="one entry per feature map"):
    priors.generate(300, (38, 19), (8,), (30, 60), (60, 111), ((2,), (2,)))
  with pytest.raises(ValueError, match="aspect_ratios"):
    priors.generate(300, (2,), (150,), (30,), (60,), ((1,),))
  with pytest.raises(ValueError, match="unknown variant"):
    load("ssd300.py", "imagenet")
