"""Pictures: precision/recall curves (matplotlib, no display needed) and detections drawn on images.

Boxes are drawn in pixels, xyxy. Detections are solid boxes in their class colour with a
"name score" label that stays inside the picture and never covers another label; ground truth is
a thin dashed black-and-white outline, so misses (a dashed box alone) and loose boxes show. Label
text scales with the image. Transparent pixels (RGBA, LA or palette PNGs) are composited on white,
as the input pipeline decodes them.
"""

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 200, 200), (240, 50, 230), (150, 170, 40), (250, 140, 170), (0, 128, 128))
BACKGROUND = (255, 255, 255)  # under transparent pixels; the same as ssd_jax.data.decode's
Rect = tuple[float, float, float, float]  # x0, y0, x1, y1 pixels


def plot_precision_recall(result: dict, class_names: Sequence[str] | None, path: str,
                          title: str | None = None) -> None:
  """Writes one figure to ``path`` with a line per class of ``voc.evaluate``'s ``result``.

  ``class_names[l - 1]`` names label l (default: the label number); the legend gives each AP.
  """
  # A bare Figure renders with the Agg canvas on savefig and leaves pyplot's global state alone.
  figure = Figure(figsize=(9, 6), dpi=100, layout="constrained")
  axes = figure.add_subplot()
  for label, ap in sorted(result["AP"].items(), key=lambda item: -item[1]):
    name = class_names[label - 1] if class_names is not None else str(label)
    # The raw points, as the devkit plots them (a class without detections: an empty line).
    axes.plot(result["recall"][label], result["precision"][label], label=f"{name} ({ap:.3f})")
  axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=title or f"mAP {result['mAP']:.4f}")
  axes.grid(alpha=0.3)
  axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small",
              title="class (AP)")
  figure.savefig(path)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
  """An RGB copy of ``image``; transparent pixels are composited on ``background``."""
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
      image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, background + (255,)),
                                 rgba).convert("RGB")
  return image.convert("RGB")


def font_for(size: tuple[int, int]) -> ImageFont.FreeTypeFont:
  """Label font for an image of ``size`` (width, height): about 1/32 of its longer side."""
  return ImageFont.load_default(size=max(11, round(max(size) / 32)))


