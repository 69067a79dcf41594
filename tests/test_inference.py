"""The detector of a train state: periodic evaluation reuses one compiled detect function."""

import os

import jax
import numpy as np

from conftest import CONFIG_DIR
from ssd_jax import config_utils, parallel, train
from ssd_jax.inference import Detector


def test_with_state_keeps_the_compiled_function_and_takes_the_new_variables():
  config = config_utils.load_config(os.path.join(CONFIG_DIR, "quickstart.py"), "tiny")
  mesh = parallel.create_mesh(config)
  _, state, _ = train.initial_state(config, mesh)
  later = state.replace(step=state.step + 5,
                        params=jax.tree.map(lambda p: p * 1.5, state.params))
  images = np.random.default_rng(0).normal(
      size=(2, config.model.image_size, config.model.image_size, 3)).astype(np.float32)

  first = Detector.from_state(config, state, mesh)
  first(images)
  second = first.with_state(later)
  got = second(images)
  assert second.step == 5 and first.step == 0
  assert second._detect is first._detect and first._detect._cache_size() == 1
  expected = Detector.from_state(config, later, mesh)(images)  # built and compiled afresh
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), jax.device_get(expected))
  assert not np.array_equal(np.asarray(first(images)[1]), np.asarray(got[1])), \
      "the later variables give other scores"
