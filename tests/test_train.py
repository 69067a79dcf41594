"""The training loop and command on the tiny quickstart: resume, preemption, kills, bad flags,
non-finite losses and two processes under jax.distributed."""

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import CONFIG_DIR
import test_train_step
from ssd_jax import config_utils, parallel, train, train_step

REPO = os.path.dirname(CONFIG_DIR)
TINY = os.path.join(CONFIG_DIR, "quickstart.py") + ":tiny"


@pytest.fixture(scope="module")
def data_dir(tiny_data_dir):
  return tiny_data_dir  # the run's shapes, generated once


def tiny_config(data_dir, **train_fields):
  config = config_utils.load_config(os.path.join(CONFIG_DIR, "quickstart.py"), "tiny")
  config.data.data_dir = data_dir
  config.train.update(train_fields)
  return config


def command(workdir, data_dir, *flags):
  return [sys.executable, "-m", "ssd_jax.main", f"--config={TINY}", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", *flags]


def checkpoint_steps(workdir):
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit()) if os.path.isdir(folder) else []


def test_resume_gives_the_same_parameters_as_training_straight(data_dir, tmp_path):
  straight = train.train_and_evaluate(tiny_config(data_dir, num_steps=6), str(tmp_path / "a"))
  train.train_and_evaluate(tiny_config(data_dir, num_steps=3), str(tmp_path / "b"))
  resumed = train.train_and_evaluate(tiny_config(data_dir, num_steps=6), str(tmp_path / "b"))
  assert int(resumed.step) == 6 and checkpoint_steps(tmp_path / "b")[-1] == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params),
               jax.device_get(resumed.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.opt_state),
               jax.device_get(resumed.opt_state))


def test_nonfinite_loss_stops_without_saving_it(data_dir, tmp_path):
  config = tiny_config(data_dir, num_steps=8, checkpoint_every=1)
  config.optimizer.learning_rate = 1e12
  config.optimizer.warmup_steps = 0
  with pytest.raises(train.NonFiniteLossError, match=r"at step (\d+).*Last good checkpoint: step"):
    train.train_and_evaluate(config, str(tmp_path))
  saved = checkpoint_steps(tmp_path)
  assert saved, "the finite steps before the failure are saved"
  restored = train.checkpoint.restore(train.checkpoint.create_manager(str(tmp_path), 3),
                                             train.initial_state(config, train.parallel.create_mesh(config))[1])
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(jax.device_get(restored[0].params)))


def _poisoned(config, bad_steps) -> train.InputFn:
  """The pipeline's batches with the photometric values of training steps ``bad_steps``
  (1-based) NaN, so that their images are NaN on the device: a non-finite loss there."""
  real = train.pipeline_input(config)

  def input_fn(start_step):
    for step, batch in enumerate(real(start_step), start=start_step + 1):
      poisoned = dict(batch, photometric=np.full_like(batch["photometric"], np.nan))
      yield poisoned if step in bad_steps else batch
  return input_fn


def _restore_latest(config, workdir):
  manager = train.checkpoint.create_manager(str(workdir), 3, read_only=True)
  _, like, _ = train.initial_state(config, train.parallel.create_mesh(config))
  state, meta = train.checkpoint.restore(manager, like)
  manager.close()
  return state, meta


def test_nonfinite_step_between_logs_is_caught_before_the_next_checkpoint(data_dir, tmp_path):
  config = tiny_config(data_dir, num_steps=8, checkpoint_every=4, log_every_seconds=1e9)
  with pytest.raises(train.NonFiniteLossError,
                     match=r"at step 7 \(loss nan\).*Last good checkpoint: step 4 in "):
    # No log line is due at step 7 (nor at 5 and 6).
    train.train_and_evaluate(config, str(tmp_path), input_fn=_poisoned(config, {7}))
  assert checkpoint_steps(tmp_path) == [4], "step 8 followed a non-finite step: never saved"
  state, meta = _restore_latest(config, tmp_path)
  assert int(state.step) == meta["step"] == 4
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(jax.device_get(state.params)))


def test_skip_nonfinite_drops_the_bad_update_and_trains_on(data_dir, tmp_path):
  config = tiny_config(data_dir, num_steps=4, checkpoint_every=4, skip_nonfinite=True)
  state = train.train_and_evaluate(config, str(tmp_path), input_fn=_poisoned(config, {3}))
  assert int(state.step) == 4 and checkpoint_steps(tmp_path) == [4]
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(jax.device_get(state.params)))


