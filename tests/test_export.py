"""Export: each artifact (jax.export, ONNX, SavedModel, TFLite), run by its own runtime in a
process without ssd_jax, gives --mode=predict's detections."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image, ImageDraw

from ssd_jax import checkpoint, config_utils, export, models, parallel, predict, train
from ssd_jax.config_utils import ConfigError

from conftest import CONFIG_DIR

REPO = os.path.dirname(CONFIG_DIR)

# Image sizes (height, width) given to predict and to the artifact: the model's own 64 x 64
# and two that the artifact must resize as predict does.
SIZES = ((64, 64), (64, 64), (64, 64), (75, 100), (90, 60))
# predict rounds scores to 4 decimals and boxes to 0.1 px in detections.jsonl. Beyond that the
# two sides differ by float32 rounding only: XLA fuses the multiply-adds of resize and
# normalisation that TF rounds twice (scores differ by ~1e-7 here).
SCORE_TOLERANCE, BOX_TOLERANCE = 1e-3, 0.5  # relative, pixels

# Runs in a fresh interpreter: one artifact with its runtime and numpy only, nothing of ssd_jax.
# argv = artifact, npz of uint8 batches, output json. ``run`` is defined by RUNNERS below.
LOADER = """
import json, sys
import numpy as np
NAMES = ("boxes", "scores", "classes", "num_detections")
path, batches, output = sys.argv[1:]
{runner}
results = {{}}
for name, images in np.load(batches).items():
  out = {{k: np.asarray(v) for k, v in run(images).items()}}
  for i, n in enumerate(out["num_detections"]):
    results[f"{{name}}/{{i}}"] = {{k: out[k][i, :n].tolist() for k in ("boxes", "scores", "classes")}}
modules = sorted({{m.split(".")[0] for m in sys.modules}} & {{"ssd_jax", "jax", "flax", "tensorflow"}})
json.dump({{"results": results, "modules": modules}}, open(output, "w"))
"""
# How a user runs each format (README's snippets); the jax one is the only one that needs jax.
RUNNERS = {
    "jax": """
import jax
exported = jax.export.deserialize(bytearray(open(path, "rb").read()))
run = exported.call
""",
    "onnx": """
import onnxruntime
session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
run = lambda images: dict(zip(NAMES, session.run(list(NAMES), {"images": images})))
""",
    "savedmodel": """
import tensorflow as tf
serve = tf.saved_model.load(path).signatures["serving_default"]
def run(images):  # its input is one S x S image
  outs = [serve(images=tf.constant(image[None])) for image in images]
  return {k: np.concatenate([o[k].numpy() for o in outs]) for k in NAMES}
""",
    "tflite": """
from ai_edge_litert.interpreter import Interpreter
runner = Interpreter(model_path=path).get_signature_runner("serving_default")
def run(images):  # its input is one S x S image
  outs = [runner(images=image[None]) for image in images]
  return {k: np.concatenate([o[k] for o in outs]) for k in NAMES}
