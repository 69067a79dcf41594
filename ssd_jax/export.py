"""``--mode=export``: the trained detector as files that run without ssd_jax, in several formats.

``export_detector(config, workdir, output, formats)`` writes to ``output``, for each requested
format, one artifact of the same function: the preprocessing of ``--mode=predict``
(``ssd_jax.preprocess``: bilinear resize to the model's S x S, aspect ratio not kept, then
normalisation), the network with the checkpoint's parameters baked in as constants, and the
batched per-class NMS of ``postprocess.detect`` with the config's thresholds. It maps uint8 RGB
images ``images`` [B, H, W, 3] (one size per call) to ``boxes`` [B, K, 4] float32 xyxy in pixels
of the input images, ``scores`` [B, K] float32 (descending), ``classes`` [B, K] int32 in 1..C-1
and ``num_detections`` [B] int32: rows 0..n-1 are the detections, the rest are zeros.
K = ``config.detection.max_detections``.

- ``jax``: ``detector.jaxexport``, ``jax.export`` bytes (StableHLO) for CPU, CUDA and TPU; B, H
  and W symbolic. Needs jax and flatbuffers (jax's deserialiser imports it; jax does not
  install it).
- ``onnx``: ``detector.onnx`` through ``jax2onnx`` (opset 23), NMS included as an ONNX Loop of the
  same greedy rule; B, H and W dynamic. Needs onnxruntime only.
- ``savedmodel``: ``saved_model/`` through ``jax2tf`` (signature ``serving_default``) for a fixed
  input [1, S, S, 3] (TF 2.21 cannot run it with symbolic shapes). Needs tensorflow.
- ``tflite``: ``detector.tflite`` (float32) and ``detector_int8.tflite`` (int8 weights and
  activations, calibrated on the images of ``calibration``, default the eval split), converted
  from that SavedModel by TF's TFLite converter, input [1, S, S, 3]. Needs ai-edge-litert.

The SavedModel and TFLite inputs are images already of the model's size S; inside, they go
through the same resize (S to S, not the identity) as every other format, so their detections
equal ``--mode=predict``'s on S x S pictures.

Each written artifact (but the int8 one, which differs by design) is run in a fresh process by its
own runtime (on images of another size than the model's where the input allows) and compared
with the jax function. A requested format that cannot be written or fails its check is left out
and ``export_detector`` raises ``ExportError`` naming it and why, after writing the others;
``metadata.json`` says which failed. The export is written into a new folder beside ``output``
that replaces ``output`` (an earlier export, or nothing) at the end, so a folder never holds
artifacts of two exports; a folder that holds anything an export does not write is refused.
``how_to_call(name)`` (in ``metadata.json`` and README) is a whole program per format that
prints a picture's detections with the format's runtime, numpy and pillow alone.
"""

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssd_jax import config_utils, console, parallel, postprocess, preprocess, priors
from ssd_jax.config_utils import ConfigError
from ssd_jax.inference import Detector, detect_images

FORMATS = ("jax", "onnx", "savedmodel", "tflite")
FILES = {"jax": "detector.jaxexport", "onnx": "detector.onnx", "savedmodel": "saved_model",
         "tflite": "detector.tflite", "tflite_int8": "detector_int8.tflite"}
METADATA_FILE = "metadata.json"
OUTPUT_NAMES = ("boxes", "scores", "classes", "num_detections")
# One artifact for CPU, NVIDIA GPU and TPU hosts: jax.export lowers for each, the caller's
# platform is picked when it is called.
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
# format -> (module, how to install it) that it needs to be written and checked.
_EXTRA = "pip install -e '.[export]'"
# jax2onnx is not in the extra: its releases that convert under jax 0.10 (0.13.1 and later)
# require orbax-checkpoint<0.11.37 (which it never imports), below ours; 0.13.0 fails on
# symbolic dimensions (divmod of _DynamicDimSentinel).
JAX2ONNX_INSTALL = ("pip install --no-deps jax2onnx==0.17.1 onnx-ir==1.1.0 dm-pix==0.4.5 "
                    "equinox==0.13.8 jaxtyping==0.3.11 wadler-lindig==0.1.8 sympy==1.14.0 "
                    "mpmath==1.3.0")
_NEEDS = {"onnx": (("jax2onnx", JAX2ONNX_INSTALL), ("onnx", _EXTRA), ("onnxruntime", _EXTRA)),
          "tflite": (("ai_edge_litert", _EXTRA),)}

