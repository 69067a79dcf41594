"""Loading experiment configs (``configs/<name>.py`` files with a ``get_config()``), and
``ConfigError``, raised wherever a config value or flag cannot work (``main`` prints it as one
line)."""

import difflib
import importlib.util
import os

import ml_collections


class ConfigError(ValueError):
  """A config field has a value that cannot work; the message names the field."""


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


def load_config_argument(argument: str) -> ml_collections.ConfigDict:
  """The config of a ``--config`` value: ``PATH`` or ``PATH:VARIANT``, as ml_collections reads it."""
  path, *variant = argument.split(":")
  return load_config(path, *variant)


def unknown_field(config: ml_collections.ConfigDict, dotted: str) -> str | None:
  """Why ``config.<dotted>`` does not exist, naming the closest existing fields; None if it does.

  E.g. ``config.optimizer has no field 'learnin_rate'; closest: learning_rate``.
  """
  node, parents = config, ["config"]
  for key in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      return f"{'.'.join(parents)} is a {type(node).__name__}, not a group of fields"
    if key not in node:
      names = sorted(node.keys())
      close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
      where = ".".join(parents)
      if close:
        return f"{where} has no field {key!r}; closest: {', '.join(close)}"
      return f"{where} has no field {key!r}; its fields: {', '.join(names)}"
    node = node[key]
    parents.append(key)
  return None


def expand_shorthands(config: ml_collections.ConfigDict) -> None:
  """Reads the short command-line spellings of ``config.data.class_names`` in place.

  ml_collections parses ``--config.data.class_names=redbox,bluebox`` as ``("redbox,bluebox",)``
  and ``=None`` as ``(None,)``: these become ``("redbox", "bluebox")`` and None (the dataset's
  own names). Split entries may be written ``"where:which"`` (``ssd_jax.data.sources`` reads them).
  """
  names = config.data.class_names
  if names is None:
    return
  if tuple(names) in ((None,), ("None",)):
    config.data.class_names = None
  elif any(isinstance(name, str) and "," in name for name in names):
    config.data.class_names = tuple(part.strip() for name in names for part in str(name).split(",")
                                    if part.strip())


def check_num_classes(num_classes: int, class_names: tuple[str, ...]) -> None:
  """Raises ConfigError unless ``num_classes`` is the class names plus background."""
  if len(class_names) + 1 != num_classes:
    raise ConfigError(
        f"config.model.num_classes={num_classes} does not fit the {len(class_names)} class names "
        f"{tuple(class_names)} (+ background = {len(class_names) + 1}): set "
        f"--config.model.num_classes={len(class_names) + 1}, or leave it out when you set "
        f"--config.data.class_names")


def file_in_the_way(folder: str) -> str | None:
  """The file that keeps ``folder`` (a path given as an output folder) from being one: ``folder``
  itself or the closest existing path above it when that is a file; None when there is none."""
  path = os.path.abspath(os.path.expanduser(folder))
  while not os.path.exists(path):  # False below a file too
    path = os.path.dirname(path)
  return None if os.path.isdir(path) else path