""",
}
# The modules each loader may import (the runtime itself).
# The SavedModel's loader imports only tensorflow; TF 2.21 itself brings jax into the process.
RUNTIME_MODULES = {"jax": ["jax"], "onnx": [], "savedmodel": ["jax", "tensorflow"], "tflite": []}
# Every format that can be written must be. ONNX needs jax2onnx, which pip cannot install beside
# our orbax-checkpoint (export.JAX2ONNX_INSTALL).
HAS_JAX2ONNX = importlib.util.find_spec("jax2onnx") is not None
# CI installs the extra; a development venv without it skips the TFLite checks, saying so.
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None
WRITTEN = (("jax", "savedmodel") + (("tflite",) if HAS_LITERT else ())
           + (("onnx",) if HAS_JAX2ONNX else ()))


def tiny_config():
  config = config_utils.load_config(os.path.join(CONFIG_DIR, "quickstart.py"), "tiny")
  # The untrained tiny model scores 0.18-0.37 on the test images: this keeps its best few dozen
  # per image, away from the 200th (where max_detections cuts) and its near-ties.
  config.predict.score_threshold = 0.21
  return config


def save_initial_checkpoint(config, workdir: str, step: int = 0) -> None:
  """The tiny model's initial weights as the checkpoint of ``step``, written as training writes
  its checkpoints."""
  _, state, _ = train.initial_state(config, parallel.create_mesh(config))
  state = state.replace(step=jnp.asarray(step, state.step.dtype))
  manager = checkpoint.create_manager(workdir, keep=1)
  checkpoint.save(manager, state, {"step": step})
  manager.close()


def write_images(folder) -> list[str]:
  """JPEG files of coloured shapes on noise, one per entry of SIZES."""
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
    paths.append(os.path.join(folder, f"image_{index}.jpg"))
    image.save(paths[-1], quality=90)
  return paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  config = tiny_config()
  save_initial_checkpoint(config, str(root / "run"))
  calibration = write_images(root / "calibration")
  # Raises ExportError, failing every test here with the reason, when a format is not written.
  info = export.export_detector(config, str(root / "run"), str(root / "artifact"),
                                formats=WRITTEN, calibration=str(root / "calibration" / "*.jpg"))
  return config, root, info


@pytest.fixture(scope="module")
def predicted(exported, tmp_path_factory):
  """predict's detections of the test images by file, and the decoded images in same-size
  batches (a batch of 3 exercises the dynamic batch size) as an npz."""
  config, root, _ = exported
  folder = tmp_path_factory.mktemp("predicted")
  paths = write_images(folder / "images")
  output = folder / "predictions"
  assert predict.predict(config, str(root / "run"), ",".join(paths), str(output)) == len(paths)
  lines = {line["file"]: line for line in map(json.loads, open(output / "detections.jsonl"))}
  groups: dict[str, list[str]] = {}
  for path in paths:
    groups.setdefault("x".join(map(str, decoded(path).shape[:2])), []).append(path)
  np.savez(folder / "batches.npz", **{k: np.stack([decoded(p) for p in v])
                                      for k, v in groups.items()})
  return lines, groups, folder / "batches.npz"


def decoded(path: str) -> np.ndarray:
  """uint8 [H, W, 3], decoded by PIL, as a user of the artifacts does (predict decodes with TF:
  the same pixels, ``tests/test_data_bad.py``)."""
  return np.asarray(Image.open(path).convert("RGB"))


def difference(expected: list[dict], boxes, scores, classes) -> str:
  """The first difference between predict's detections of one image and the artifact's ("")."""
  if len(expected) != len(scores):
    return f"{len(expected)} detections from predict, {len(scores)} from the artifact"
  for rank, (e, b, s, c) in enumerate(zip(expected, boxes, scores, classes)):
    if (e["label"] != c or abs(e["score"] - s) > SCORE_TOLERANCE * s or
        np.abs(np.subtract(e["box"], b)).max() > BOX_TOLERANCE):
      return f"detection {rank}: predict {e}, artifact label {c} score {s} box {list(b)}"
  return ""


@pytest.mark.parametrize("name", ["jax", "onnx", "savedmodel", "tflite"])
def test_artifact_in_its_runtime_alone_gives_predict_detections(exported, predicted, name,
                                                                 tmp_path):
  config, root, info = exported
  if name == "onnx" and not HAS_JAX2ONNX:
    pytest.skip(f"jax2onnx is not installed (pip cannot install it beside orbax-checkpoint>="
                f"0.12.8): {export.JAX2ONNX_INSTALL}")
  if name == "tflite" and not HAS_LITERT:
    pytest.skip("ai-edge-litert is not installed: pip install -e '.[export]'")
  assert name in info["formats"], f"{name} was not written: {info['failed'].get(name)}"
  lines, groups, batches = predicted
  if name in ("savedmodel", "tflite"):  # a fixed S x S input: the images of the model's size
    groups = {"64x64": groups["64x64"]}
    np.savez(tmp_path / "square.npz", **{k: v for k, v in np.load(batches).items() if k in groups})
    batches = tmp_path / "square.npz"
  artifact = root / "artifact" / info["formats"][name]["files"][0]
  result = subprocess.run(
      [sys.executable, "-c", LOADER.format(runner=RUNNERS[name]), str(artifact), str(batches),
       str(tmp_path / "loaded.json")],
      capture_output=True, text=True, timeout=600, cwd=tmp_path,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 0, result.stderr[-4000:]
  loaded = json.load(open(tmp_path / "loaded.json"))
  assert loaded["modules"] == RUNTIME_MODULES[name]

  total = 0
  for size, group in groups.items():
    for i, path in enumerate(group):
      got = loaded["results"][f"{size}/{i}"]
      keep = np.asarray(got["scores"]) >= config.predict.score_threshold
      expected = lines[path]["detections"]
      assert not difference(expected, *(np.asarray(got[k])[keep]
                                        for k in ("boxes", "scores", "classes"))), (name, path)
      total += len(expected)
  assert total >= (10 if len(groups) == 1 else 20)  # not vacuous


@pytest.mark.skipif(not HAS_JAX2ONNX, reason=f"jax2onnx is not installed: {export.JAX2ONNX_INSTALL}")
def test_onnx_graph_holds_the_network_once(exported):
  """One ONNX Conv per convolution of the model: jax2onnx converts every trace it is given, so a
  serving function called once per output would hold the network (and NMS) once per output."""
  import onnx  # pylint: disable=g-import-not-at-top

  config, root, info = exported
  graph = onnx.load(str(root / "artifact" / info["formats"]["onnx"]["files"][0])).graph
  model = models.create_model(config, nnx.Rngs(0))
  convolutions = sum(isinstance(node, nnx.Conv) for _, node in nnx.iter_graph(model))
  assert sum(node.op_type == "Conv" for node in graph.node) == convolutions > 0
  assert sum(node.op_type == "Loop" for node in graph.node) == 1  # the NMS


@pytest.mark.skipif(not HAS_JAX2ONNX, reason=f"jax2onnx is not installed: {export.JAX2ONNX_INSTALL}")
def test_onnxruntime_loads_the_onnx_model_without_warnings(exported, capfd):
  """jax2onnx leaves constants no node reads in the NMS Loop's body; onnxruntime warned
  "Removing initializer ..." for each, every time the model was loaded."""
  import onnxruntime  # pylint: disable=g-import-not-at-top

  _, root, _ = exported
  capfd.readouterr()
  onnxruntime.InferenceSession(str(root / "artifact" / export.FILES["onnx"]),
                               providers=["CPUExecutionProvider"])
  assert capfd.readouterr().err == ""


def test_metadata(exported):
  config, root, info = exported
  assert json.load(open(root / "artifact" / export.METADATA_FILE)) == info
  assert info["image_size"] == 64 and info["max_detections"] == config.detection.max_detections
  assert info["class_names"] == list(config.data.class_names)
  assert info["step"] == 0 and info["formats"]["jax"]["platforms"] == ["cpu", "cuda", "tpu"]
  assert info["detection"]["nms_iou_threshold"] == config.detection.nms_iou_threshold
  assert info["failed"] == {} and sorted(info["formats"]) == sorted(WRITTEN)
  for name, entry in info["formats"].items():
    assert entry["input"]["dtype"] == "uint8", name
    assert entry["how_to_call"] == export.how_to_call(name), name
  # The folder holds the files metadata.json lists, nothing else; nothing is left beside it.
  files = {file for entry in info["formats"].values() for file in entry["files"]}
  assert sorted(os.listdir(root / "artifact")) == sorted(files | {export.METADATA_FILE})
  assert sorted(os.listdir(root)) == ["artifact", "calibration", "run"]


def test_unknown_or_missing_formats_are_one_line(monkeypatch):
  with pytest.raises(ConfigError, match=r"--format='onnx,pdf'.*unknown: pdf"):
    export.parse_formats("onnx,pdf")
  assert export.parse_formats("onnx, jax,onnx") == ("onnx", "jax")
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "jax2onnx" else real(name, *a))
  with pytest.raises(ConfigError) as error:
    export.check_installed(["jax", "onnx"])
  assert str(error.value) == ("--format=onnx needs the package jax2onnx, which is not installed: "
                              + export.JAX2ONNX_INSTALL)
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "ai_edge_litert" else real(name, *a))
  with pytest.raises(ConfigError, match=r"^--format=tflite needs the package ai_edge_litert, "
                                        r"which is not installed: pip install -e '\.\[export\]'$"):
    export.check_installed(["tflite"])


def toy_serve(images):
  """A stand-in for the detector with its outputs, of ops that any converter handles."""
  means = jnp.sort(images.astype(jnp.float32).mean(axis=(1, 2)), axis=1)[:, ::-1]  # [B, 3]
  batch = images.shape[0]
  return {"boxes": jnp.zeros((batch, 3, 4)) + means[..., None], "scores": means / 255.0,
          "classes": jnp.ones((batch, 3), jnp.int32),
          "num_detections": jnp.full((batch,), 3, jnp.int32)}


def test_artifact_is_left_out_with_the_reason_when_its_check_fails(tmp_path):
  path = str(tmp_path / "toy.onnx")
  def fail():
    raise ValueError("first line\nloc: error: what went wrong")
  reason = export.try_artifact("onnx", lambda: open(path, "w").close(), fail, [path])
  assert reason == "ValueError: loc: error: what went wrong" and not os.path.exists(path)


@pytest.mark.skipif(not HAS_JAX2ONNX, reason=f"jax2onnx is not installed: {export.JAX2ONNX_INSTALL}")
def test_backbone_pools_convert_to_onnx_that_onnxruntime_runs(tmp_path):
  """The pools the tiny test model lacks: VGG's 2x2 ceil-mode pool, pool5 (3x3 / 1, pad 1) and
  ResNet's stem pool (3x3 / 2, pad 1), converted and run by onnxruntime with a dynamic batch."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  from jax2onnx import to_onnx  # pylint: disable=g-import-not-at-top
  from ssd_jax.models import layers  # pylint: disable=g-import-not-at-top

  def pools(x):
    return (layers.max_pool(x, 2, 2, ceil_mode=True), layers.max_pool(x, 3, 1, padding=1),
            layers.max_pool(x, 3, 2, padding=1))
  path = str(tmp_path / "pools.onnx")
  to_onnx(pools, inputs=[jax.ShapeDtypeStruct(jax.export.symbolic_shape("B, 15, 15, 4"),
                                              jnp.float32)],
          return_mode="file", output_path=path)
  x = np.random.default_rng(0).normal(size=(2, 15, 15, 4)).astype(np.float32)
  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  for got, want in zip(session.run(None, {session.get_inputs()[0].name: x}), pools(x)):
    np.testing.assert_array_equal(got, np.asarray(want))


