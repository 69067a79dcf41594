"""Checkpoints: the model's variables restore without an optimiser, in the current layout and in
the previous one (the whole train state in one ``state`` item), for inference and for resuming."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from conftest import CONFIG_DIR
from ssd_jax import checkpoint, config_utils, models, optimizer, parallel
from ssd_jax import train_step as step_lib
from ssd_jax.inference import Detector


@pytest.fixture(scope="module")
def config():
  """A small model with BatchNorm statistics (model_state), so both halves of the variables count."""
  config = config_utils.load_config(os.path.join(CONFIG_DIR, "ssd300_resnet34.py"))
  config.model.width = 0.125
  return config


@pytest.fixture(scope="module")
def fresh_state(config):
  """The shapes of the train state (replicated), as a restore target; nothing is computed."""
  tx, _ = optimizer.create_optimizer(config)
  init = lambda: step_lib.create_train_state(models.create_model(config, nnx.Rngs(0)), tx)[1]
  sharding = parallel.replicated(parallel.create_mesh(config))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      jax.eval_shape(init))


def random_state(fresh_state, step):
  """A train state of ``fresh_state``'s shapes whose every leaf holds values no initialisation
  gives."""
  rng = np.random.default_rng(step)
  state = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), fresh_state)
  return state.replace(step=np.array(step, np.int32))


def write_previous_layout(workdir, state, meta):
  """A checkpoint as the code before the ``variables`` item wrote it, with orbax directly."""
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                  item_names=("state", "meta"))
  manager.save(int(state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()
  manager.close()


def assert_same(expected, got):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(expected), jax.device_get(got))


@pytest.mark.parametrize("layout", ["current", "previous"])
def test_variables_restore_for_inference_and_the_whole_state_for_training(
    layout, config, fresh_state, tmp_path):
  workdir = str(tmp_path)
  state = random_state(fresh_state, step=7)
  meta = {"step": 7, "examples_seen": 7 * config.data.batch_size}
  if layout == "previous":
    write_previous_layout(workdir, state, meta)
  else:
    manager = checkpoint.create_manager(workdir, keep=2)
    checkpoint.save(manager, state, meta)
    manager.close()
    items = set(os.listdir(os.path.join(workdir, "checkpoints", "7")))
    assert items >= {"meta", "training", "variables"} and "state" not in items

  detector = Detector.restore(config, workdir)
  assert detector.step == 7
  assert jax.tree.leaves(state.model_state), "the model has BatchNorm statistics"
  assert_same(state.params, detector.params)
  assert_same(state.model_state, detector.model_state)

  manager = checkpoint.create_manager(workdir, keep=2, read_only=True)
  restored, restored_meta = checkpoint.restore(manager, fresh_state)
  manager.close()
  assert restored_meta == meta
  assert_same(state, restored)


def test_a_missing_step_names_the_available_ones(config, fresh_state, tmp_path):
  manager = checkpoint.create_manager(str(tmp_path), keep=2)
  checkpoint.save(manager, random_state(fresh_state, step=3), {"step": 3})
  manager.close()
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 4 .*available steps: \[3\]"):
    Detector.restore(config, str(tmp_path), step=4)


def test_the_best_checkpoint_has_the_same_items(fresh_state, tmp_path):
  manager = checkpoint.create_best_manager(str(tmp_path))
  best = random_state(fresh_state, step=5)
  checkpoint.save_if_best(manager, best, {"mAP": 0.5}, {"step": 5})
  checkpoint.save_if_best(manager, random_state(fresh_state, step=6), {"mAP": 0.4},
                          {"step": 6})  # worse: removed once written
  manager.close()
  reopened = checkpoint.create_best_manager(str(tmp_path))
  assert list(reopened.all_steps()) == [5]
  variables, step = checkpoint.restore_variables(reopened, checkpoint.model_variables(fresh_state))
  reopened.close()
  assert step == 5
  assert_same(checkpoint.model_variables(best), variables)
