"""``--mode=export``: the trained detector as one serialised function, loadable without ssd_jax.

``export_detector(config, workdir, output)`` writes to ``output``:
- ``detector.jaxexport``: ``jax.export`` bytes (StableHLO) of the whole detector: the evaluation
  preprocessing (bilinear resize to the model's input size, as ``--mode=predict`` does, then
  normalisation), the network with the checkpoint's parameters baked in as constants, and batched
  per-class NMS. It maps uint8 RGB images [B, H, W, 3] (B, H and W symbolic: any batch and image
  size, one size per call) to a dict of ``boxes`` [B, K, 4] float32 xyxy in pixels of the input
  images, ``scores`` [B, K] float32 (descending), ``classes`` [B, K] int32 in 1..C-1 and
  ``num_detections`` [B] int32: rows 0..n-1 are the detections, the rest are zeros.
  K = ``config.detection.max_detections``. Running it needs only jax.
- ``metadata.json``: input and output specs, class names, thresholds, step, and how to call it.
- ``saved_model/``: the same function as a TF SavedModel through ``jax2tf`` (signature
  ``serving_default``), only when the installed TF can run it: it is written, reloaded and
  checked against the jax artifact, and left out with the reason in ``metadata.json`` otherwise.

Parameters are constants of the function, so the artifact is one self-contained file (SSD300:
about 105 MB of float32 weights).
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssd_jax import postprocess, preprocess, priors
from ssd_jax.data import sources
from ssd_jax.inference import Detector, detect_images

FUNCTION_FILE, METADATA_FILE, SAVED_MODEL_DIR = "detector.jaxexport", "metadata.json", "saved_model"
# One artifact for CPU, NVIDIA GPU and TPU hosts: jax.export lowers for each, the caller's
# platform is picked when it is called.
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")

Outputs = dict[str, jax.Array]

# Run by check_saved_model in a fresh interpreter: argv = SavedModel folder, npz of the test
# images and the jax artifact's outputs for them.
_SAVED_MODEL_CHECK = """
import sys
import numpy as np, tensorflow as tf
tf.config.set_visible_devices([], "GPU")
path, arrays = sys.argv[1:]
arrays = np.load(arrays)
got = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(arrays["images"]))
np.testing.assert_array_equal(got["num_detections"].numpy(), arrays["num_detections"])
np.testing.assert_allclose(got["scores"].numpy(), arrays["scores"], rtol=0, atol=1e-4)
"""

HOW_TO_CALL = """\
import json, jax, numpy as np
metadata = json.load(open("metadata.json"))
exported = jax.export.deserialize(bytearray(open("detector.jaxexport", "rb").read()))
images = np.stack([...])  # uint8 RGB [B, H, W, 3]: any B, H, W, all images of one call one size
out = exported.call(images)  # dict: boxes [B, K, 4] (pixels, xyxy), scores, classes, num_detections
n = int(out["num_detections"][0])
boxes, scores, classes = out["boxes"][0, :n], out["scores"][0, :n], out["classes"][0, :n]
names = [metadata["class_names"][c - 1] for c in classes]
"""


def serving_function(detector: Detector) -> Callable[[jax.Array], Outputs]:
  """The exported function: uint8 RGB images [B, H, W, 3] -> {boxes [B, K, 4] pixels xyxy,
  scores [B, K], classes [B, K], num_detections [B]}; ``detector``'s parameters are constants."""
  config = detector.config
  params, model_state = jax.device_get((detector.params, detector.model_state))
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


