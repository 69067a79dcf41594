"""The command on several processes (jax.distributed on CPU over localhost, gloo collectives), as a
pod user runs it: training with a checkpoint and a periodic evaluation, --mode=eval on 4 processes,
predict and export on 2, SIGTERM to one process, resumes on another process count; each equal to
what one process gives."""

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import CONFIG_DIR
from ssd_jax import config_utils, data, evaluate, export, predict, train
from ssd_jax.data import pipeline
from ssd_jax.inference import Detector

REPO = os.path.dirname(CONFIG_DIR)
TINY = os.path.join(CONFIG_DIR, "quickstart.py") + ":tiny"
TIMEOUT = 420  # seconds for one launch: several interpreters share the CI machine's two cores


@dataclasses.dataclass
class Launch:
  """N processes of ``python -m ssd_jax.main`` started together; their logs in files."""
  processes: list[subprocess.Popen]
  logs: list[str]

  def wait(self) -> list[str]:
    """Waits for every process (killing all on a timeout); returns their logs, asserting that
    each exited 0."""
    deadline = time.monotonic() + TIMEOUT
    try:
      for process in self.processes:
        process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
      for process in self.processes:
        process.kill() if process.poll() is None else None
    texts = [open(log).read() for log in self.logs]
    for index, (process, text) in enumerate(zip(self.processes, texts)):
      assert process.returncode == 0, f"process {index} exited {process.returncode}:\n{text[-3000:]}"
    return texts


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(count: int, folder: str, *flags: str) -> Launch:
  """``count`` processes of the tiny quickstart command with ``flags``, told about each other
  with --coordinator_address/--num_processes/--process_id (README, "Several hosts")."""
  address = f"127.0.0.1:{_free_port()}"
  os.makedirs(folder, exist_ok=True)
  processes, logs = [], []
  for index in range(count):
    logs.append(os.path.join(folder, f"process_{index}.log"))
    with open(logs[-1], "w") as log:
      processes.append(subprocess.Popen(
          [sys.executable, "-m", "ssd_jax.main", f"--config={TINY}", *flags,
           f"--coordinator_address={address}", f"--num_processes={count}",
           f"--process_id={index}"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
  return Launch(processes, logs)


def tiny_config(data_dir: str, **train_fields):
  config = config_utils.load_config(os.path.join(CONFIG_DIR, "quickstart.py"), "tiny")
  config.data.data_dir = data_dir
  config.train.update(train_fields)
  return config


def checkpoint_steps(workdir: str) -> list[int]:
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


@dataclasses.dataclass
class Run:
  workdir: str
  data_dir: str
  logs: list[str]

  def flags(self, workdir: str | None = None) -> tuple[str, ...]:
    return (f"--workdir={workdir or self.workdir}", f"--config.data.data_dir={self.data_dir}")


@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory) -> Run:
  """The tiny quickstart's one-process run (conftest's ``tiny_run``: 8 steps, checkpoints 4 and 8)
  resumed on two processes to step 12, checkpointed and evaluated there."""
  root = str(tmp_path_factory.mktemp("two_processes"))
  run = Run(os.path.join(root, "run"), os.path.join(root, "data"), [])
  shutil.copytree(tiny_run.workdir, run.workdir)
  shutil.copytree(tiny_run.data_dir, run.data_dir)  # this module adds a 15-image split
  run.logs = launch(2, os.path.join(root, "logs"), *run.flags(),
                    "--config.train.num_steps=12").wait()
  return run


def one_process_metrics(run: Run, step: int, folder: str, num_test: int = 16) -> dict:
  """metrics.json of checkpoint ``step`` evaluated in this (one) process on ``num_test``
  synthetic test images, written under ``folder``."""
  config = tiny_config(run.data_dir)
  config.data.synthetic.num_test = num_test
  evaluate.evaluate_detector(Detector.restore(config, run.workdir, step), config, folder)
  return json.load(open(os.path.join(folder, "eval", f"step_{step}", "metrics.json")))


def assert_same_metrics(got: dict, expected: dict, images: int = 16) -> None:
  assert got["images"] == expected["images"] == images and got.keys() == expected.keys()
  for name, value in expected.items():
    assert got[name] == pytest.approx(value, abs=1e-6), name


def test_two_processes_train_checkpoint_and_evaluate_as_one_would(trained, tmp_path):
  for log in trained.logs:
    assert "jax.distributed: process" in log and "restored checkpoint at step 8 " in log
    assert "step 12/12" in log
    assert "eval at step 12 on 16 images" in log  # every process reports the whole split's result
  assert "training done" in trained.logs[0] and "training done" not in trained.logs[1]
  assert checkpoint_steps(trained.workdir)[-1] == 12
  periodic = json.load(open(os.path.join(trained.workdir, "eval", "step_12", "metrics.json")))
  assert_same_metrics(periodic, one_process_metrics(trained, 12, str(tmp_path)))


def test_eval_on_four_processes_equals_eval_on_one(trained, tmp_path):
  # 15 test images: shards of 4, 4, 4 and 3 (the last one padded).
  logs = launch(4, str(tmp_path / "logs"), *trained.flags(), "--mode=eval", "--step=4",
                "--config.data.synthetic.num_test=15").wait()
  assert all("eval at step 4 on 15 images" in log for log in logs)
  assert "evaluation done" in logs[0] and "metrics.json" in logs[0]
  four = json.load(open(os.path.join(trained.workdir, "eval", "step_4", "metrics.json")))
  assert_same_metrics(four, one_process_metrics(trained, 4, str(tmp_path / "one"), 15), 15)


def test_predict_and_export_on_two_processes(trained, tmp_path):
  images = sorted(os.path.join(root, name) for root, _, names in os.walk(trained.data_dir)
                  for name in names if name.startswith("test_") and name.endswith(".jpg"))[:4]
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"not an image")
  # 5 files, one unreadable: 3 for process 0, 2 for process 1.
  pattern = ",".join(images[:2] + [str(broken)] + images[2:])
  two = str(tmp_path / "two")
  logs = launch(2, str(tmp_path / "logs"), *trained.flags(), "--mode=predict",
                f"--images={pattern}", f"--output={two}").wait()
  assert "prediction done: 4 pictures" in logs[0]
  one = str(tmp_path / "one")
  assert predict.predict(tiny_config(trained.data_dir), trained.workdir, pattern, one) == 4
  lines = open(os.path.join(two, "detections.jsonl")).read()
  assert lines == open(os.path.join(one, "detections.jsonl")).read()  # same order, same numbers
  assert sorted(os.listdir(two)) == sorted(os.listdir(one))  # each process drew its share

  exported = str(tmp_path / "export")
  logs = launch(2, str(tmp_path / "export_logs"), *trained.flags(), "--mode=export",
                f"--output={exported}").wait()
  assert f"export done: {exported}" in logs[0] and "process 0 writes the export" in logs[1]
  assert json.load(open(os.path.join(exported, export.METADATA_FILE)))["step"] == 12
  with open(os.path.join(exported, export.FILES["jax"]), "rb") as f:
    restored = jax.export.deserialize(f.read())
  # The one-process export of the same checkpoint, run the same way: the same numbers.
  one_process = export.export_function(export.serving_function(
      Detector.restore(tiny_config(trained.data_dir), trained.workdir)))
  pictures = np.random.default_rng(0).integers(0, 256, (2, 70, 50, 3), np.uint8)
  expected, got = one_process.call(pictures), restored.call(pictures)
  for name in export.OUTPUT_NAMES:
    np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]))


