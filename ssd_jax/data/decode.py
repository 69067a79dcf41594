"""Decoding encoded images inside tf.data, with checks that keep bad files from stopping it.

``tf.io.decode_image`` raises on a truncated or non-image file, and tf.data cannot catch that inside
a map. So the bytes are checked first (a known signature, and the end-of-image marker for JPEG and
PNG, which truncated files lack) and a file that fails is replaced by an empty example: a blank
image, no objects and ``valid`` False. The stream keeps its length, so resumed runs stay exact;
training loses nothing (an image without objects has no positives and no mined negatives) and
evaluation skips examples that are not valid. Grayscale, CMYK, PNG (also 16-bit), GIF and BMP
images decode to 3-channel uint8 RGB; a PNG's transparent pixels are composited on white
(``BACKGROUND``), as ``ssd_jax.evaluation.plots`` draws them, rather than taking whatever colour
they store (often black). JPEGs are decoded with libjpeg's accurate integer DCT (``DCT_METHOD``),
as PIL decodes them: pixel for pixel what a deployed artifact fed by PIL sees.
"""

from collections.abc import Callable

import tensorflow as tf

from ssd_jax.data.problems import Problems

Example = dict[str, tf.Tensor]

_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM")  # JPEG, PNG, GIF, BMP
_TAIL = 16  # JPEG's end marker may be followed by a few padding bytes.
BACKGROUND = 255.0  # under transparent pixels: white
# TF's default, the fast DCT, gives pixels up to 6 levels off PIL's (the accurate one), enough to
# move scores by ~1e-3 and reorder near-tied detections between predict and the exported models.
DCT_METHOD = "INTEGER_ACCURATE"


def _contains(text: tf.Tensor, pattern: bytes) -> tf.Tensor:
  """Whether the short scalar string ``text`` contains ``pattern`` (scalar bool)."""
  n = tf.maximum(tf.strings.length(text) - len(pattern) + 1, 0)
  pieces = tf.strings.substr(tf.fill([n], text), tf.range(n), tf.fill([n], len(pattern)))
  return tf.reduce_any(tf.equal(pieces, pattern))


def image_problem(data: tf.Tensor) -> tf.Tensor:
  """Scalar string: why encoded image ``data`` cannot be decoded, or "" when it looks whole."""
  head = tf.strings.substr(data, 0, 8)
  known = tf.reduce_any([tf.strings.substr(head, 0, len(s)) == s for s in _SIGNATURES])
  tail = tf.strings.substr(data, tf.maximum(tf.strings.length(data) - _TAIL, 0), _TAIL)
  is_jpeg = tf.strings.substr(head, 0, 3) == _SIGNATURES[0]
  is_png = tf.strings.substr(head, 0, 8) == _SIGNATURES[1]
  truncated = ((is_jpeg & ~_contains(tail, b"\xff\xd9")) | (is_png & ~_contains(tail, b"IEND")))
  return tf.where(~known, "not a JPEG, PNG, GIF or BMP image, skipped",
                  tf.where(truncated, "truncated image, skipped", ""))


def decode(problems: Problems, read_files: bool) -> Callable[[Example], Example]:
  """Op: ``image`` (encoded bytes, or a path when ``read_files``) -> uint8 [H, W, 3].

  Adds ``size`` int32 [2] (height, width of the decoded image) and ``valid``. A file that cannot
  be decoded gives a blank 2x2 image, size (0, 0), no objects and ``valid`` False.
  """

  def op(example: Example) -> Example:
    example = dict(example)
    data = tf.io.read_file(example["image"]) if read_files else example["image"]
    problem = image_problem(data)
    ok = tf.equal(problem, "")
    reported = problems.report_if(~ok, problem, example["file"])
    with tf.control_dependencies([reported]):
      image = tf.cond(ok, lambda: decode_rgb(data), lambda: tf.zeros([2, 2, 3], tf.uint8))
    keep = tf.fill(tf.shape(example["labels"]), ok)
    example.update(image=image, size=tf.where(ok, tf.shape(image)[:2], 0), valid=ok,
                   boxes=tf.boolean_mask(example["boxes"], keep),
                   labels=tf.boolean_mask(example["labels"], keep),
                   difficult=tf.boolean_mask(example["difficult"], keep))
    return example

  return op


def decode_rgb(data: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG, PNG, GIF or BMP bytes (scalar string) -> uint8 [H, W, 3]: JPEGs with
  ``DCT_METHOD``, PNG alpha composited on ``BACKGROUND`` (rgb * a + background * (1 - a))."""
  is_png = tf.strings.substr(data, 0, 8) == _SIGNATURES[1]
  is_jpeg = tf.strings.substr(data, 0, 3) == _SIGNATURES[0]

  def composited_png() -> tf.Tensor:
    rgba = tf.cast(tf.io.decode_png(data, channels=4, dtype=tf.uint8), tf.float32)
    alpha = rgba[..., 3:] / 255.0
    return tf.cast(tf.round(rgba[..., :3] * alpha + BACKGROUND * (1.0 - alpha)), tf.uint8)

  def other() -> tf.Tensor:
    return tf.cond(is_jpeg, lambda: tf.io.decode_jpeg(data, channels=3, dct_method=DCT_METHOD),
                   lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                                              expand_animations=False))

  image = tf.cond(is_png, composited_png, other)
  return tf.ensure_shape(image, [None, None, 3])