Outputs = dict[str, jax.Array]

# How the export's checks run each artifact in a fresh interpreter that imports none of ssd_jax,
# jax or flax: defines run(images uint8 [B, H, W, 3]) -> dict of OUTPUT_NAMES arrays, batches of
# noise compared whole with the jax function (users get the programs of how_to_call instead).
RUNNERS = {
    "onnx": """\
import onnxruntime
session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
def run(images):
  return dict(zip(NAMES, session.run(list(NAMES), {"images": images})))
""",
    "savedmodel": """\
import tensorflow as tf
serve = tf.saved_model.load(path).signatures["serving_default"]
def run(images):  # its input is [1, S, S, 3]: one S x S image at a time
  outs = [serve(images=tf.constant(image[None])) for image in images]
  return {k: np.concatenate([o[k].numpy() for o in outs]) for k in NAMES}
""",
    "tflite": """\
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=path)
runner = interpreter.get_signature_runner("serving_default")
def run(images):  # its input is [1, S, S, 3]: one S x S image at a time
  outs = [runner(images=image[None]) for image in images]
  return {k: np.concatenate([o[k] for o in outs]) for k in NAMES}
""",
}
# Runs RUNNERS[format] in a fresh interpreter: argv = artifact path, npz with `images`, output npz.
_RUN_IN_FRESH_PROCESS = """\
import sys
import numpy as np
NAMES = {names}
path, inputs, outputs = sys.argv[1:]
{runner}
np.savez(outputs, **run(np.load(inputs)["images"]))
"""

# metadata.json's how_to_call, and README's "Export" (with the folder EXPORT/; metadata.json's
# are run in the export folder): one whole program per format that prints the detections of a
# picture (photo.jpg), with the format's runtime, numpy and pillow alone.
_SNIPPET_HEAD = """\
import json
import numpy as np
from PIL import Image  # pip install pillow
metadata = json.load(open("EXPORT/metadata.json"))
image = np.asarray(Image.open("photo.jpg").convert("RGB"))  # yours, any size: uint8 [H, W, 3]
"""
_SNIPPET_SQUARE = """\
size = metadata["image_size"]  # this format takes one size x size picture: resize yours first
square = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
"""
_SNIPPET_CALL = {
    "jax": """\
import jax  # pip install jax flatbuffers
exported = jax.export.deserialize(bytearray(open("EXPORT/detector.jaxexport", "rb").read()))
out = {k: np.asarray(v) for k, v in exported.call(image[None]).items()}  # a batch of one
""",
    "onnx": """\
import onnxruntime  # pip install onnxruntime
session = onnxruntime.InferenceSession("EXPORT/detector.onnx", providers=["CPUExecutionProvider"])
names = ["boxes", "scores", "classes", "num_detections"]
out = dict(zip(names, session.run(names, {"images": image[None]})))  # a batch of one
""",
    "savedmodel": """\
import tensorflow as tf  # pip install tensorflow
serve = tf.saved_model.load("EXPORT/saved_model").signatures["serving_default"]
out = {k: v.numpy() for k, v in serve(images=tf.constant(square[None])).items()}
""",
    "tflite": """\
from ai_edge_litert.interpreter import Interpreter  # pip install ai-edge-litert
runner = Interpreter(model_path="EXPORT/detector.tflite").get_signature_runner("serving_default")
out = runner(images=square[None])
""",
}
_SNIPPET_BOXES_BACK = """\
height, width = image.shape[:2]  # boxes from pixels of the square to pixels of the picture
out["boxes"] = out["boxes"] * np.array([width, height, width, height]) / size
"""
_SNIPPET_PRINT = """\
n = int(out["num_detections"][0])  # rows 0..n-1 hold the detections, best first
threshold = metadata["display_score_threshold"]  # --mode=predict draws those scoring at least this
print(f"{n} detections, {int((out['scores'][0, :n] >= threshold).sum())} scoring >= {threshold}")
for i in range(min(n, 10)):  # the best 10 whatever their score: class, score, x0 y0 x1 y1 in px
  name = metadata["class_names"][out["classes"][0, i] - 1]
  box = [round(float(v), 1) for v in out["boxes"][0, i]]
  print(name, round(float(out["scores"][0, i]), 4), box)
"""
# The formats whose input is one image of exactly the model's size.
FIXED_SIZE = ("savedmodel", "tflite")


