"""Input pipeline throughput: images/s of the training and evaluation pipelines, per CPU core.

Writes a VOC-format folder of real-sized (500x375) JPEGs with a few boxes each to a temp dir, then
times, for ``configs/ssd300.py`` as published (Caffe's augmentation, five resize methods), the
host's training pipeline (read, JPEG decode, the augmentation's draws: zoom-out, sampled patch,
flip, resize method, photometric values; boxes padded, images padded to the 500x500 canvas as
they are batched; the pixel work is the train step's, ``bench_train.py``) and the evaluation
pipeline (read, decode, resize to 300, normalise, batch), once with tf.data limited to one thread
and once with all cores, and JPEG decoding alone on one thread; each with JPEGs decoded by TF's
fast DCT (the baseline, TF's default) and by the accurate one the pipeline uses (PIL's pixels),
side by side. It prints the host cores that 1,500 and 3,000 images/s would take at the
one-thread rate.

  python experiments/bench_input.py [--images 256] [--batches 30] [--batch_size 32] [--rounds 3]
"""

import argparse
import collections
import os
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

from ssd_jax import config_utils
from ssd_jax import data  # hides GPUs from TF before it starts
from ssd_jax.data import decode
import tensorflow as tf

_CLASSES = ("circle", "square")
_DCT_METHODS = ("INTEGER_FAST", decode.DCT_METHOD)  # baseline first


def write_voc_folder(root: str, count: int, seed: int = 0) -> None:
  """``count`` 500x375 JPEGs (smooth colour field + noise + shapes) with VOC annotations."""
  for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(count):
    coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), np.float32)
    pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw, objects = ImageDraw.Draw(image), []
    for _ in range(rng.integers(1, 6)):
      w, h = rng.uniform(40, 250, 2)
      x0, y0 = rng.uniform(0, 500 - w), rng.uniform(0, 375 - h)
      name = _CLASSES[rng.integers(2)]
      (draw.ellipse if name == "circle" else draw.rectangle)(
          [x0, y0, x0 + w, y0 + h], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
      objects.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox>"
                     f"<xmin>{x0:.0f}</xmin><ymin>{y0:.0f}</ymin><xmax>{x0 + w:.0f}</xmax>"
                     f"<ymax>{y0 + h:.0f}</ymax></bndbox></object>")
    image.save(os.path.join(root, "JPEGImages", f"{i:06d}.jpg"), quality=90)
    with open(os.path.join(root, "Annotations", f"{i:06d}.xml"), "w") as f:
      f.write(f"<annotation><size><width>500</width><height>375</height></size>"
              f"{''.join(objects)}</annotation>")
  with open(os.path.join(root, "ImageSets", "Main", "all.txt"), "w") as f:
    f.write("".join(f"{i:06d}\n" for i in range(count)))


def images_per_second(ds: tf.data.Dataset, batches: int, batch_size: int,
                      threads: int | None) -> tuple[float, float]:
  """(batches/s of ``ds`` after two warm-up batches, times ``batch_size``; the process's CPU
  milliseconds per image over the same batches, which other jobs on the machine disturb less)."""
  if threads:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
  iterator = ds.as_numpy_iterator()
  for _ in range(2):
    next(iterator)
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(iterator)
  images = batches * batch_size
  return images / (time.perf_counter() - start), 1e3 * (time.process_time() - cpu) / images


