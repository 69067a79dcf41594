"""The modes of the command on the tiny quickstart (trained once, conftest's ``tiny_run``): every
output exists and parses."""

import glob
import json
import os

from PIL import Image

from conftest import run_main


def run(*flags: str) -> str:
  result = run_main(*flags)
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stderr


def _check_quiet(log: str) -> None:
  """No config dump and none of the known-harmless third-party notices on the console."""
  for noise in ("!!python/tuple", "oneDNN", "Unable to initialize backend", "read only",
                "read_only", "Assets written", "Traceback"):
    assert noise not in log, noise


def test_train_writes_its_outputs(tiny_run):
  log, workdir = tiny_run.log, tiny_run.workdir
  assert "step 8/8" in log and "eval at step 8" in log
  _check_quiet(log)
  assert "ssd_jax train:" in log and "7 classes (6 + background)" in log  # start-up summary
  assert "generating the synthetic dataset" in log and "compiling the train step" in log
  first_step = [line for line in log.splitlines() if "step 1/8" in line][0]
  assert "ETA" not in first_step and "img/s" not in first_step  # compilation is no speed
  closing = log[log.index("training done"):]
  assert "checkpoints" in closing and "(steps 4, 8)" in closing and "mAP" in closing
  assert "augment:" not in log and "augment:" in open(os.path.join(workdir, "log.txt")).read()

  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["name"] == "ssd_tiny"
  assert "step 8/8" in open(os.path.join(workdir, "log.txt")).read()
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
  assert os.listdir(os.path.join(workdir, "best")) == ["8"]
  metrics = json.load(open(os.path.join(workdir, "eval", "step_8", "metrics.json")))
  assert metrics["images"] == 16 and 0 <= metrics["mAP"] <= 1
  for picture in ("pr_curves.png", "detections.png"):
    Image.open(os.path.join(workdir, "eval", "step_8", picture)).verify()


def test_eval_of_an_earlier_step(tiny_run):
  log = run(*tiny_run.flags, "--mode=eval", "--step=4")
  assert "eval at step 4 on 16 images" in log
  _check_quiet(log)
  assert "evaluation done" in log and os.path.join("eval", "step_4") in log
  assert os.path.isfile(os.path.join(tiny_run.workdir, "eval", "step_4", "metrics.json"))


def test_predict_draws_and_lists_detections_and_names_a_broken_image(tiny_run, tmp_path):
  images = sorted(glob.glob(os.path.join(tiny_run.data_dir, "shapes-*", "JPEGImages",
                                         "test_*.jpg")))[:3]
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"not an image")
  output = str(tmp_path / "predictions")
  log = run(*tiny_run.flags, "--mode=predict", f"--images={','.join(images + [str(broken)])}",
            f"--output={output}")
  assert "broken.jpg" in log and "predicted 3 of 4 images" in log
  assert f"prediction done: 3 pictures (<name>.png) and detections.jsonl in {output}" in log
  lines = [json.loads(line) for line in open(os.path.join(output, "detections.jsonl"))]
  assert [os.path.basename(line["file"]) for line in lines] == [os.path.basename(p) for p in images]
  for line in lines:
    assert line["width"] == line["height"] == 64
    for detection in line["detections"]:
      assert detection["score"] >= 0.3 and len(detection["box"]) == 4
    stem = os.path.splitext(os.path.basename(line["file"]))[0]
    assert Image.open(os.path.join(output, stem + ".png")).size == (64, 64)


def test_export_writes_the_latest_step(tiny_run, tmp_path):
  exported = str(tmp_path / "export")
  log = run(*tiny_run.flags, "--mode=export", f"--output={exported}")
  _check_quiet(log)
  assert f"export done: {exported} (detector.jaxexport, metadata.json" in log
  assert json.load(open(os.path.join(exported, "metadata.json")))["step"] == 8
  assert os.path.getsize(os.path.join(exported, "detector.jaxexport")) > 0
