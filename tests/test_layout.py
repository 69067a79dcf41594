"""The package's layering, read statically from the source (ast): the modes sit side by side and
restoring a detector needs no training code."""

import ast
import functools
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ssd_jax")
MODES = ("train", "evaluate", "predict", "export")  # what main dispatches --mode to
TRAINING = ("train", "train_step", "optimizer")


def module_files() -> dict[str, str]:
  """{dotted name below ssd_jax ("data.pipeline", "models" for models/__init__.py): path}."""
  files = {}
  for folder, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
        files[dotted.removesuffix(".__init__").removesuffix("__init__")] = path
  return files


def direct_imports(path: str, known: set[str]) -> set[str]:
  """The ssd_jax modules that ``path`` imports anywhere (function bodies included)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      assert node.level == 0, f"{path}: a relative import; the package imports absolutely"
      # "from ssd_jax import train" imports module "train"; "from ssd_jax.x import y" module x
      # (and x.y when that is a module).
      names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    else:
      continue
    for name in names:
      if name == "ssd_jax" or not name.startswith("ssd_jax."):
        continue
      dotted = name.removeprefix("ssd_jax.")
      while dotted and dotted not in known:
        dotted = dotted.rpartition(".")[0]
      if dotted:
        found.add(dotted)
        # Importing a submodule runs its packages' __init__ first.
        parts = dotted.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in known)
  return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
  """{module: the ssd_jax modules it imports directly}."""
  files = module_files()
  return {name: direct_imports(path, set(files)) for name, path in files.items()}


def imported_by(module: str) -> set[str]:
  """Every ssd_jax module that importing ``module`` can import, directly or through others."""
  graph = import_graph()
  seen, todo = set(), [module]
  while todo:
    for name in graph[todo.pop()] - seen:
      seen.add(name)
      todo.append(name)
  return seen - {module}


def test_the_import_reader_sees_known_imports():
  # main imports every mode inside its main(); train imports the step (two ways of writing it).
  assert set(MODES) <= imported_by("main")
  assert {"train_step", "optimizer", "checkpoint", "data.pipeline"} <= imported_by("train")


@pytest.mark.parametrize("module", ["inference", "evaluate", "predict", "export"])
def test_restoring_and_using_a_detector_needs_no_training_code(module):
  assert not imported_by(module) & set(TRAINING)


@pytest.mark.parametrize("mode", MODES)
def test_no_mode_imports_another(mode):
  assert not imported_by(mode) & (set(MODES) - {mode})


def test_no_import_cycles():
  # Function-level imports count too (config_validation imports the modules whose constants it
  # checks, and parallel imports config_validation).
  assert [name for name in module_files() if name in imported_by(name)] == []