def snippet_output(lines: list[str]) -> tuple[tuple[int, int], list[tuple[str, float, list]]]:
  """A how_to_call program's printout -> ((detections, those over the display threshold), the
  best ones as (class name, score, box))."""
  counts = re.fullmatch(r"(\d+) detections, (\d+) scoring >= \S+", lines[0])
  best = [re.fullmatch(r"(.+) (\S+) (\[.*\])", line).groups() for line in lines[1:]]
  return ((int(counts[1]), int(counts[2])),
          [(name, float(score), json.loads(box)) for name, score, box in best])


def expected_output(info, jax_file, photo: str, fixed: bool):
  """What a how_to_call program should print for ``photo``, from the jax artifact called here:
  on the picture, or (``fixed``) on PIL's bilinear resize of it, boxes scaled back."""
  exported = jax.export.deserialize(bytearray(open(jax_file, "rb").read()))
  image = Image.open(photo).convert("RGB")
  size, scale = info["image_size"], np.ones(4)
  if fixed:
    scale = np.array(image.size * 2) / size  # width, height, width, height
    image = image.resize((size, size), Image.BILINEAR)
  out = {k: np.asarray(v)[0] for k, v in exported.call(np.asarray(image)[None]).items()}
  n = int(out["num_detections"])
  counts = (n, int((out["scores"][:n] >= info["display_score_threshold"]).sum()))
  return counts, [(info["class_names"][label - 1], float(score), list(box * scale))
                  for label, score, box in zip(out["classes"][:10], out["scores"][:10],
                                               out["boxes"][:10])][:n]