def test_best_checkpoint_is_never_replaced_by_a_worse_one_of_a_resumed_run(tmp_path):
  import flax
  from ssd_jax import checkpoint

  @flax.struct.dataclass
  class State:  # the fields of a train state that a checkpoint holds
    step: jax.Array
    params: dict
    model_state: dict
    opt_state: dict

  def offer(step, summary):
    manager = checkpoint.create_best_manager(str(tmp_path))  # a new run in the same workdir
    state = State(np.int32(step), {"w": np.full(3, step, np.float32)}, {}, {"m": np.zeros(3)})
    checkpoint.save_if_best(manager, state, summary, {"step": step})
    manager.close()
    return sorted(checkpoint.create_best_manager(str(tmp_path)).all_steps())

  assert offer(4, {"mAP": 0.5}) == [4]
  assert offer(8, {"mAP": 0.3}) == [4], "a worse later checkpoint is not kept"
  assert offer(12, {"loss": 1.0}) == [4], "no metric, nothing saved"
  assert offer(16, {"AP": 0.7}) == [16]


def _wait_for_checkpoint(process, workdir, timeout=120):
  deadline = time.monotonic() + timeout
  while not checkpoint_steps(workdir):
    assert process.poll() is None, process.stdout.read()[-3000:]
    assert time.monotonic() < deadline, "no checkpoint appeared"
    time.sleep(0.2)


def test_sigterm_saves_a_checkpoint_and_exits_zero(data_dir, tmp_path):
  workdir = str(tmp_path)
  process = subprocess.Popen(command(workdir, data_dir, "--config.train.num_steps=100000",
                                     "--config.train.checkpoint_every=1000"),
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline, log = time.monotonic() + 120, os.path.join(workdir, "log.txt")
  # A progress line ("step 1/100000  loss ..."), so the signal arrives while training runs, not
  # during start-up ("compiling the train step; the first step (step 1) ..."), when the first
  # chance to save comes after compilation.
  while not (os.path.exists(log) and re.search(r"step \d+/\d+ ", open(log).read())):
    assert process.poll() is None and time.monotonic() < deadline
    time.sleep(0.2)
  sent = time.monotonic()
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=60)[0]
  assert process.returncode == 0, output[-3000:]
  assert time.monotonic() - sent < 15
  assert checkpoint_steps(workdir) and "SIGTERM: saving step" in output


