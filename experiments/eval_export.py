"""VOC mAP of the exported TFLite detectors (float32 and int8) on a config's eval split.

Exports ``--workdir``'s checkpoint as TFLite (``ssd_jax.export``; int8 calibrated on the eval
split, as ``--mode=export`` does by default), runs both files in the LiteRT interpreter on every
eval image (decoded, resized to S x S by ``ssd_jax.preprocess``, rounded to uint8, as the TFLite
input requires) and scores them with the config's VOC metric, next to the jax.export artifact on
the same uint8 S x S images. The int8 goal: within 0.02 mAP of float.

  python experiments/eval_export.py --config=configs/quickstart.py --workdir=runs/quickstart
"""

import argparse
import os
import tempfile

import jax
import numpy as np

from ssd_jax import config_utils, data, export, preprocess
from ssd_jax.evaluation import voc
from ssd_jax.inference import Detector


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--calibration_count", type=int, default=100)
  args = parser.parse_args()
  config = config_utils.load_config(*args.config.split(":"))
  size = config.model.image_size
  detector = Detector.restore(config, args.workdir)
  serve = export.serving_function(detector)
  exported = export.export_function(serve, ("cpu",))
  from ai_edge_litert.interpreter import Interpreter

  with tempfile.TemporaryDirectory() as folder:
    runners = {"jax.export": lambda image: exported.call(image[None])}
    saved_model = os.path.join(folder, "saved_model")
    export.save_saved_model(serve, saved_model, size, ("cpu",))
    for name, calibration in (("tflite float32", None), ("tflite int8", export.calibration_images(
        config, None, args.calibration_count))):
      path = os.path.join(folder, name.replace(" ", "_") + ".tflite")
      export.save_tflite(saved_model, path, calibration)
      runner = Interpreter(model_path=path).get_signature_runner("serving_default")
      runners[name] = lambda image, r=runner: r(images=image[None])
    resize = jax.jit(lambda image: preprocess.resize(image[None], size)[0])
    collected = {name: voc.Collector() for name in runners}
    for example in data.examples(data.make_source(config, "eval")).as_numpy_iterator():
      if not example["valid"]:
        continue
      square = np.asarray(resize(example["image"])).round().clip(0, 255).astype(np.uint8)
      for name, run in runners.items():
        out = {k: np.asarray(v) for k, v in run(square).items()}
        n = int(out["num_detections"][0])
        valid = np.arange(out["scores"].shape[1]) < n
        boxes = out["boxes"] / size  # pixels of the S x S input -> [0, 1]
        mask = np.ones(len(example["labels"]), bool)
        collected[name].add_batch({
            "boxes": example["boxes"][None], "labels": example["labels"][None],
            "mask": mask[None], "difficult": example["difficult"][None],
            "image_id": np.asarray([example["image_id"]]), "size": example["size"][None],
            "valid": np.asarray([True]), "det_boxes": boxes, "det_scores": out["scores"],
            "det_classes": out["classes"], "det_valid": valid[None]})
  metric = config.eval.metric
  results = {name: voc.evaluate(c.detections, c.ground_truths, config.model.num_classes,
                                use_07_metric=metric == "voc07")["mAP"]
             for name, c in collected.items()}
  count = next(iter(collected.values())).num_images
  print(f"{metric} mAP on {count} eval images of {args.config} (step {detector.step}):")
  for name, value in results.items():
    print(f"  {name:16s} {value:.4f}  ({value - results['tflite float32']:+.4f} vs float32)")


if __name__ == "__main__":
  main()
