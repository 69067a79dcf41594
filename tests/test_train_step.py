"""The jitted train step on the quickstart model with a fixed synthetic batch (no input pipeline)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import CONFIG_DIR
from ssd_jax import config_utils, parallel, pixel_augment
from ssd_jax import train_step as step_lib


def tiny_config(batch_size=4):
  config = config_utils.load_config(os.path.join(CONFIG_DIR, "quickstart.py"), "tiny")
  config.data.batch_size = batch_size
  config.optimizer.warmup_steps = 0
  config.optimizer.decay_steps = ()
  config.optimizer.learning_rate = 0.08  # 0.01 at this batch of 4
  return config


def test_loss_falls_on_a_fixed_batch_and_the_step_compiles_once():
  config = tiny_config()
  mesh = parallel.create_mesh(config)
  _, state, step = step_lib.make_step(config, mesh)
  batch = parallel.global_batch(step_lib.synthetic_batch(config), mesh)
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert set(metrics) >= {"loss", "loc_loss", "conf_loss", "num_pos", "grad_norm", "param_norm",
                          "learning_rate", "finite"}
  assert np.all(np.isfinite(losses)) and bool(metrics["finite"])
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == 40
  assert step._cache_size() == 1


def test_a_drawn_batch_is_augmented_by_the_step_and_trains():
  config = tiny_config()
  config.augment.resize_methods = ("bilinear", "area", "nearest", "bicubic", "lanczos3")
  mesh = parallel.create_mesh(config)
  _, state, step = step_lib.make_step(config, mesh)
  batch = step_lib.synthetic_batch(config, drawn=True)
  assert batch["image"].dtype == np.uint8 and len(set(batch["method"])) > 1
  images = pixel_augment.augment(parallel.global_batch(batch, mesh),
                                 pixel_augment.Options.from_config(config))
  assert images.shape == (4, 64, 64, 3) and np.isfinite(np.asarray(images)).all()
  batch = parallel.global_batch(batch, mesh)
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
  assert step._cache_size() == 1


def test_nonfinite_update_is_skipped_when_configured():
  config = tiny_config()
  config.train.skip_nonfinite = True
  mesh = parallel.create_mesh(config)
  _, state, step = step_lib.make_step(config, mesh)
  batch = step_lib.synthetic_batch(config)
  batch["image"][0, 0, 0, 0] = np.nan
  before = jax.device_get(state.params)
  state, metrics = step(state, parallel.global_batch(batch, mesh))
  assert not bool(metrics["finite"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before)


SHARDED_CHECK = """
import jax, numpy as np
import test_train_step as t
from ssd_jax import parallel
from ssd_jax import train_step as step_lib
assert jax.device_count() == 4
results = []
for devices in (1, 4):
  config = t.tiny_config(batch_size=8)
  config.augment.resize_methods = ("bilinear", "area", "nearest", "bicubic", "lanczos3")
  config.mesh.data_devices = devices
  mesh = parallel.create_mesh(config)
  _, state, step = step_lib.make_step(config, mesh)
  # A batch of model input, then two as the input pipeline draws them (the pixel work sharded).
  for seed, drawn in ((0, False), (1, True), (2, True)):
    batch = step_lib.synthetic_batch(config, seed, drawn)
    state, metrics = step(state, parallel.global_batch(batch, mesh))
  results.append((float(metrics["loss"]), jax.device_get(state.params)))
np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), results[0][1], results[1][1])
print("sharded step matches", results[0][0], results[1][0])
"""


def test_sharded_step_equals_single_device_step():
  # Both sides compiled alike with most optimisations off (compiles faster; equality is the test).
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  result = subprocess.run([sys.executable, "-c", SHARDED_CHECK], env=env, capture_output=True,
                          text=True, cwd=os.path.dirname(__file__), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "sharded step matches" in result.stdout


@pytest.mark.usefixtures("fast_compile")
def test_batchnorm_statistics_are_trained_by_the_step():
  config = config_utils.load_config(os.path.join(CONFIG_DIR, "ssd300_resnet34.py"))
  config.model.width = 0.125
  config.data.batch_size = 2
  config.data.max_boxes = 4
  mesh = parallel.create_mesh(config)
  _, state, step = step_lib.make_step(config, mesh)
  before = jax.device_get(state.model_state)
  state, metrics = step(state, parallel.global_batch(step_lib.synthetic_batch(config), mesh))
  assert bool(metrics["finite"])
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before,
                         jax.device_get(state.model_state))
  assert all(jax.tree.leaves(changed)), "every BatchNorm statistic moves in a training step"