def _wait_for(pattern: str, path: str, launched: Launch, seconds: float = TIMEOUT) -> None:
  deadline = time.monotonic() + seconds
  while not (os.path.exists(path) and re.search(pattern, open(path).read())):
    assert all(p.poll() is None for p in launched.processes), open(path).read()[-3000:]
    assert time.monotonic() < deadline, f"no {pattern!r} in {path}"
    time.sleep(0.2)


def test_sigterm_to_one_process_saves_one_step_everywhere_and_resumes(trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained.workdir, workdir)  # from step 12 of the two-process run
  long_run = ("--config.train.num_steps=100000", "--config.train.checkpoint_every=100000",
              "--config.train.eval_every=100000", "--config.train.log_every_seconds=0.5")
  running = launch(2, str(tmp_path / "logs"), *trained.flags(workdir), *long_run)
  # A progress line past the restored step: the signal lands while both processes train.
  _wait_for(r"step (1[3-9]|[2-9]\d|\d{3,})/100000 ", running.logs[1], running)
  running.processes[1].send_signal(signal.SIGTERM)  # one process, as one host's maintenance
  logs = running.wait()
  saved = {int(re.search(r"SIGTERM: saving step (\d+)", log).group(1)) for log in logs}
  assert len(saved) == 1, saved  # JAX's preemption sync point: the same step on both
  step = saved.pop()
  assert step > 12 and checkpoint_steps(workdir)[-1] == step

  logs = launch(2, str(tmp_path / "restart"), *trained.flags(workdir),
                f"--config.train.num_steps={step + 2}").wait()
  assert all(f"restored checkpoint at step {step} " in log for log in logs)
  assert checkpoint_steps(workdir)[-1] == step + 2

  # Two processes -> one: the replicated state restores on one device and training goes on.
  state = train.train_and_evaluate(tiny_config(trained.data_dir, num_steps=step + 4), workdir)
  assert int(state.step) == step + 4 and checkpoint_steps(workdir)[-1] == step + 4


def test_each_training_example_comes_once_per_epoch_over_the_processes(trained):
  config = tiny_config(trained.data_dir)
  whole = data.make_source(config, "train", 0, 1)
  ids = [record["image_id"] for record in whole.parts[0].as_numpy_iterator()]
  seen = []
  for process in (0, 1):
    source = data.make_source(config, "train", process, 2)
    epoch = pipeline._train_records(source, config.data.seed, config.data.shuffle_buffer, 0)
    records = list(epoch.take(source.num_examples).as_numpy_iterator())  # this process's epoch
    assert source.num_examples == len(ids) // 2
    seen += [(record["index"], record["image_id"]) for record in records]
  # Every image once, under the index one process gives it: no repeats, nothing left out.
  assert sorted(seen) == [(i, image_id) for i, image_id in enumerate(ids)]


def test_a_process_without_images_evaluates_blanks_and_cannot_train(tmp_path):
  """More processes than images: the third of three gets no eval image and pads its batches as
  the others do (evaluation's collectives stay in step); training stops with one line."""
  config = tiny_config(str(tmp_path))
  config.data.synthetic.num_test, config.data.eval_batch_size = 2, 3
  batches = [list(data.eval_iterator(config, data.make_source(config, "eval", p, 3)))
             for p in range(3)]
  assert [len(b) for b in batches] == [1, 1, 1]
  valid = [batch["index"][batch["valid"]].tolist() for (batch,) in batches]
  assert valid == [[0], [1], []]
  config.data.synthetic.num_train = 2
  with pytest.raises(data.DatasetNotFoundError, match="process 2 of 3 has no training image"):
    data.train_dataset(config, 0, data.make_source(config, "train", 2, 3))