def _overlaps(a: Rect, b: Rect) -> bool:
  return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def place_labels(boxes: np.ndarray, label_sizes: Sequence[tuple[float, float]],
                 image_size: tuple[int, int]) -> list[Rect | None]:
  """Where to put the label of each box: inside the image, overlapping no earlier label.

  ``boxes`` [N, 4] pixel xyxy (most important first), ``label_sizes`` (width, height) of each
  label, ``image_size`` (width, height). A label goes above the box's top-left corner if it
  fits, else just inside it, then the other corners, then down the box's side; a label with no
  free place is left out (None): the box is still drawn.
  """
  width, height = image_size
  placed: list[Rect] = []
  rects: list[Rect | None] = []
  for (x0, y0, x1, y1), (w, h) in zip(np.asarray(boxes, float).reshape(-1, 4), label_sizes):
    w, h = min(w, width), min(h, height)
    rows = [y0 - h, y0, y1, y1 - h] + [y0 + k * h for k in range(1, max(1, int((y1 - y0) // h)))]
    rect = None
    for y in rows:
      for x in (x0, x1 - w):
        x, y_in = min(max(x, 0.0), width - w), min(max(y, 0.0), height - h)
        candidate = (x, y_in, x + w, y_in + h)
        if not any(_overlaps(candidate, other) for other in placed):
          rect = candidate
          break
      if rect is not None:
        break
    if rect is not None:
      placed.append(rect)
    rects.append(rect)
  return rects


def _dashed_rectangle(canvas: ImageDraw.ImageDraw, box: Sequence[float], width: int,
                      dash: int) -> None:
  """A dashed outline whose dashes alternate white and black (visible on any background)."""
  x0, y0, x1, y1 = box
  corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
  for (ax, ay), (bx, by) in zip(corners[:-1], corners[1:]):
    length = max(abs(bx - ax), abs(by - ay), 1e-9)
    for n, start in enumerate(np.arange(0.0, length, dash)):
      t0, t1 = start / length, min(start + dash, length) / length
      canvas.line([(ax + (bx - ax) * t0, ay + (by - ay) * t0),
                   (ax + (bx - ax) * t1, ay + (by - ay) * t1)],
                  fill=(0, 0, 0) if n % 2 else (255, 255, 255), width=width)


def draw_detections(image: Image.Image, boxes: np.ndarray, labels: np.ndarray,
                    class_names: Sequence[str], scores: np.ndarray | None = None,
                    ground_truth: np.ndarray | None = None) -> Image.Image:
  """An RGB copy of ``image`` with detections and, if given, ground truth drawn.

  ``boxes`` [N, 4] pixel xyxy with ``labels`` [N] in 1..C-1 (``class_names[l - 1]``) and
  ``scores`` [N] (labels read "name score", highest score placed first); ``ground_truth`` [G, 4]
  pixel xyxy, drawn dashed underneath.
  """
  image = to_rgb(image)
  canvas = ImageDraw.Draw(image)
  line = max(1, round(max(image.size) / 250))
  if ground_truth is not None:
    for box in np.asarray(ground_truth, float).reshape(-1, 4):
      _dashed_rectangle(canvas, box, max(1, line // 2), dash=max(3, 2 * line + 2))
  boxes, labels = np.asarray(boxes, float).reshape(-1, 4), np.asarray(labels).reshape(-1)
  order = (np.argsort(-np.asarray(scores), kind="stable") if scores is not None
           else np.arange(len(boxes)))
  font = font_for(image.size)
  pad = max(1, font.size // 8)
  texts, colours = [], []
  for i in order:
    name = class_names[int(labels[i]) - 1]
    texts.append(name if scores is None else f"{name} {float(scores[i]):.2f}")
    colours.append(PALETTE[(int(labels[i]) - 1) % len(PALETTE)])
    canvas.rectangle(boxes[i].tolist(), outline=colours[-1], width=line)
  extents = [canvas.textbbox((0, 0), text, font=font) for text in texts]  # l, t, r, b
  sizes = [(r - l + 2 * pad, b - t + 2 * pad) for l, t, r, b in extents]
  for text, colour, (l, t, _, _), rect in zip(texts, colours, extents,
                                              place_labels(boxes[order], sizes, image.size)):
    if rect is not None:
      canvas.rectangle(rect, fill=colour)
      canvas.text((rect[0] + pad - l, rect[1] + pad - t), text, fill=(255, 255, 255), font=font)
  return image


def fit_to_cell(pixels: np.ndarray, original_size: tuple[int, int], cell: int) -> Image.Image:
  """uint8 [S, S, 3] model input -> the image at its original aspect ratio, longer side ``cell``.

  ``original_size`` is (height, width) of the image before the model's square resize.
  """
  height, width = original_size
  scale = cell / max(height, width, 1)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return Image.fromarray(pixels).resize(size, Image.BILINEAR)


def grid(tiles: Sequence[Image.Image], cell: int, columns: int = 4,
         caption: str | None = None) -> Image.Image:
  """Tiles (each at most ``cell`` px a side) centred in a grid of ``cell`` x ``cell`` cells on
  grey, with an optional caption line below."""
  columns = max(1, min(columns, len(tiles)))
  rows = -(-len(tiles) // columns)
  font = font_for((cell, cell))
  caption_height = font.size * 2 if caption else 0
  picture = Image.new("RGB", (columns * cell, rows * cell + caption_height), (96, 96, 96))
  for index, tile in enumerate(tiles):
    left = (index % columns) * cell + (cell - tile.width) // 2
    top = (index // columns) * cell + (cell - tile.height) // 2
    picture.paste(tile, (left, top))
  if caption:
    ImageDraw.Draw(picture).text((font.size // 2, rows * cell + font.size // 2), caption,
                                 fill=(255, 255, 255), font=font)
  return picture
