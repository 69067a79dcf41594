"""The test run's environment and shared fixtures: random boxes, the SSD300 priors, the tiny
quickstart trained once by the command line, and XLA without most optimisations."""

import dataclasses
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # lets tests import np_reference

from ssd_jax import config_utils, priors, xla_flags  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
REPO = os.path.dirname(CONFIG_DIR)
TINY = os.path.join(CONFIG_DIR, "quickstart.py") + ":tiny"

# Set here, before JAX starts in this process, and inherited by every process the tests start
# (the command line, the kill, notebook and multi-process tests, the export loaders):
# - a persistent compilation cache under the checkout (git-ignored): a program that the run
#   compiles again (the tiny model's train step and detector, in a fresh jit or a new process)
#   is read back instead of compiled. JAX_COMPILATION_CACHE_DIR= (empty) turns it off.
# - the XLA:CPU options of the command line (xla_flags), so that in-process and command-line
#   runs train alike and share cache entries.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
xla_flags.apply("train")


def pytest_configure(config):  # pylint: disable=unused-argument
  """Where torch is installed (the `convert` extra), imports it before the test modules import
  jax and TF: imported after them, torch 2.14.1's triton import segfaults and kills collection
  of test_convert_parity.py. A hook, not a module-level import, so that scripts importing a
  test module after jax (tests/distributed_worker.py) do not import torch after it."""
  if importlib.util.find_spec("torch") is not None:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import torchvision.models.detection  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


@pytest.fixture
def fast_compile():
  """XLA with most optimisations off (``jax_disable_most_optimizations``) for one test, whose
  subject is not numerics (e.g. that every parameter gets a gradient): SSD300-ResNet34's train
  step compiles in about 3/4 of the time, and the few steps run slower."""
  import jax  # pylint: disable=g-import-not-at-top  (JAX starts after the environment above)
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


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


def run_main(*flags: str, config: str = TINY, cwd: str = REPO,
             timeout: int = 600) -> subprocess.CompletedProcess:
  """``python -m ssd_jax.main --config=CONFIG FLAGS...`` in a new process (stdout, stderr text)."""
  return subprocess.run([sys.executable, "-m", "ssd_jax.main", f"--config={config}", *flags],
                        cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
  """``config.data.data_dir`` for the tiny quickstart; its shapes are generated on first use."""
  return str(tmp_path_factory.mktemp("tiny_data"))


@dataclasses.dataclass(frozen=True)
class TinyRun:
  """The tiny quickstart trained once by the command line: 8 steps, checkpoints at 4 and 8, an
  evaluation at 8. Tests may add to ``workdir`` (evaluations, logs) but change nothing in it."""
  workdir: str
  data_dir: str
  log: str  # the command's stderr
  flags: tuple[str, ...]  # --workdir and --config.data.data_dir, for further modes


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
  # Its own data_dir: the run generates the shapes and says so, whichever test came first.
  workdir, data_dir = (str(tmp_path_factory.mktemp(name)) for name in ("tiny_run", "tiny_run_data"))
  flags = (f"--workdir={workdir}", f"--config.data.data_dir={data_dir}")
  result = run_main(*flags)
  assert result.returncode == 0, result.stderr[-4000:]
  return TinyRun(workdir, data_dir, result.stderr, flags)