def how_to_call(name: str, folder: str = "") -> str:
  """Format ``name``'s program (metadata.json's ``how_to_call``) for an export in ``folder``
  ("" for the current folder, README's "EXPORT/")."""
  fixed = name in FIXED_SIZE
  text = (_SNIPPET_HEAD + (_SNIPPET_SQUARE if fixed else "") + _SNIPPET_CALL[name]
          + (_SNIPPET_BOXES_BACK if fixed else "") + _SNIPPET_PRINT)
  return text.replace("EXPORT/", folder)


class ExportError(RuntimeError):
  """Requested formats that were not written; ``failed`` maps each to why (one line)."""

  def __init__(self, failed: dict[str, str]):
    self.failed = dict(failed)
    super().__init__("\n".join(f"--format={name} not written: {reason}"
                               for name, reason in failed.items()))


def parse_formats(text: str) -> tuple[str, ...]:
  """``--format``'s comma-separated names -> the formats, in order, each once."""
  names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
  unknown = [n for n in names if n not in FORMATS]
  if not names or unknown:
    raise ConfigError(f"--format={text!r}: expected comma-separated formats among "
                      f"{', '.join(FORMATS)}; unknown: {', '.join(unknown) or 'none given'}")
  return names


def check_installed(formats: Sequence[str]) -> None:
  """Raises ConfigError naming the first missing package of a requested format and how to
  install it."""
  for name in formats:
    for module, install in _NEEDS.get(name, ()):
      if importlib.util.find_spec(module) is None:
        raise ConfigError(f"--format={name} needs the package {module}, which is not "
                          f"installed: {install}")


def serving_function(detector: Detector) -> Callable[[jax.Array], Outputs]:
  """The exported function: uint8 RGB images [B, H, W, 3] -> {boxes [B, K, 4] pixels xyxy,
  scores [B, K], classes [B, K], num_detections [B]}; ``detector``'s parameters are constants."""
  config = detector.config
  params, model_state = parallel.host_value((detector.params, detector.model_state))
  prior_boxes = priors.from_config(config)

  def serve(images: jax.Array) -> Outputs:
    inputs = preprocess.preprocess(images, config)
    boxes, scores, classes, valid = detect_images(
        params, model_state, inputs, graphdef=detector.graphdef, prior_boxes=prior_boxes,
        config=config)
    height, width = (jnp.asarray(n, jnp.float32) for n in images.shape[1:3])
    return {"boxes": boxes * jnp.stack([width, height, width, height]),  # unused rows stay 0
            "scores": scores, "classes": classes,
            "num_detections": valid.sum(axis=1, dtype=jnp.int32)}  # valid rows come first

  return serve


def export_function(serve: Callable[[jax.Array], Outputs],
                    platforms: Sequence[str] = DEFAULT_PLATFORMS) -> jax.export.Exported:
  """``serve`` exported for ``platforms``, on uint8 [b, h, w, 3] with symbolic b, h and w."""
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, h, w, 3"), jnp.uint8)
  return jax.export.export(jax.jit(serve), platforms=tuple(platforms))(spec)


def save_onnx(serve: Callable[[jax.Array], Outputs], path: str) -> None:
  """``serve`` as an ONNX model at ``path`` (jax2onnx), one file: input ``images`` uint8
  [B, H, W, 3] with dynamic B, H and W; outputs OUTPUT_NAMES."""
  import onnx_ir
  from jax2onnx import to_onnx

  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("B, H, W, 3"), jnp.uint8)
  def outputs(images: jax.Array) -> tuple[jax.Array, ...]:
    detections = serve(images)  # once: jax2onnx does not merge repeated traces of the network
    return tuple(detections[k] for k in OUTPUT_NAMES)

  model = to_onnx(outputs, inputs=[spec], input_names=["images"],
                  output_names=list(OUTPUT_NAMES), model_name="ssd_jax", return_mode="ir")
  _remove_unused_initializers(model)
  onnx_ir.save(model, path)  # weights inline: jax2onnx's own "file" mode spills them beside it


def _remove_unused_initializers(model: "onnx_ir.Model") -> None:
  """Drops the constants no node reads from every graph of onnx_ir ``model``, the NMS Loop's
  body included (jax2onnx's clean-up does the main graph only; onnxruntime warns about each)."""
  for graph in model.graphs():
    for value in list(graph.initializers.values()):
      if not value.uses() and value not in graph.outputs and value not in graph.inputs:
        del graph.initializers[value.name]


