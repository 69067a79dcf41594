"""The accelerator benchmark in its CPU form (``--small``) where the device image's packages are
all there is: importing TensorFlow raises, nothing is installed. Its float32 reference is made
first, as it would be here before a device run, and every section of the benchmark must run and
pass its check against it; a wrong reference must fail the run.

This is also the CI run of the compute path without TensorFlow: the benchmark's sections train
the tiny model through the loop on batches in memory and export it ``--format=jax``."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "experiments", "bench_accelerator.py")
ABSENT = ("tensorflow", "tensorflow_datasets")  # not on the device image, too large to carry


def environment(tmp_path) -> dict:
  """The device image's view: ``tensorflow`` and ``tensorflow_datasets`` raise
  ModuleNotFoundError on import (packages of that name first on PYTHONPATH), no wheel folder.
  XLA barely optimises (their speed is not tested; both sides of each check alike), and the
  runs share conftest's compilation cache (the quickstart's programs compile once)."""
  absent = tmp_path / "absent"
  for name in ABSENT:
    (absent / name).mkdir(parents=True)
    (absent / name / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{name}' (absent on the device image)\", "
        f"name='{name}')\n")
  (tmp_path / "no_wheels").mkdir()
  return dict(os.environ, PYTHONPATH=f"{absent}:{REPO}", PYTHON=sys.executable,
              SSD_JAX_WHEELS=str(tmp_path / "no_wheels"), JAX_DISABLE_MOST_OPTIMIZATIONS="1")


def benchmark(env, reference, output, *flags):
  """bench_accelerator.sh --small against ``reference``: (exit status, results, console)."""
  result = subprocess.run(["bash", os.path.join(REPO, "experiments", "bench_accelerator.sh"),
                           "--small", f"--reference={reference}", *flags],
                          env=dict(env, OUT=str(output)), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
  with open(output / "results.json") as f:
    return result.returncode, json.load(f), result.stdout + result.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("bench_accelerator")
  env = environment(tmp_path)
  reference = tmp_path / "reference"
  made = subprocess.run([sys.executable, SCRIPT, "--small", f"--make_reference={reference}"],
                        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert made.returncode == 0, made.stderr[-3000:]
  status, results, console = benchmark(env, reference, tmp_path / "out")
  with open(reference / "reference.json") as f:
    info = json.load(f)
  return {"env": env, "tmp_path": tmp_path, "reference": reference, "info": info,
          "status": status, "results": results, "console": console}


def test_every_section_runs_without_tensorflow_and_passes_its_check(run):
  results, console = run["results"], run["console"]
  assert run["status"] == 0, console[-3000:]
  assert (results["errors"], results["skipped"], results["checks_failed"]) == ({}, [], [])
  # The real-input loop needs tf.data: said, not run, on a machine without TensorFlow.
  assert list(results["not_run"]) == ["quickstart loop vs bare step, tf.data input"]
  assert "no TensorFlow" in results["not_run"]["quickstart loop vs bare step, tf.data input"]
  assert list(results["sections"]) == [
      "environment", "quickstart-tiny train bfloat16", "export", "quickstart loop vs bare step",
      "quickstart-tiny forward bfloat16 batch 1", "quickstart-tiny forward bfloat16 batch 2"]
  assert not results["tensorflow_loaded"]
  compute_path = {"models", "priors", "matching", "losses", "train_step", "train", "progress",
                  "checkpoint", "inference", "postprocess", "preprocess", "export"}
  assert {f"ssd_jax.{name}" for name in compute_path} <= set(results["modules_loaded"])
  assert "ssd_jax.data" not in results["modules_loaded"]
  assert "ModuleNotFoundError" not in console
  environment_ = results["sections"]["environment"]
  assert environment_["backend"] == "cpu" and environment_["versions"]["ml-collections"]
  with open(run["tmp_path"] / "out" / "log.txt") as f:
    assert "done in" in f.read()  # the script's log is kept beside its results


def test_sections_compare_with_the_carried_reference(run):
  sections, info = run["results"]["sections"], run["info"]
  expected = info["models"]["quickstart-tiny"]
  train = sections["quickstart-tiny train bfloat16"]
  # bfloat16 against float32, on the reference batch repeated 4 times (the same loss).
  assert train["first_batch"] == 4 * info["reference_batch"] == 8 == train["batch"]
  for name, key in (("first_loss", "first_loss"), ("first_grad_norm", "first_grad_norm")):
    check = train["checks"][name]
    assert check["reference"] == expected[key] and check["ok"]
    assert check["relative_error"] == pytest.approx(
        abs(check["value"] - expected[key]) / expected[key])
    assert 0 < check["relative_error"] <= check["tolerance"]  # bfloat16 is not float32
  assert train["flops_per_image"] == pytest.approx(expected["train_flops_per_image"], rel=0.1)

  for batch in (1, 2):
    check = sections[f"quickstart-tiny forward bfloat16 batch {batch}"]["checks"]["outputs"]
    assert 0 < check["relative_l2_error"] <= check["tolerance"] and check["ok"]

  loop = sections["quickstart loop vs bare step"]
  assert loop["checks"]["first_loss"]["reference"] == info["quickstart"]["first_loss"]
  assert loop["checks"]["first_loss"]["relative_error"] < 1e-5  # float32 on the same CPU
  assert len(loop["save_block_seconds"]) == 4  # steps 2, 4, 6 and the final 8

  exported = sections["export"]
  assert exported["ran_on"] == ["cpu"] and "cuda" in exported["exported_for"]
  assert exported["num_detections"] == info["quickstart"]["num_detections"]
  assert min(exported["num_detections"]) > 0 and exported["classes_equal"]
  assert exported["checks"]["num_detections"]["ok"]


def test_a_wrong_reference_fails_the_run(run, tmp_path):
  reference = tmp_path / "reference"
  reference.mkdir()
  for name in ("reference.json", "quickstart"):
    os.symlink(run["reference"] / name, reference / name)
  arrays = dict(np.load(run["reference"] / "reference.npz"))
  arrays["export/num_detections"] = arrays["export/num_detections"] - 1
  np.savez(reference / "reference.npz", **arrays)
  status, results, _ = benchmark(run["env"], reference, tmp_path / "out", "--sections=export")
  assert status == 1
  assert list(results["sections"]) == ["environment", "export"]
  assert results["checks_failed"] == ["export: num_detections"]


def test_the_carried_wheels_are_the_versions_ci_tested():
  """experiments/README.md's download line names each wheel the device lacks at the version
  constraints.txt pins (what CI passed with)."""
  with open(os.path.join(REPO, "experiments", "README.md")) as f:
    readme = f.read()
  with open(os.path.join(REPO, "constraints.txt")) as f:
    pins = dict(line.strip().split("==") for line in f if "==" in line)
  normal = lambda name: name.lower().replace("_", "-")  # noqa: E731
  pins = {normal(name): version for name, version in pins.items()}
  download = readme[readme.index("pip download"):readme.index("\n\n", readme.index("pip download"))]
  wheels = dict(re.findall(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.]*)", download))
  assert {normal(name) for name in wheels} == {"ml-collections", "pycocotools", "defusedxml"}
  for name, version in wheels.items():
    assert pins[normal(name)] == version, name


def test_the_real_input_loop_runs_where_tensorflow_is(tmp_path):
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  import bench_accelerator  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  sizes = bench_accelerator.Sizes(small=True)
  assert bench_accelerator.tensorflow_missing() is None
  record = bench_accelerator.real_input_loop_section(sizes, str(tmp_path))
  assert (record["batch"], record["steps"], record["host_cores"]) == (
      sizes.reference_batch, sizes.loop_steps, os.cpu_count())
  assert record["checks"]["first_loss_finite"]["ok"]
  assert len(record["save_block_seconds"]) == 4  # steps 2, 4, 6 and the final 8
  assert record["loop_over_bare"] == pytest.approx(
      record["loop_images_per_second"] / record["bare_images_per_second"])
  # The batches came through tf.data from the shapes written for it.
  assert [name for name in os.listdir(tmp_path / "data") if name.startswith("shapes-")]
