"""Renders augmented training images with their boxes to a PNG, to check augmentation by eye.

Row i shows example i: first as evaluation sees it, then as the model is fed it in training with
the seeds of epochs 0, 1, ...: the input pipeline's draws (``data.augment.train_ops``), then the
device's pixel work on them (``pixel_augment.augment_one``, as the train step runs it). Boxes are
drawn in their class's colour with the class name. Without --config it uses configs/ssd300.py on
synthetic shapes generated in a temp dir.

  python experiments/show_augmentation.py --output /tmp/augmentation.png [--config PATH[:ARG]]
"""

import argparse
import os
import tempfile

import numpy as np
from PIL import Image, ImageDraw

import jax

from ssd_jax import config_utils, pixel_augment
from ssd_jax import data  # hides GPUs from TF before it starts
from ssd_jax.data import augment
import tensorflow as tf

_COLOURS = ((255, 255, 255), (255, 60, 60), (60, 220, 60), (80, 140, 255), (255, 220, 0),
            (255, 0, 255), (0, 255, 255), (255, 140, 0))


def _load(config_arg: str | None, data_dir: str):
  if config_arg:
    path, _, arg = config_arg.partition(":")
    return config_utils.load_config(path, arg or None)
  config = config_utils.load_config(os.path.join(os.path.dirname(__file__), "..", "configs",
                                                 "ssd300.py"))
  config.data.update(source="synthetic", data_dir=data_dir,
                     class_names=("circle", "square", "triangle", "star"),
                     train_splits=(("shapes", "train"),), eval_splits=(("shapes", "test"),))
  config.data.synthetic.update(num_train=8, num_test=1)
  config.model.num_classes = 5
  return config


def _to_pixels(image: np.ndarray, config) -> np.ndarray:
  """Normalised model input -> uint8 RGB."""
  pixels = (image * np.array(config.model.input_std) + np.array(config.model.input_mean)) * 255
  return np.clip(pixels, 0, 255).astype(np.uint8)


def _model_input(drawn: dict, options: pixel_augment.Options) -> np.ndarray:
  """The train step's pixel work on one example of the pipeline's draws -> [S, S, 3]."""
  keys = ("image", "image_size", "window", "method", "photometric", "channel_order")
  return np.asarray(jax.jit(pixel_augment.augment_one, static_argnums=6)(
      *(drawn[key].numpy() for key in keys), options))


def _tile(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, config,
          class_names: tuple[str, ...]) -> Image.Image:
  tile = Image.fromarray(_to_pixels(image, config))
  draw, size = ImageDraw.Draw(tile), tile.size[0]
  for box, label in zip(boxes * size, labels):
    colour = _COLOURS[label % len(_COLOURS)]
    draw.rectangle(list(box), outline=colour, width=2)
    draw.text((box[0] + 3, box[1] + 2), class_names[label - 1], fill=colour)
  return tile


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", required=True)
  parser.add_argument("--config", help="config file, optionally with :variant")
  parser.add_argument("--rows", type=int, default=4)
  parser.add_argument("--columns", type=int, default=6)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as data_dir:
    config = _load(args.config, data_dir)
    source = data.make_source(config, "train", 0, 1)
    examples = list(data.examples(source).take(args.rows).as_numpy_iterator())
  size, gap = config.model.image_size, 4
  grid = Image.new("RGB", (args.columns * (size + gap), args.rows * (size + gap)), (40, 40, 40))
  train_ops, eval_ops = augment.train_ops(config), augment.eval_ops(config)
  options = pixel_augment.Options.from_config(config)
  for row, example in enumerate(examples):
    example = {k: tf.constant(v) for k, v in example.items()}
    for column in range(args.columns):
      seed = tf.constant([config.data.seed, row * 1000 + column], tf.int64)
      out = augment.apply(eval_ops if column == 0 else train_ops, {**example, "seed": seed})
      image = out["image"].numpy() if column == 0 else _model_input(out, options)
      tile = _tile(image, out["boxes"].numpy(), out["labels"].numpy(), config, source.class_names)
      grid.paste(tile, (column * (size + gap), row * (size + gap)))
  grid.save(args.output)
  print(f"wrote {args.output}: {args.rows} examples, then {args.columns - 1} augmentations each")


if __name__ == "__main__":
  main()