# The jax releases whose private serialiser _stablehlo_for_tf replaces were read and run with it
# (its name, signature and the StableHLO TF 2.21 then reads), >= the first, < the second. Widen
# it only after checking a new jax: tests/test_export.py fails when the installed jax is outside.
STABLEHLO_SWAP_JAX = ((0, 10, 2), (0, 11))


def check_jax_for_tf(version: str | None = None) -> None:
  """Raises RuntimeError unless jax ``version`` (default: the installed one) is in
  STABLEHLO_SWAP_JAX (the SavedModel and TFLite formats need it), naming the range and how to
  install it."""
  version = version or jax.__version__
  low, high = (".".join(map(str, v)) for v in STABLEHLO_SWAP_JAX)
  numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:3])
  if not STABLEHLO_SWAP_JAX[0] <= numbers < STABLEHLO_SWAP_JAX[1]:
    raise RuntimeError(
        f"the savedmodel and tflite formats need jax >= {low}, < {high} (they replace a private "
        f"serialiser of jax, checked against those releases, to write StableHLO that TF 2.21 "
        f"reads); jax {version} is installed: pip install 'jax>={low},<{high}'")


@contextlib.contextmanager
def _stablehlo_for_tf() -> Iterator[None]:
  """Within it, jax serialises StableHLO for consumers 12 weeks old instead of 4.

  jax.export targets the StableHLO of 4 weeks ago (jax 0.10.2: 1.15.0), newer than what TF's
  XlaCallModule and TFLite converter read (TF 2.21: up to 1.13.7, jax's 12-week target). No
  public route reaches TF with another target: jax.export and jax2tf have no option for it, and
  the public re-serialiser (``jax.extend.mlir.serialize_portable_artifact``, used below) feeds
  only TF's XlaCallModule op, which TF does not export (not in ``tf.raw_ops``). So jax's private
  serialiser is swapped for the duration, for the jax releases of STABLEHLO_SWAP_JAX only.
  """
  check_jax_for_tf()
  from jax._src.export import _export  # the one private name: its _module_to_bytecode
  from jax.extend import backend
  from jax.extend import mlir
  from jax.extend.mlir.dialects import stablehlo

  def serialize(module) -> bytes:
    version = stablehlo.get_version_from_compatibility_requirement(
        stablehlo.StablehloCompatibilityRequirement.WEEK_12)
    return mlir.serialize_portable_artifact(module, version,
                                            backend.get_backend().serialize_with_sdy)

  original = _export._module_to_bytecode
  _export._module_to_bytecode = serialize
  try:
    yield
  finally:
    _export._module_to_bytecode = original


def save_saved_model(serve: Callable[[jax.Array], Outputs], path: str, image_size: int,
                     platforms: Sequence[str] = DEFAULT_PLATFORMS) -> None:
  """``serve`` as a TF SavedModel at ``path`` (``jax2tf``): signature ``serving_default`` takes
  ``images`` uint8 [1, S, S, 3] and returns the outputs by name.

  The shapes are static: with symbolic ones TF 2.21's XlaCallModule cannot refine the module
  ("Module has dynamic shapes": dynamic_iota, sort, real_dynamic_slice of top_k; 'mhlo.gather' op
  Dynamic shaped operand is not supported), and the TFLite converter needs static shapes anyway.
  """
  import tensorflow as tf
  from jax.experimental import jax2tf

  converted = jax2tf.convert(serve, with_gradient=False,
                             native_serialization_platforms=tuple(platforms))
  module = tf.Module()
  module.serve = tf.function(
      converted, autograph=False,
      input_signature=[tf.TensorSpec([1, image_size, image_size, 3], tf.uint8, name="images")])
  with _stablehlo_for_tf():  # jax2tf serialises when the function is traced, here
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})


def save_tflite(saved_model: str, path: str,
                calibration: Callable[[], Iterator[np.ndarray]] | None = None) -> None:
  """The SavedModel at ``saved_model`` (``save_saved_model``) as a TFLite flatbuffer at ``path``:
  float32, or with ``calibration`` (a function giving uint8 [S, S, 3] images) int8 post-training
  quantised (weights and activations)."""
  import tensorflow as tf

  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
  if calibration is not None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in calibration())
  model = converter.convert()
  with open(path, "wb") as f:
    f.write(model)


