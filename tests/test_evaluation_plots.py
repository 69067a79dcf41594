"""Pictures: label placement, transparency, aspect ratio of grid tiles, the drawn colours."""

import numpy as np
from PIL import Image

from ssd_jax.evaluation import plots

_NAMES = ("circle", "square", "triangle")


def _crowded(rng: np.random.Generator, count: int, width: int, height: int) -> np.ndarray:
  """[count, 4] pixel xyxy boxes packed into the top-left quarter and along the image edges."""
  x0 = rng.uniform(-20, width / 2, count)
  y0 = rng.uniform(-20, height / 2, count)
  size = rng.uniform(10, 120, (count, 2))
  boxes = np.stack([x0, y0, x0 + size[:, 0], y0 + size[:, 1]], axis=1)
  boxes[:5] = [[0, 0, 60, 40], [0, 0, 61, 41], [width - 30, 0, width, 30],
               [width - 50, height - 50, width, height], [0, height - 20, 640, height]]
  return boxes


def test_labels_stay_inside_the_image_and_never_overlap():
  rng = np.random.default_rng(0)
  width, height = 640, 480
  boxes = _crowded(rng, 40, width, height)
  font = plots.font_for((width, height))
  sizes = [(font.getlength(f"triangle {s:.2f}") + 6, font.size + 6)
           for s in rng.uniform(0, 1, 40)]
  rects = plots.place_labels(boxes, sizes, (width, height))
  placed = [r for r in rects if r is not None]
  # 40 labels of 119 x 26 px near a 320 x 240 corner: about 24 fit at all.
  assert len(placed) >= 20
  for rect, (w, h) in ((r, s) for r, s in zip(rects, sizes) if r is not None):
    assert 0 <= rect[0] and rect[2] <= width and 0 <= rect[1] and rect[3] <= height
    assert np.isclose(rect[2] - rect[0], w) and np.isclose(rect[3] - rect[1], h)
  for i, a in enumerate(placed):
    for b in placed[i + 1:]:
      overlap_w = min(a[2], b[2]) - max(a[0], b[0])
      overlap_h = min(a[3], b[3]) - max(a[1], b[1])
      assert overlap_w <= 1e-9 or overlap_h <= 1e-9, (a, b)


def test_a_label_goes_above_its_box_and_inside_it_at_the_top_edge():
  rects = plots.place_labels(np.array([[100, 50, 200, 150], [300, 0, 400, 100]]),
                             [(60, 20), (60, 20)], (640, 480))
  assert rects[0] == (100, 30, 160, 50)  # above the top-left corner
  assert rects[1] == (300, 0, 360, 20)  # no room above: just inside


def test_font_scales_with_the_image():
  assert plots.font_for((1280, 960)).size == 2 * plots.font_for((640, 480)).size == 40


def test_transparent_pixels_are_composited_on_white():
  rgba = np.zeros((2, 3, 4), np.uint8)
  rgba[0, 0] = (200, 100, 50, 255)  # opaque
  rgba[0, 1] = (200, 100, 50, 0)  # transparent: white whatever its colour
  rgba[0, 2] = (200, 100, 50, 128)  # half: rgb * a + 255 * (1 - a)
  got = np.asarray(plots.to_rgb(Image.fromarray(rgba, "RGBA"))).astype(int)
  half = np.round(np.array([200, 100, 50]) * 128 / 255 + 255 * 127 / 255)
  np.testing.assert_array_equal(got[0, 0], [200, 100, 50])
  np.testing.assert_array_equal(got[0, 1], [255, 255, 255])
  np.testing.assert_allclose(got[0, 2], half, atol=1)
  gray_alpha = Image.fromarray(np.array([[[30, 0]]], np.uint8), "LA")
  np.testing.assert_array_equal(np.asarray(plots.to_rgb(gray_alpha))[0, 0], [255, 255, 255])


def test_drawing_keeps_the_size_and_draws_boxes_in_class_colours():
  image = Image.new("RGB", (320, 240), (128, 128, 128))
  out = plots.draw_detections(image, np.array([[20.0, 60, 120, 200]]), np.array([2]), _NAMES,
                              np.array([0.9]), ground_truth=np.array([[150.0, 50, 300, 220]]))
  assert out.size == (320, 240) and out.mode == "RGB"
  pixels = np.asarray(out)
  assert tuple(pixels[130, 20]) == plots.PALETTE[1]  # left edge of the "square" box
  truth_edge = {tuple(p) for p in pixels[60:210, 150]}  # the dashed ground truth's left edge
  assert {(255, 255, 255), (0, 0, 0)} <= truth_edge
  assert tuple(pixels[130, 200]) == (128, 128, 128)  # inside the boxes: untouched


def test_grid_tiles_keep_the_aspect_ratio():
  pixels = np.zeros((64, 64, 3), np.uint8)  # the model's square input of a 320 x 160 image
  tile = plots.fit_to_cell(pixels, (160, 320), 256)
  assert tile.size == (256, 128)
  picture = plots.grid([tile, plots.fit_to_cell(pixels, (300, 100), 256)], 256, caption="x")
  assert picture.width == 512 and picture.height > 256
  assert tuple(np.asarray(picture)[10, 10]) == (96, 96, 96)  # letterbox above the wide tile
  assert tuple(np.asarray(picture)[128, 128]) == (0, 0, 0)