def save_saved_model(serve: Callable[[jax.Array], Outputs], path: str,
                     platforms: Sequence[str] = DEFAULT_PLATFORMS) -> None:
  """``serve`` as a TF SavedModel at ``path`` (``jax2tf``): signature ``serving_default`` takes
  ``images`` uint8 [B, H, W, 3] and returns the outputs by name."""
  import tensorflow as tf
  from jax.experimental import jax2tf

  converted = jax2tf.convert(serve, polymorphic_shapes=["(b, h, w, 3)"], with_gradient=False,
                             native_serialization_platforms=tuple(platforms))
  module = tf.Module()
  module.serve = tf.function(
      converted, autograph=False,
      input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
  tf.saved_model.save(module, path, signatures={"serving_default": module.serve})


def check_saved_model(path: str, exported: jax.export.Exported, image_size: int) -> None:
  """Raises unless a fresh TF process runs the SavedModel at ``path`` and agrees with
  ``exported`` on two noise images of another size than the model's: the same counts and
  (sorted) scores. Boxes and classes are not compared: TF's XLA may round differently and swap
  near-equal scores. A separate process keeps TF's C++ error dump out of this one's log."""
  images = np.random.default_rng(0).integers(0, 256, (2, image_size + 3, image_size - 1, 3),
                                             np.uint8)
  expected = exported.call(images)
  with tempfile.TemporaryDirectory() as folder:
    arrays = os.path.join(folder, "check.npz")
    np.savez(arrays, images=images, **{k: np.asarray(v) for k, v in expected.items()})
    result = subprocess.run([sys.executable, "-c", _SAVED_MODEL_CHECK, path, arrays],
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            capture_output=True, text=True, timeout=600)
  if result.returncode:
    raise RuntimeError(result.stderr)


def _reason(error: Exception) -> str:
  """One line: the error's type and the lines of its message that report errors (compiler
  diagnostics, the exception ending a traceback), else its first line."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  diagnostics = [line for line in lines if "error:" in line.lower()] or lines[:1]
  return f"{type(error).__name__}: {' | '.join(dict.fromkeys(diagnostics))}"[:800]


def try_saved_model(serve: Callable[[jax.Array], Outputs], exported: jax.export.Exported,
                    path: str, image_size: int) -> str | None:
  """Writes and checks the SavedModel; returns None, or why it was left out (and removed)."""
  try:
    save_saved_model(serve, path, exported.platforms)
    check_saved_model(path, exported, image_size)
  except Exception as error:  # noqa: BLE001 -- optional artifact: any TF-side failure skips it
    shutil.rmtree(path, ignore_errors=True)
    reason = _reason(error)
    logging.warning("no SavedModel: the installed TensorFlow could not run the one jax2tf wrote; "
                    "the jax.export artifact is complete (why: metadata.json saved_model_skipped)")
    return reason
  return None


def metadata(config: ml_collections.ConfigDict, step: int, class_names: Sequence[str],
             exported: jax.export.Exported, saved_model_skipped: str | None) -> dict:
  """What ``metadata.json`` says about the artifact."""
  d = postprocess.detect_args(config)
  return {
      "function_file": FUNCTION_FILE,
      "format": "jax.export serialised StableHLO: jax.export.deserialize(bytes).call(images)",
      "saved_model_dir": None if saved_model_skipped else SAVED_MODEL_DIR,
      "saved_model_skipped": saved_model_skipped,
      "step": step, "model": config.model.name, "image_size": config.model.image_size,
      "input": {"name": "images", "dtype": "uint8", "shape": ["B", "H", "W", 3],
                "description": "RGB images, all of one size within a call; resized inside to "
                               "image_size x image_size (bilinear, aspect ratio not kept, as "
                               "--mode=predict) and normalised"},
      "outputs": {
          "boxes": "float32 [B, K, 4] xyxy in pixels of the input images",
          "scores": "float32 [B, K], descending",
          "classes": "int32 [B, K], 1..C-1: class_names[label - 1]",
          "num_detections": "int32 [B]: rows 0..n-1 are detections, later rows are zeros"},
      "max_detections": d["max_detections"], "class_names": list(class_names),
      "detection": {k: d[k] for k in ("score_threshold", "nms_iou_threshold", "pre_nms_top_k")},
      "display_score_threshold": config.predict.score_threshold,
      "platforms": list(exported.platforms),
      "jax_version": jax.__version__,
      "calling_convention_version": exported.calling_convention_version,
      "how_to_call": HOW_TO_CALL,
  }


def export_detector(config: ml_collections.ConfigDict, workdir: str, output: str,
                    step: int | None = None, saved_model: bool = True,
                    platforms: Sequence[str] = DEFAULT_PLATFORMS) -> dict:
  """Exports checkpoint ``step`` (default: the latest) of ``workdir`` into folder ``output``.

  Returns the metadata, also written to ``output/metadata.json``.
  """
  detector = Detector.restore(config, workdir, step)
  serve = serving_function(detector)
  exported = export_function(serve, platforms)
  os.makedirs(output, exist_ok=True)
  with open(os.path.join(output, FUNCTION_FILE), "wb") as f:
    f.write(exported.serialize())
  skipped = "not requested"
  if saved_model:
    skipped = try_saved_model(serve, exported, os.path.join(output, SAVED_MODEL_DIR),
                              config.model.image_size)
  info = metadata(config, detector.step, sources.class_names(config), exported, skipped)
  with open(os.path.join(output, METADATA_FILE), "w") as f:
    json.dump(info, f, indent=2)
  logging.info("exported step %d of %s to %s (%s)", detector.step, workdir, output,
               ", ".join(exported.platforms))
  return info