def run_in_fresh_process(name: str, path: str, images: np.ndarray) -> dict[str, np.ndarray]:
  """``RUNNERS[name]`` on ``images`` in a new interpreter (its runtime alone, none of our code).
  Raises RuntimeError with its stderr when it fails."""
  script = _RUN_IN_FRESH_PROCESS.format(names=OUTPUT_NAMES, runner=RUNNERS[name])
  with tempfile.TemporaryDirectory() as folder:
    inputs, outputs = os.path.join(folder, "in.npz"), os.path.join(folder, "out.npz")
    np.savez(inputs, images=images)
    result = subprocess.run([sys.executable, "-c", script, path, inputs, outputs],
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            capture_output=True, text=True, timeout=900)
    if result.returncode:
      raise RuntimeError(result.stderr)
    return dict(np.load(outputs))


def check_artifact(name: str, path: str, exported: jax.export.Exported,
                   images: np.ndarray) -> None:
  """Raises unless runtime ``name`` runs the artifact at ``path`` in a fresh process and agrees
  with ``exported`` on ``images``: the same counts and classes, scores within 1e-4, boxes within
  0.01 px (float32 rounding of another compiler)."""
  expected = {k: np.asarray(v) for k, v in exported.call(images).items()}
  got = run_in_fresh_process(name, path, images)
  np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
  np.testing.assert_allclose(got["scores"], expected["scores"], rtol=0, atol=1e-4)
  np.testing.assert_array_equal(got["classes"], expected["classes"])
  np.testing.assert_allclose(got["boxes"], expected["boxes"], rtol=0, atol=1e-2)


def _reason(error: Exception) -> str:
  """One line: the error's type and the lines of its message that report errors (compiler
  diagnostics, the exception ending a traceback), else its first line."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  diagnostics = [line for line in lines if "error:" in line.lower()] or lines[-1:]
  return f"{type(error).__name__}: {' | '.join(dict.fromkeys(diagnostics))}"[:800]


def try_artifact(name: str, write: Callable[[], None], check: Callable[[], None],
                 paths: Sequence[str]) -> str | None:
  """Writes and checks one artifact; returns None, or why it was left out (and removed). The
  converters' messages go to log.txt only (``console.converters_to_log``)."""
  logging.info("writing the %s format (the converter's messages go to log.txt)", name)
  try:
    with console.converters_to_log():
      write()
    check()
  except Exception as error:  # noqa: BLE001 -- one format failing must not stop the others
    for path in paths:
      shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else (
          os.path.exists(path) and os.remove(path))
    console.to_file_only(f"the {name} format failed: {error}")
    return _reason(error)
  return None


def calibration_images(config: ml_collections.ConfigDict, pattern: str | None,
                       count: int) -> Callable[[], Iterator[np.ndarray]]:
  """A function giving up to ``count`` uint8 [S, S, 3] images for int8 calibration: the files of
  ``pattern`` (comma-separated globs), else the eval split's; resized as ``--mode=predict`` does."""
  import tensorflow as tf

  from ssd_jax import data
  from ssd_jax.data.decode import decode_rgb

  if pattern:
    files = sorted(f for part in pattern.split(",") if part.strip()
                   for f in tf.io.gfile.glob(os.path.expanduser(part.strip())))
    if not files:
      raise FileNotFoundError(f"--images={pattern!r} (int8 calibration) matches no file")

  resize = jax.jit(lambda image: preprocess.resize(image[None], config.model.image_size)[0])

  def pictures() -> Iterator[np.ndarray]:
    if pattern:
      for path in files:
        yield decode_rgb(tf.io.read_file(path))  # as the input pipeline and predict
    else:
      # The whole split, also when process 0 of several exports.
      for example in data.examples(data.make_source(config, "eval", 0, 1)):
        if example["valid"]:
          yield example["image"]

  def images() -> Iterator[np.ndarray]:
    for _, picture in zip(range(count), pictures()):
      yield np.asarray(resize(np.asarray(picture))).round().clip(0, 255).astype(np.uint8)

  return images


