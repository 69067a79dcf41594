"""The package's layering, read statically from the source (ast): the modes sit side by side,
restoring a detector needs no training code, and WORKSPACE.md's layout lines say what each module
may import."""

import ast
import functools
import os
import re

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ssd_jax")
MODES = ("train", "evaluate", "predict", "export")  # what main dispatches --mode to
TRAINING = ("train", "train_step", "optimizer")
WORKSPACE = os.path.join(os.path.dirname(PACKAGE), "WORKSPACE.md")
# A layout entry: "  - `data.sources`: what it holds. May import: `config_utils`, `data.problems`."
LAYOUT_LINE = re.compile(r"^\s*- `([\w.]+)`(?: \(mode\))?: .* May import: (.*?)\.?$")


def module_files() -> dict[str, str]:
  """{dotted name below ssd_jax ("data.pipeline", "models" for models/__init__.py): path}; the
  empty top-level ssd_jax/__init__.py is left out."""
  files = {}
  for folder, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".").removesuffix("__init__")
        if dotted:
          files[dotted.removesuffix(".")] = path
  return files


def packages(module: str) -> set[str]:
  """The packages above ``module`` inside ssd_jax ("data" for "data.pipeline")."""
  parts = module.split(".")
  return {".".join(parts[:i]) for i in range(1, len(parts))}


def direct_imports(path: str, known: set[str]) -> set[str]:
  """The ssd_jax modules that ``path`` names in an import anywhere (function bodies included)."""
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
      dotted = name.removeprefix("ssd_jax.") if name.startswith("ssd_jax.") else ""
      while dotted and dotted not in known:
        dotted = dotted.rpartition(".")[0]
      if dotted:
        found.add(dotted)
  return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
  """{module: the other ssd_jax modules it imports by name} ("from ssd_jax.models import vgg" in
  models/__init__.py names its own package)."""
  files = module_files()
  return {name: direct_imports(path, set(files)) - {name} for name, path in files.items()}


def reachable(module: str, graph: dict[str, set[str]]) -> set[str]:
  """The modules reachable from ``module`` along ``graph``'s edges (itself only through a cycle)."""
  seen, todo = set(), [module]
  while todo:
    for name in graph[todo.pop()] - seen:
      seen.add(name)
      todo.append(name)
  return seen


def imported_by(module: str) -> set[str]:
  """Every ssd_jax module that importing ``module`` can import, directly or through others;
  importing a submodule runs its packages' __init__ first."""
  graph = {name: imports | packages(name) for name, imports in import_graph().items()}
  return reachable(module, graph) - {module}


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
  # Function-level imports count too. A submodule importing its own package is no cycle: Python
  # initialises the package first.
  graph = {name: imports - packages(name) for name, imports in import_graph().items()}
  assert [name for name in graph if name in reachable(name, graph)] == []


def documented_imports() -> dict[str, set[str]]:
  """{module: the entries of its "May import:" line in WORKSPACE.md's layout section}."""
  layout = open(WORKSPACE).read().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
  # A module's entry may wrap: its continuation lines are indented deeper than its "- ".
  entries = re.sub(r"\n {4,}(?!- )", " ", layout)
  documented = {}
  for line in entries.splitlines():
    match = LAYOUT_LINE.match(line)
    if match:
      entries = match.group(2)
      documented[match.group(1)] = (set() if entries == "nothing"
                                    else set(re.findall(r"`([\w.*]+)`", entries)))
  return documented


def covers(entry: str, module: str) -> bool:
  """Whether a "May import" entry allows ``module`` ("data.*": data and its modules)."""
  if entry.endswith(".*"):
    return module == entry[:-2] or module.startswith(entry[:-1])
  return module == entry


def test_workspace_says_what_every_module_may_import():
  documented = documented_imports()
  assert sorted(documented) == sorted(import_graph()), "one WORKSPACE.md layout line per module"
  undocumented = [f"{module} imports {name}" for module, imports in sorted(import_graph().items())
                  for name in sorted(imports - packages(module))
                  if not any(covers(entry, name) for entry in documented[module])]
  assert undocumented == [], "WORKSPACE.md's layout does not allow these imports"