@pytest.mark.parametrize("name", ["jax", "onnx", "savedmodel", "tflite"])
def test_how_to_call_runs_as_written_without_ssd_jax(exported, name, tmp_path):
  """metadata.json's program of each format, run as written in a fresh process in a folder with
  the export and a JPEG of another size than the model's, prints the jax artifact's detections
  of that picture, without importing ssd_jax."""
  _, root, info = exported
  if name not in info["formats"]:
    pytest.skip(f"{name} is not written here (its package is missing)")
  for file in os.listdir(root / "artifact"):
    os.symlink(root / "artifact" / file, tmp_path / file)
  photo = write_images(tmp_path / "images")[3]  # 75 x 100
  shutil.copy(photo, tmp_path / "photo.jpg")
  check = ("\nimport sys\n"
           "print('modules:', sorted({m.split('.')[0] for m in sys.modules} & {'ssd_jax', 'flax'}))\n")
  result = subprocess.run([sys.executable, "-c", info["formats"][name]["how_to_call"] + check],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  lines = result.stdout.strip().splitlines()
  assert lines[-1] == "modules: []"
  counts, best = snippet_output(lines[:-1])
  want_counts, want_best = expected_output(info, root / "artifact" / export.FILES["jax"], photo,
                                           name in export.FIXED_SIZE)
  assert counts == want_counts and len(best) == len(want_best) == 10
  for (got_name, got_score, got_box), (want_name, want_score, want_box) in zip(best, want_best):
    assert got_name == want_name and abs(got_score - want_score) < 2e-4, (got_name, got_score)
    np.testing.assert_allclose(got_box, want_box, rtol=0, atol=0.2)  # printed to 0.1 px


def test_readme_shows_the_how_to_call_programs():
  """README's "Export" holds, as its Python blocks, each format's program for the folder EXPORT."""
  readme = open(os.path.join(REPO, "README.md")).read()
  section = readme[readme.index("## Export"):readme.index("\n## ", readme.index("## Export") + 1)]
  blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
  assert blocks == [export.how_to_call(name, "EXPORT/") for name in export.FORMATS]


def test_an_export_replaces_an_earlier_one_whole(exported, tmp_path):
  """Re-exporting step 3 as jax alone into step 0's four-format export leaves step 3's jax file
  and metadata only; a failed export leaves the folder as it was; a folder with other files, a
  file and a path below a file are refused, untouched."""
  config, root, _ = exported
  output = tmp_path / "artifact"
  shutil.copytree(root / "artifact", output, symlinks=True)
  save_initial_checkpoint(config, str(tmp_path / "run"), step=3)
  info = export.export_detector(config, str(tmp_path / "run"), str(output))
  assert sorted(os.listdir(output)) == ["detector.jaxexport", "metadata.json"]
  assert info["step"] == json.load(open(output / "metadata.json"))["step"] == 3
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    export.export_detector(config, str(tmp_path / "no_run"), str(output))
  assert json.load(open(output / "metadata.json")) == info
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("mine")
  with pytest.raises(ConfigError, match=r"^--output=.*mine holds files that an export does not "
                                        r"write \(notes\.txt\); .* new or empty folder$"):
    export.export_detector(config, str(tmp_path / "run"), str(mine))
  for blocked in (mine / "notes.txt", mine / "notes.txt" / "export"):
    with pytest.raises(ConfigError, match=r"notes\.txt is a file; expected a folder$"):
      export.export_detector(config, str(tmp_path / "run"), str(blocked))
  assert os.listdir(mine) == ["notes.txt"] and (mine / "notes.txt").read_text() == "mine"
  assert sorted(os.listdir(tmp_path)) == ["artifact", "mine", "run"]  # nothing left beside


def test_a_format_that_fails_exits_1_naming_it_and_keeps_the_others(exported, tmp_path):
  """The command, with a jax newer than the SavedModel writer was checked against: savedmodel
  fails, the command says so in one line and exits 1; the other formats are written, with
  metadata.json naming the failure, and the console carries none of the converters' messages."""
  _, root, _ = exported
  output = tmp_path / "artifact"
  formats = "jax,savedmodel" + (",onnx" if HAS_JAX2ONNX else "")
  script = "import jax; jax.__version__ = '0.11.0'; from ssd_jax import main; main.run()"
  result = subprocess.run(
      [sys.executable, "-c", script, f"--config={os.path.join(CONFIG_DIR, 'quickstart.py')}:tiny",
       f"--workdir={root / 'run'}", "--mode=export", f"--format={formats}", f"--output={output}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 1, result.stderr[-4000:]
  lines = result.stderr.strip().splitlines()
  assert [line for line in lines if line.startswith("error")] == [lines[-1]]
  assert lines[-1] == ("error: --format=savedmodel not written: RuntimeError: the savedmodel and "
                       "tflite formats need jax >= 0.10.2, < 0.11 (they replace a private "
                       "serialiser of jax, checked against those releases, to write StableHLO "
                       "that TF 2.21 reads); jax 0.11.0 is installed: pip install "
                       "'jax>=0.10.2,<0.11'")
  info = json.load(open(output / "metadata.json"))
  assert sorted(info["formats"]) == sorted(set(formats.split(",")) - {"savedmodel"})
  assert list(info["failed"]) == ["savedmodel"] and lines[-1].endswith(info["failed"]["savedmodel"])
  assert sorted(os.listdir(output)) == sorted(
      [export.FILES[name] for name in info["formats"]] + ["metadata.json"])
  assert len(lines) <= 14, result.stderr  # the summary, a line per format, the result
  for noise in ("jax2onnx", "onnx_ir", "Converting JAX", "WARNING", "W0000", "Traceback"):
    assert noise not in result.stderr, noise
  assert "Converting JAX function to ONNX" in open(root / "run" / "log.txt").read() or (
      not HAS_JAX2ONNX)


def test_the_stablehlo_swap_is_checked_against_the_installed_jax():
  """Fails when jax moves out of the releases the SavedModel/TFLite writer was checked against:
  check the private serialiser it replaces in the new jax, then widen STABLEHLO_SWAP_JAX."""
  export.check_jax_for_tf()  # the installed jax
  for version in ("0.10.1", "0.11.0", "1.0.0"):
    with pytest.raises(RuntimeError, match=r"need jax >= 0\.10\.2, < 0\.11 .* jax "
                                           + re.escape(version) + " is installed"):
      export.check_jax_for_tf(version)
  export.check_jax_for_tf("0.10.9")
  from jax._src.export import _export  # pylint: disable=g-import-not-at-top
  assert callable(_export._module_to_bytecode)  # what _stablehlo_for_tf replaces
