"""Exported SSD300-VGG16 detectors on this CPU, next to torchvision's ssd300_vgg16, in one run.

Each artifact of ``ssd_jax.export`` (random weights: speed does not depend on them) is written
and then timed by its own runtime: ``jax.export`` (exported.call), ONNX (onnxruntime), TFLite
float32 and int8 (LiteRT interpreter, one image per call: its input is a fixed [1, 300, 300, 3];
batch 8 is 8 calls). Each is the whole detector: resize and normalisation, network, NMS with
SSD300's thresholds. torchvision's ``ssd300_vgg16`` (weights=None) runs eager in eval mode on the
same images, also whole (its transform, network and postprocess_detections), and, when
``torch.onnx.export`` manages it, as ONNX in onnxruntime. Inputs are uint8 300 x 300 noise
images (float 0..1 for torchvision), so no format gets a resize that another skips.

Prints per-image latency at batch 1, images/s at batch 8 and each figure's ratio to torchvision
eager (> 1: faster than torchvision).

  python experiments/bench_export.py [--repeats 10] [--threads 0] [--skip onnx,tflite]
"""

import argparse
import os
import sys
import tempfile
import time
from typing import Callable

# torch and torchvision's detection models first: imported after jax and TF, torch's triton
# import segfaults (seen with torch 2.14.1).
import torch  # noqa: F401
import torchvision.models.detection  # noqa: F401
import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(__file__))
from timing import median_seconds  # noqa: E402

from ssd_jax import config_utils, export, inference, models, parallel, xla_flags  # noqa: E402

xla_flags.apply("export")  # before the first computation: XLA reads XLA_FLAGS once

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "ssd300.py")


def random_detector() -> inference.Detector:
  config = config_utils.load_config(CONFIG)
  model = models.create_model(config, nnx.Rngs(0))
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return inference.Detector(config, params, rest, 0, graphdef, parallel.create_mesh(config))


def per_image(run: Callable[[np.ndarray], object], images: np.ndarray, repeats: int) -> float:
  return median_seconds(lambda: run(images), repeats) / len(images)


def ours(folder: str, skip: set[str]) -> dict[str, Callable[[np.ndarray], object]]:
  """Writes the artifacts into ``folder``; name -> function running a uint8 batch."""
  detector = random_detector()
  serve = export.serving_function(detector)
  runners = {}
  start = time.perf_counter()
  exported = export.export_function(serve, ("cpu",))
  print(f"jax.export: {time.perf_counter() - start:.0f} s to export")
  runners["jax.export"] = lambda images: exported.call(images)
  if "onnx" not in skip:
    import onnxruntime
    path = os.path.join(folder, "detector.onnx")
    start = time.perf_counter()
    export.save_onnx(serve, path)
    print(f"onnx: {time.perf_counter() - start:.0f} s to convert")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    runners["onnxruntime"] = lambda images: session.run(None, {"images": images})
  if "tflite" not in skip:
    from ai_edge_litert.interpreter import Interpreter
    calibration = lambda: iter(np.random.default_rng(1).integers(0, 256, (8, 300, 300, 3),
                                                                  np.uint8))
    saved_model = os.path.join(folder, "saved_model")
    export.save_saved_model(serve, saved_model, 300, ("cpu",))
    for name, data in (("litert float32", None), ("litert int8", calibration)):
      path = os.path.join(folder, name.replace(" ", "_") + ".tflite")
      start = time.perf_counter()
      export.save_tflite(saved_model, path, data)
      print(f"{name}: {time.perf_counter() - start:.0f} s to convert")
      runner = litert_runner(Interpreter, path)
      runners[name] = lambda images, r=runner: [r(images=image[None]) for image in images]
  return runners


def litert_runner(interpreter: type, path: str) -> Callable:
  """The serving signature of the .tflite at ``path``, with LiteRT's default XNNPACK delegate
  when it accepts the model, else with the built-in kernels only (said on stdout)."""
  from ai_edge_litert.interpreter import OpResolverType
  runner = interpreter(model_path=path).get_signature_runner("serving_default")
  try:
    runner(images=np.zeros((1, 300, 300, 3), np.uint8))
    return runner
  except RuntimeError as error:
    print(f"{os.path.basename(path)}: XNNPACK refused it ({str(error)[:120]}); built-in kernels")
    return interpreter(model_path=path, experimental_op_resolver_type=(
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)).get_signature_runner("serving_default")


def torchvision_runners(folder: str, skip: set[str]) -> dict[str, Callable[[np.ndarray], object]]:
  """torchvision ssd300_vgg16 eager, and its ONNX export when that works."""
  import torch
  import torchvision

  model = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None).eval()

  def tensors(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0

  def eager(images: np.ndarray):
    with torch.inference_mode():
      return model(list(tensors(images)))

  runners = {"torchvision eager": eager}
  if "torch_onnx" not in skip:
    try:
      import onnxruntime
      path = os.path.join(folder, "torchvision.onnx")
      torch.onnx.export(model, (list(tensors(np.zeros((1, 300, 300, 3), np.uint8))),), path,
                        opset_version=17, dynamo=False)
      session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
      name = session.get_inputs()[0].name
      # Its export traces one image: a batch of 8 is 8 calls.
      runners["torchvision onnxruntime"] = lambda images: [
          session.run(None, {name: tensors(image[None]).numpy()[0]}) for image in images]
    except Exception as error:  # noqa: BLE001 -- reported, the other figures still count
      print(f"torchvision -> ONNX failed: {type(error).__name__}: {str(error)[:300]}")
  return runners


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
  parser.add_argument("--skip", default="", help="comma-separated: onnx, tflite, torch_onnx")
  args = parser.parse_args()
  skip = set(filter(None, args.skip.split(",")))
  import torch
  if args.threads:
    torch.set_num_threads(args.threads)
  print(f"jax {jax.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start")
  print(xla_flags.summary())
  rng = np.random.default_rng(0)
  batches = {1: rng.integers(0, 256, (1, 300, 300, 3), np.uint8),
             8: rng.integers(0, 256, (8, 300, 300, 3), np.uint8)}
  with tempfile.TemporaryDirectory() as folder:
    runners = {**torchvision_runners(folder, skip), **ours(folder, skip)}
    results = {}
    for name, run in runners.items():
      results[name] = [per_image(run, batches[b], args.repeats) for b in (1, 8)]
  base1, base8 = results["torchvision eager"]
  print(f"\n{'detector':26s} {'batch 1 ms':>10s} {'x torchvision':>13s} "
        f"{'batch 8 img/s':>13s} {'x torchvision':>13s}")
  for name, (t1, t8) in results.items():
    print(f"{name:26s} {t1 * 1e3:10.1f} {base1 / t1:13.2f} {1 / t8:13.1f} {base8 / t8:13.2f}")
  print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
  main()
