"""Shared test fixtures: random boxes and the SSD300 priors."""

import importlib.util
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # lets tests import np_reference

from ssd_jax import config_utils, priors  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")


def pytest_configure(config):  # pylint: disable=unused-argument
  """Where torch is installed (the `convert` extra), imports it before the test modules import
  jax and TF: imported after them, torch 2.14.1's triton import segfaults and kills collection
  of test_convert_parity.py. A hook, not a module-level import, so that scripts importing a
  test module after jax (tests/distributed_worker.py) do not import torch after it."""
  if importlib.util.find_spec("torch") is not None:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import torchvision.models.detection  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


def random_boxes(rng: np.random.Generator, n: int, min_size: float = 0.02) -> np.ndarray:
  """[n, 4] valid xyxy boxes inside [0, 1] with sides >= min_size."""
  lo = rng.uniform(0, 1 - min_size, size=(n, 2))
  size = rng.uniform(min_size, 1, size=(n, 2)) * (1 - lo)
  size = np.maximum(size, min_size)
  return np.concatenate([lo, np.minimum(lo + size, 1.0)], axis=1).astype(np.float32)


@pytest.fixture(scope="session")
def ssd300_config():
  return config_utils.load_config(os.path.join(CONFIG_DIR, "ssd300.py"))


@pytest.fixture(scope="session")
def ssd300_priors(ssd300_config):
  return priors.from_config(ssd300_config)