@pytest.mark.slow
def test_kill_at_random_points_never_leaves_a_broken_checkpoint(data_dir, tmp_path):
  workdir, rng = str(tmp_path), random.Random(0)
  flags = ("--config.train.num_steps=400", "--config.train.checkpoint_every=1")
  for _ in range(3):
    process = subprocess.Popen(command(workdir, data_dir, *flags), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(process, workdir)
    time.sleep(rng.uniform(0, 1.5))
    process.kill()  # SIGKILL: no handler runs, possibly in the middle of a save
    process.communicate()
  before = checkpoint_steps(workdir)[-1]
  result = subprocess.run(command(workdir, data_dir, "--config.train.num_steps=" + str(before + 2)),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"restored checkpoint at step {before}" in result.stderr
  assert checkpoint_steps(workdir)[-1] == before + 2


@pytest.mark.slow
def test_sigkill_during_an_async_save_leaves_the_previous_checkpoint_restorable(data_dir,
                                                                               tmp_path):
  workdir, folder = str(tmp_path), os.path.join(str(tmp_path), "checkpoints")
  flags = ("--config.train.num_steps=100000", "--config.train.checkpoint_every=1")
  unfinished = []
  for _ in range(5):  # until a kill lands while orbax's background thread writes a checkpoint
    process = subprocess.Popen(command(workdir, data_dir, *flags), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(process, workdir)
    deadline = time.monotonic() + 60
    while not any("orbax-checkpoint-tmp" in name for name in os.listdir(folder)):
      assert time.monotonic() < deadline, "no save in progress seen"
      time.sleep(0.001)
    process.kill()
    process.communicate()
    unfinished = [name for name in os.listdir(folder) if "orbax-checkpoint-tmp" in name]
    if unfinished:
      break
  assert unfinished, "every kill came after the save had completed"
  complete = checkpoint_steps(workdir)
  assert int(unfinished[0].split(".")[0]) > complete[-1]
  config = tiny_config(data_dir)
  state, meta = _restore_latest(config, workdir)
  assert int(state.step) == meta["step"] == complete[-1]
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(jax.device_get(state.params)))


def test_the_loop_checks_the_batch_against_the_mesh_first(data_dir, tmp_path):
  # The split over several devices: test_parallel (four devices); validation's own checks of
  # batch_size and the command's exit status: test_configs, test_cli.
  config = tiny_config(data_dir)
  config.data.batch_size = 0
  with pytest.raises(train.ConfigError, match=r"^config.data.batch_size=0: expected a positive "
                                              r"multiple of the device count \(1\)"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def test_missing_workdir_is_named():
  result = subprocess.run([sys.executable, "-m", "ssd_jax.main", f"--config={TINY}"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode != 0 and "--workdir" in result.stderr and "Traceback" not in result.stderr


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_same_loss_as_one():
  worker = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
  port = _free_port()
  processes = [subprocess.Popen([sys.executable, worker, str(port), str(pid), "2"],
                                cwd=os.path.dirname(__file__), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
  # The same two steps on the same global batch in this (single) process, meanwhile.
  config = test_train_step.tiny_config(batch_size=8)
  mesh = parallel.create_mesh(config)
  _, state, step = train_step.make_step(config, mesh)
  for _ in range(2):
    state, metrics = step(state, parallel.global_batch(train_step.synthetic_batch(config), mesh))
  for process in processes:
    out, err = process.communicate(timeout=300)
    line = [l for l in out.splitlines() if l.startswith("LOSS")]
    assert line and line[0].endswith("DEVICES 2"), err[-3000:]
    np.testing.assert_allclose(float(line[0].split()[1]), float(metrics["loss"]), rtol=1e-5)


def test_init_from_starts_training_from_converted_weights(data_dir, tmp_path):
  from flax import nnx
  from ssd_jax import checkpoint, models
  config = tiny_config(data_dir)
  source = models.create_model(config, nnx.Rngs(123))  # other weights than the seed-0 init
  path = str(tmp_path / "converted")
  checkpoint.save_weights(path, source)
  config.train.init_from = path
  _, state, _ = train.initial_state(config, parallel.create_mesh(config))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(nnx.state(source, nnx.Param)))


def ssd300_config(data_dir: str, **train_fields):
  config = config_utils.load_config(os.path.join(CONFIG_DIR, "ssd300.py"))
  config.data.data_dir = data_dir
  config.train.update(train_fields)
  return config


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
  # The command's exit status 2 and single line for it: test_cli ("missing dataset").
  with pytest.raises(FileNotFoundError) as error:
    train.train_and_evaluate(ssd300_config(str(tmp_path), init_from="scratch"),
                             str(tmp_path / "run"))
  message = str(error.value)
  assert "'voc/2007'" in message and "tfds build voc/2007" in message and str(tmp_path) in message
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_ssd300_without_backbone_weights_stops_first_naming_the_flag(tmp_path):
  # No dataset either: the missing weights are reported first, before anything is built.
  with pytest.raises(train.ConfigError) as error:
    train.train_and_evaluate(ssd300_config(str(tmp_path)), str(tmp_path / "run"))
  message = str(error.value)
  assert message.startswith("ssd300_vgg16 starts from pretrained weights") and "\n" not in message
  for text in ("--config.train.init_from=FILE", "IMAGENET1K_FEATURES", "vgg16_reducedfc.pth",
               "--config.train.init_from=scratch"):
    assert text in message
  assert not os.path.exists(tmp_path / "run")


def test_profile_steps_write_a_trace_of_those_steps(data_dir, tmp_path):
  import glob, gzip, json
  train.train_and_evaluate(tiny_config(data_dir, num_steps=4, checkpoint_every=4,
                                       profile_steps=(1, 3)), str(tmp_path))
  runs = glob.glob(str(tmp_path / "plugins" / "profile" / "*"))
  assert len(runs) == 1, "one trace, where `tensorboard --logdir WORKDIR` looks for it"
  assert glob.glob(os.path.join(runs[0], "*.xplane.pb"))
  with gzip.open(glob.glob(os.path.join(runs[0], "*perfetto_trace.json.gz"))[0]) as f:
    events = json.load(f)["traceEvents"]
  names = {event.get("name", "") for event in events}
  assert any("train_step" in name for name in names), sorted(names)[:50]


def test_bad_profile_steps_are_named(data_dir, tmp_path):
  with pytest.raises(train.ConfigError, match=r"config.train.profile_steps=\(3, 1\): expected"):
    train.train_and_evaluate(tiny_config(data_dir, profile_steps=(3, 1)), str(tmp_path))