def decode_cpu_ms(files: list[bytes], repeats: int) -> dict[str, float]:
  """CPU milliseconds per image of decoding ``files`` (JPEG bytes) one by one (libjpeg uses one
  thread) with each of _DCT_METHODS: the best of ``repeats`` passes, the methods taking turns."""
  # Tensors, not Python bytes: a tf.function would bake bytes in as constants and fold the decode.
  tensors = [tf.constant(data) for data in files]
  decoders = {dct: tf.function(lambda data, dct=dct: tf.io.decode_jpeg(data, channels=3,
                                                                       dct_method=dct),
                               input_signature=[tf.TensorSpec([], tf.string)])
              for dct in _DCT_METHODS}
  best = {dct: float("inf") for dct in _DCT_METHODS}
  for _ in range(repeats):
    for dct, decode_jpeg in decoders.items():
      decode_jpeg(tensors[0])  # traced on the first pass
      start = time.process_time()
      for data in tensors:
        decode_jpeg(data)
      best[dct] = min(best[dct], 1e3 * (time.process_time() - start) / len(files))
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--batches", type=int, default=30)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=3,
                      help="paired (fast, accurate DCT) measurements per pipeline; medians count")
  args = parser.parse_args()
  config = config_utils.load_config(os.path.join(os.path.dirname(__file__), "..", "configs",
                                                 "ssd300.py"))
  config.model.num_classes = len(_CLASSES) + 1
  with tempfile.TemporaryDirectory() as data_dir:
    write_voc_folder(os.path.join(data_dir, "bench"), args.images)
    config.data.update(source="voc_folder", data_dir=data_dir, class_names=_CLASSES,
                       train_splits=(("bench", "all"),), eval_splits=(("bench", "all"),),
                       batch_size=args.batch_size, eval_batch_size=args.batch_size)
    cores = os.cpu_count()
    train_source = data.make_source(config, "train", 0, 1)
    eval_source = data.make_source(config, "eval", 0, 1)
    pipelines = {"train": (lambda: data.train_dataset(config, 0, train_source)[0], args.batch_size),
                 "eval": (lambda: data.eval_dataset(config, eval_source)[0].repeat(),
                          args.batch_size)}
    results = collections.defaultdict(list)
    for name, (make, batch_size) in pipelines.items():
      for threads in (1, None):
        for _ in range(args.rounds):
          for dct in _DCT_METHODS:  # side by side, so that the machine's drift hits both alike
            decode.DCT_METHOD = dct  # read when a pipeline is built (tf.data traces the decode op)
            results[dct, name, threads].append(
                images_per_second(make(), args.batches, batch_size, threads))
    jpegs = [open(os.path.join(data_dir, "bench", "JPEGImages", f"{i:06d}.jpg"), "rb").read()
             for i in range(args.images)]
    decoding = decode_cpu_ms(jpegs, 3 * args.rounds)
  print(f"{cores} cores, load average {os.getloadavg()[0]:.1f}; images/s from 500x375 JPEGs, "
        f"batch {args.batch_size} (train: decoded and drawn on a {config.data.max_image_size} px "
        f"canvas; eval: {config.model.image_size} px model input):")
  fast, accurate = _DCT_METHODS
  for name in pipelines:
    for dct in _DCT_METHODS:
      (one, cpu), (all_cores, _) = (np.median(results[dct, name, t], axis=0) for t in (1, None))
      print(f"  {name:6s} {dct:16s}: 1 thread {one:7.1f}   all {cores} cores {all_cores:7.1f} "
            f"({all_cores / cores:.1f} per core)   -> cores for 1500 / 3000 images/s: "
            f"{1500 / one:.1f} / {3000 / one:.1f};"
            f"  {cpu:.2f} CPU ms/image (1 thread)")
    ratios = np.divide(results[accurate, name, 1], results[fast, name, 1])[:, 1]
    print(f"  {name:6s} CPU time per image, accurate / fast DCT, median of {args.rounds} paired "
          f"rounds: {np.median(ratios):.3f} ({ratios.min():.3f}-{ratios.max():.3f})")
  print(f"  JPEG decoding alone, CPU ms/image, best of {3 * args.rounds} passes: "
        + ", ".join(f"{dct} {ms:.3f}" for dct, ms in decoding.items())
        + f"; accurate / fast {decoding[accurate] / decoding[fast]:.3f}")


if __name__ == "__main__":
  main()
