"""Locked installs: README's two commands and .ci/run install from constraints.txt, which pins
every package they install exactly, within setup.cfg's lower bounds."""

import configparser
import os
import re
import shlex

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import CONFIG_DIR

REPO = os.path.dirname(CONFIG_DIR)
CONSTRAINT = ("-c", "constraints.txt")


def readme_commands() -> list[str]:
  """The indented command lines of README.md's "Two commands" section: quickstart, test suite."""
  with open(os.path.join(REPO, "README.md")) as f:
    section = f.read().split("\n## Two commands", 1)[1].split("\n## ", 1)[0]
  return [line.strip() for line in section.splitlines() if line.startswith("    python3 -m venv")]


def ci_command() -> str:
  with open(os.path.join(REPO, ".ci", "run")) as f:
    return [line for line in f.read().splitlines() if line.startswith("python3 -m venv")][0]


def pip_installs(command: str) -> list[list[str]]:
  """The arguments of each ``pip install`` in a ``&&`` chain."""
  return [shlex.split(part)[2:] for part in command.split("&&")
          if shlex.split(part)[:2] == ["pip", "install"]]


def pins() -> dict[str, Version]:
  """constraints.txt as {canonical name: version}; every line must be an exact pin."""
  found = {}
  with open(os.path.join(REPO, "constraints.txt")) as f:
    for line in f.read().splitlines():
      if not line or line.startswith("#"):
        continue
      assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", line), line
      name, version = line.split("==")
      assert canonicalize_name(name) not in found, f"{name} pinned twice"
      found[canonicalize_name(name)] = Version(version)
  return found


def test_readme_test_command_is_what_ci_runs():
  quickstart, suite = readme_commands()
  assert suite == ci_command()
  assert quickstart.endswith("python -m ssd_jax.main --config=configs/quickstart.py "
                             "--workdir=runs/quickstart")


def test_every_readme_install_uses_the_constraints():
  installs = [args for command in readme_commands() for args in pip_installs(command)]
  assert len(installs) == 3  # the quickstart's, the suite's extras and its --no-deps ONNX set
  for args in installs:
    assert tuple(args[:2]) == CONSTRAINT, args


def test_constraints_pin_every_requirement_within_setup_cfg_bounds():
  setup = configparser.ConfigParser()
  setup.read(os.path.join(REPO, "setup.cfg"))
  lines = setup["options"]["install_requires"].splitlines()
  for extra in ("test", "export"):  # the README's; `gpu` and `convert` are installed elsewhere
    lines += setup["options.extras_require"][extra].splitlines()
  requirements = [Requirement(line) for line in lines if line.strip()]
  assert len(requirements) > 20
  pinned = pins()
  for requirement in requirements:
    version = pinned.get(canonicalize_name(requirement.name))
    assert version is not None, f"{requirement.name} is not in constraints.txt"
    assert requirement.specifier.contains(version), (requirement, version)


def test_the_no_deps_set_is_pinned_alike():
  """The ONNX converter set, installed with --no-deps, at the same versions on the command line
  and in constraints.txt (pip would refuse the install otherwise)."""
  (no_deps,) = [args for args in pip_installs(ci_command()) if "--no-deps" in args]
  pinned = pins()
  named = [arg for arg in no_deps if "==" in arg]
  assert len(named) == 8
  for arg in named:
    name, version = arg.split("==")
    assert pinned[canonicalize_name(name)] == Version(version), arg


def test_lock_script_installs_what_ci_installs():
  """.ci/lock reruns .ci/run's installs without the constraints (its grep and sed)."""
  with open(os.path.join(REPO, ".ci", "lock")) as f:
    lock = f.read()
  assert "grep -o 'pip install [^&]*' .ci/run | sed 's/ -c constraints.txt//'" in lock
  extracted = [re.sub(" -c constraints.txt", "", m) for m in
               re.findall(r"pip install [^&]*", ci_command())]
  assert [shlex.split(line)[2:] for line in extracted] == [
      [arg for arg in args if arg not in CONSTRAINT] for args in pip_installs(ci_command())]
