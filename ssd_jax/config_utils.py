"""Loading experiment configs (``configs/<name>.py`` files with a ``get_config()``)."""

import importlib.util
import os

import ml_collections


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Runs ``get_config(arg)`` (or ``get_config()``) of the config file at ``path``.

  Config variants use this to start from a base file beside them, e.g.
  ``load_config(os.path.join(os.path.dirname(__file__), "ssd300.py"))``.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  name = "ssd_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def sibling_config(config_file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Loads config ``name`` (without .py) from the folder of ``config_file``."""
  return load_config(os.path.join(os.path.dirname(os.path.abspath(config_file)), name + ".py"), arg)