_OUTPUTS_SPEC = {
    "boxes": "float32 [B, K, 4] xyxy in pixels of the input images",
    "scores": "float32 [B, K], descending",
    "classes": "int32 [B, K], 1..C-1: class_names[label - 1]",
    "num_detections": "int32 [B]: rows 0..n-1 are detections, later rows are zeros"}
_RESIZED_INSIDE = ("RGB images, all of one size within a call; resized inside to image_size x "
                   "image_size (bilinear, aspect ratio not kept, as --mode=predict) and normalised")


def _any_size_input() -> dict:
  return {"name": "images", "dtype": "uint8", "shape": ["B", "H", "W", 3],
          "description": _RESIZED_INSIDE}


def _format_entries(config: ml_collections.ConfigDict, exported: jax.export.Exported
                    ) -> dict[str, dict]:
  """metadata.json's entry of each format: its files, input spec and how to run it."""
  size = config.model.image_size
  fixed = {"name": "images", "dtype": "uint8", "shape": [1, size, size, 3],
           "description": "one RGB image of exactly image_size x image_size pixels (resize it "
                          "first; inside it is resized again by the same rule and normalised)"}
  entries = {
      "jax": {"input": _any_size_input(), "runtime": f"jax >= {jax.__version__}",
              "platforms": list(exported.platforms),
              "calling_convention_version": exported.calling_convention_version},
      "onnx": {"input": _any_size_input(), "runtime": "onnxruntime (opset 23)"},
      "savedmodel": {"input": fixed, "runtime": "tensorflow", "signature": "serving_default"},
      "tflite": {"input": fixed, "runtime": "ai-edge-litert", "signature": "serving_default"},
  }
  return {name: {**entry, "how_to_call": how_to_call(name)} for name, entry in entries.items()}


def metadata(config: ml_collections.ConfigDict, step: int, class_names: Sequence[str],
             exported: jax.export.Exported, written: dict[str, list[str]],
             failed: dict[str, str]) -> dict:
  """What ``metadata.json`` says: the formats written (files, input spec, a program that runs
  each), the requested ones that failed and why, and what all share (outputs, classes,
  thresholds)."""
  d = postprocess.detect_args(config)
  entries = _format_entries(config, exported)
  return {
      "formats": {name: {"files": files, **entries[name]} for name, files in written.items()},
      "failed": failed,
      "step": step, "model": config.model.name, "image_size": config.model.image_size,
      "outputs": _OUTPUTS_SPEC,
      "max_detections": d["max_detections"], "class_names": list(class_names),
      "detection": {k: d[k] for k in ("score_threshold", "nms_iou_threshold", "pre_nms_top_k")},
      "display_score_threshold": config.predict.score_threshold,
      "jax_version": jax.__version__,
  }


def _check_images(image_size: int) -> np.ndarray:
  """Two noise images of another size than the model's, for the fresh-process checks."""
  return np.random.default_rng(0).integers(0, 256, (2, image_size + 3, image_size - 1, 3),
                                           np.uint8)


