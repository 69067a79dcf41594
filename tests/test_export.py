"""Export: the jax.export artifact, run in a process without ssd_jax, gives --mode=predict's
detections; its preprocessing is the input pipeline's evaluation preprocessing."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

from ssd_jax import checkpoint, config_utils, export, parallel, predict, train

from conftest import CONFIG_DIR

# Image sizes (height, width) given to predict and to the artifact: the model's own 64 x 64
# and two that the artifact must resize as predict does.
SIZES = ((64, 64), (64, 64), (64, 64), (75, 100), (90, 60))
# predict rounds scores to 4 decimals and boxes to 0.1 px in detections.jsonl. Beyond that the
# two sides differ by float32 rounding only: XLA fuses the multiply-adds of resize and
# normalisation that TF rounds twice (scores differ by ~1e-7 here).
SCORE_TOLERANCE, BOX_TOLERANCE = 1e-3, 0.5  # relative, pixels

# Runs in a fresh interpreter: the artifact with jax and numpy only, nothing of ssd_jax.
LOADER = """
import json, sys
import jax, numpy as np
artifact, batches, output = sys.argv[1:]
exported = jax.export.deserialize(bytearray(open(artifact, "rb").read()))
results = {}
for name, images in np.load(batches).items():
  out = {k: np.asarray(v) for k, v in exported.call(images).items()}
  for i, n in enumerate(out["num_detections"]):
    results[f"{name}/{i}"] = {k: out[k][i, :n].tolist() for k in ("boxes", "scores", "classes")}
modules = sorted({m.split(".")[0] for m in sys.modules} & {"ssd_jax", "flax", "tensorflow"})
json.dump({"results": results, "modules": modules}, open(output, "w"))
"""


def tiny_config():
  config = config_utils.load_config(os.path.join(CONFIG_DIR, "quickstart.py"), "tiny")
  # The untrained tiny model scores 0.18-0.37 on the test images: this keeps its best few dozen
  # per image, away from the 200th (where max_detections cuts) and its near-ties.
  config.predict.score_threshold = 0.21
  return config


def save_initial_checkpoint(config, workdir: str) -> None:
  """A step-0 checkpoint of the tiny model, written as training writes its checkpoints."""
  _, state, _, _ = train.initial_state(config, parallel.create_mesh(config))
  manager = checkpoint.create_manager(workdir, keep=1)
  checkpoint.save(manager, state, {"step": 0})
  manager.close()


def write_images(folder) -> list[str]:
  """PNG files of coloured shapes on noise, one per entry of SIZES."""
  rng = np.random.default_rng(0)
  os.makedirs(folder)
  paths = []
  for index, (height, width) in enumerate(SIZES):
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
      x, y = rng.uniform(0, 0.6, 2) * (width, height)
      w, h = rng.uniform(0.2, 0.4, 2) * (width, height)
      draw.ellipse((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    paths.append(os.path.join(folder, f"image_{index}.png"))
    image.save(paths[-1])
  return paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  config = tiny_config()
  save_initial_checkpoint(config, str(root / "run"))
  info = export.export_detector(config, str(root / "run"), str(root / "artifact"))
  return config, root, info


def decoded(path: str) -> np.ndarray:
  """uint8 [H, W, 3], decoded as predict decodes (TF)."""
  return tf.io.decode_image(open(path, "rb").read(), channels=3).numpy()


def difference(expected: list[dict], boxes, scores, classes) -> str:
  """The first difference between predict's detections of one image and the artifact's ("")."""
  if len(expected) != len(scores):
    return f"{len(expected)} detections from predict, {len(scores)} from the artifact"
  for rank, (e, b, s, c) in enumerate(zip(expected, boxes, scores, classes)):
    if (e["label"] != c or abs(e["score"] - s) > SCORE_TOLERANCE * s or
        np.abs(np.subtract(e["box"], b)).max() > BOX_TOLERANCE):
      return f"detection {rank}: predict {e}, artifact label {c} score {s} box {list(b)}"
  return ""


def test_artifact_without_ssd_jax_gives_predict_detections(exported, tmp_path):
  config, root, info = exported
  paths = write_images(tmp_path / "images")
  output = tmp_path / "predictions"
  assert predict.predict(config, str(root / "run"), ",".join(paths), str(output)) == len(paths)
  lines = {line["file"]: line for line in map(json.loads, open(output / "detections.jsonl"))}

  # Same-size images go in one call (a batch of 3 exercises the symbolic batch size).
  groups: dict[str, list[str]] = {}
  for path in paths:
    groups.setdefault("x".join(map(str, decoded(path).shape[:2])), []).append(path)
  np.savez(tmp_path / "batches.npz", **{k: np.stack([decoded(p) for p in v])
                                        for k, v in groups.items()})
  result = subprocess.run(
      [sys.executable, "-c", LOADER, str(root / "artifact" / info["function_file"]),
       str(tmp_path / "batches.npz"), str(tmp_path / "loaded.json")],
      capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-4000:]
  loaded = json.load(open(tmp_path / "loaded.json"))
  assert loaded["modules"] == []

  total = 0
  for name, group in groups.items():
    for i, path in enumerate(group):
      got = loaded["results"][f"{name}/{i}"]
      keep = np.asarray(got["scores"]) >= config.predict.score_threshold
      expected = lines[path]["detections"]
      assert not difference(expected, *(np.asarray(got[k])[keep]
                                        for k in ("boxes", "scores", "classes"))), path
      total += len(expected)
  assert total >= 20  # not vacuous


def test_metadata_and_saved_model(exported):
  config, root, info = exported
  assert json.load(open(root / "artifact" / export.METADATA_FILE)) == info
  assert info["image_size"] == 64 and info["max_detections"] == config.detection.max_detections
  assert info["class_names"] == list(config.data.class_names)
  assert info["platforms"] == ["cpu", "cuda", "tpu"] and info["step"] == 0
  saved_model = root / "artifact" / export.SAVED_MODEL_DIR
  if info["saved_model_dir"] is None:  # the installed TF cannot run jax2tf's output: say why
    assert info["saved_model_skipped"] and not saved_model.exists()
  else:  # export_detector checked it against the artifact already; here its interface
    serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    out = serve(images=tf.zeros([2, 30, 40, 3], tf.uint8))
    assert sorted(out) == ["boxes", "classes", "num_detections", "scores"]
    assert out["boxes"].shape == (2, config.detection.max_detections, 4)


def toy_serve(images):
  """A stand-in for the detector, of ops that the installed TF's XlaCallModule can run."""
  means = jnp.sort(images.astype(jnp.float32).mean(axis=(1, 2)), axis=1)[:, ::-1]  # [B, 3]
  return {"scores": means / 255.0, "num_detections": jnp.full(images.shape[:1], 3, jnp.int32)}


def test_saved_model_is_kept_when_tf_runs_it(tmp_path):
  path = str(tmp_path / "saved_model")
  assert export.try_saved_model(toy_serve, export.export_function(toy_serve), path, 8) is None
  serve = tf.saved_model.load(path).signatures["serving_default"]
  out = serve(images=tf.fill([2, 5, 7, 3], tf.constant(51, tf.uint8)))
  np.testing.assert_allclose(out["scores"].numpy(), 0.2)
  assert out["num_detections"].numpy().tolist() == [3, 3]


def test_saved_model_is_left_out_with_the_reason_when_tf_fails(tmp_path, monkeypatch):
  def fail(*args):
    raise ValueError("first line\nloc: error: what went wrong")
  monkeypatch.setattr(export, "check_saved_model", fail)
  path = tmp_path / "saved_model"
  reason = export.try_saved_model(toy_serve, export.export_function(toy_serve), str(path), 8)
  assert reason == "ValueError: loc: error: what went wrong" and not path.exists()