def _class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The config's class names; the dataset's (tfds, json) through the input pipeline's sources
  only when the config defers to them, so that the jax format is written without TensorFlow."""
  if config.data.class_names is not None:
    return tuple(config.data.class_names)
  from ssd_jax.data import sources  # pylint: disable=g-import-not-at-top  (imports TF)
  return sources.class_names(config)


def check_output(output: str) -> None:
  """Raises ConfigError unless folder ``output`` may be replaced by an export: new, empty or an
  earlier export (only files an export writes); never a file, nor a path below one."""
  blocker = config_utils.file_in_the_way(output)
  if blocker:
    raise ConfigError(f"--output={output}: {blocker} is a file; expected a folder")
  folder = os.path.expanduser(output)
  foreign = sorted(set(os.listdir(folder)) - {*FILES.values(), METADATA_FILE}) if os.path.isdir(
      folder) else []
  if foreign:
    raise ConfigError(f"--output={output} holds files that an export does not write "
                      f"({', '.join(foreign[:5])}); an export replaces its whole folder: give a "
                      "new or empty folder")


def _replace_folder(new: str, output: str) -> None:
  """Folder ``new`` becomes ``output``; what was there (an earlier export) is removed after."""
  if not os.path.exists(output):
    os.rename(new, output)
    return
  old = new + ".old"
  os.rename(output, old)
  os.rename(new, output)
  shutil.rmtree(old)


def _write_formats(serve: Callable[[jax.Array], Outputs], exported: jax.export.Exported,
                   formats: Sequence[str], folder: str, size: int,
                   calibration: Callable[[], Iterator[np.ndarray]] | None
                   ) -> tuple[dict[str, list[str]], dict[str, str]]:
  """Writes and checks ``formats`` into ``folder``; returns (files of each format written,
  why each of the others failed)."""
  path = {name: os.path.join(folder, file) for name, file in FILES.items()}
  written: dict[str, list[str]] = {}
  failed: dict[str, str] = {}
  square = np.asarray(jax.jit(lambda x: preprocess.resize(x, size))(_check_images(size)))
  square = square.round().clip(0, 255).astype(np.uint8)[:1]  # [1, S, S, 3]
  with tempfile.TemporaryDirectory() as scratch:
    saved_model = path["savedmodel"]
    for name in (f for f in FORMATS if f in formats):  # savedmodel before tflite, made from it
      if name == "jax":
        with open(path["jax"], "wb") as f:
          f.write(exported.serialize())
        reason = None
      elif name == "onnx":
        reason = try_artifact(
            name, lambda: save_onnx(serve, path["onnx"]),
            lambda: check_artifact("onnx", path["onnx"], exported, _check_images(size)),
            [path["onnx"]])
      elif name == "savedmodel":
        reason = try_artifact(
            name, lambda: save_saved_model(serve, saved_model, size, exported.platforms),
            lambda: check_artifact("savedmodel", saved_model, exported, square), [saved_model])
      else:
        def write_tflite():
          source = saved_model if "savedmodel" in written else os.path.join(scratch, "sm")
          if source != saved_model:
            save_saved_model(serve, source, size, ("cpu",))
          save_tflite(source, path["tflite"])
          save_tflite(source, path["tflite_int8"], calibration)

        def check_tflite():
          check_artifact("tflite", path["tflite"], exported, square)
          run_in_fresh_process("tflite", path["tflite_int8"], square)  # accuracy: RESULTS.md

        reason = try_artifact(name, write_tflite, check_tflite,
                              [path["tflite"], path["tflite_int8"]])
      if reason is None:
        written[name] = [FILES[name]] + ([FILES["tflite_int8"]] if name == "tflite" else [])
      else:
        failed[name] = reason
  return written, failed


def export_detector(config: ml_collections.ConfigDict, workdir: str, output: str,
                    step: int | None = None, formats: Sequence[str] = ("jax",),
                    platforms: Sequence[str] = DEFAULT_PLATFORMS,
                    calibration: str | None = None, calibration_count: int = 100) -> dict | None:
  """Exports checkpoint ``step`` (default: the latest) of ``workdir`` into folder ``output`` in
  ``formats`` (of FORMATS), replacing an earlier export there. int8 TFLite calibrates on
  ``calibration_count`` images of the files ``calibration`` (a pattern as ``--images``), else of
  the eval split.

  Returns the metadata, also written to ``output/metadata.json``. Raises ExportError, after
  writing the others, when a requested format could not be written. On several processes every
  process restores the checkpoint (orbax restores together) and process 0 alone writes the
  export; the others return None at once (``main`` has them wait for it).
  """
  formats = parse_formats(",".join(formats))
  check_installed(formats)
  check_output(output)
  calibration_source = (calibration_images(config, calibration, calibration_count)
                        if "tflite" in formats else None)
  detector = Detector.restore(config, workdir, step)
  if jax.process_index() != 0:
    logging.info("process 0 writes the export")
    return None
  serve = serving_function(detector)
  exported = export_function(serve, platforms)
  output = os.path.abspath(os.path.expanduser(output))
  # Beside output, so that it is renamed into place (same file system), with makedirs' mode.
  staging = os.path.join(os.path.dirname(output),
                         f".{os.path.basename(output)}.{uuid.uuid4().hex[:8]}.partial")
  os.makedirs(staging)
  try:
    written, failed = _write_formats(serve, exported, formats, staging,
                                     config.model.image_size, calibration_source)
    info = metadata(config, detector.step, _class_names(config), exported, written, failed)
    with open(os.path.join(staging, METADATA_FILE), "w") as f:
      json.dump(info, f, indent=2)
    _replace_folder(staging, output)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  logging.info("exported step %d of %s to %s: %s", detector.step, workdir, output,
               ", ".join(written) or "no format")
  if failed:
    raise ExportError(failed)
  return info
