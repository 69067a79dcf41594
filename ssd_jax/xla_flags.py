"""The XLA:CPU options measured fastest for each use, added to ``XLA_FLAGS`` before JAX starts.

XLA reads ``XLA_FLAGS`` once, when the first backend initialises (the first computation or
``jax.devices()``), so ``apply`` must run before that; importing jax earlier is harmless. An
option the user already set in ``XLA_FLAGS`` is left as the user wrote it. The options are added
only where JAX's default backend will be the CPU (``backend_is_cpu``): they are experimental
XLA:CPU options, and an accelerator run should not depend on them existing. The figures behind
each choice are in ``experiments/RESULTS.md`` ("XLA:CPU options") and the reasons in
WORKSPACE.md ("Decisions").
"""

import importlib.metadata
import importlib.util
import logging
import os
import pkgutil
import sys

# Option name -> value, per use. Only XLA:CPU options: the GPU and TPU compilers ignore them.
# YNNPACK's fusion of single convolutions is fast for the forward pass but its backward
# (filter-gradient) convolutions are 4-5x slower than XLA's Eigen ones; the option turns it off.
DEFAULTS: dict[str, dict[str, str]] = {
    "train": {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"},
    "inference": {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"},
}
MODES = {"train": "train", "eval": "inference", "predict": "inference", "export": "inference"}


def option_names(xla_flags: str) -> set[str]:
  """Names of the options in an ``XLA_FLAGS`` string: ``"--a=1 --b"`` -> ``{"a", "b"}``."""
  return {token.lstrip("-").split("=", 1)[0] for token in xla_flags.split() if token.strip("-")}


def with_defaults(xla_flags: str, defaults: dict[str, str]) -> tuple[str, dict[str, str]]:
  """(``xla_flags`` with each default the user did not set appended, the defaults added)."""
  present = option_names(xla_flags)
  added = {name: value for name, value in defaults.items() if name not in present}
  extra = " ".join(f"--{name}={value}" for name, value in added.items())
  return " ".join(part for part in (xla_flags.strip(), extra) if part), added


def accelerator_plugins() -> list[str]:
  """The JAX accelerator plugins installed here, found as JAX finds them but without importing
  them: modules of the ``jax_plugins`` namespace package (jax[cuda], jax[rocm]), entry points of
  the ``jax_plugins`` group, and libtpu (the ``libtpu`` package or ``TPU_LIBRARY_PATH``)."""
  found = set()
  spec = importlib.util.find_spec("jax_plugins")
  if spec is not None and spec.submodule_search_locations:
    found |= {module.name for module in pkgutil.iter_modules(spec.submodule_search_locations)}
  found |= {entry.name for entry in importlib.metadata.entry_points(group="jax_plugins")}
  if importlib.util.find_spec("libtpu") is not None or os.environ.get("TPU_LIBRARY_PATH"):
    found.add("libtpu")
  return sorted(found)


def backend_is_cpu() -> bool:
  """Whether JAX's default backend will be XLA:CPU, decided before JAX starts.

  JAX's platforms setting (``JAX_PLATFORMS`` or ``jax.config.jax_platforms``), when set, decides:
  its first entry is the default backend. Unset, JAX prefers any accelerator whose plugin is
  installed (``accelerator_plugins``), so the backend is the CPU only when there is none. A
  machine with a plugin but no accelerator falls back to the CPU without these options; setting
  ``JAX_PLATFORMS=cpu`` there gives them.
  """
  platforms = (sys.modules["jax"].config.jax_platforms if "jax" in sys.modules
               else os.environ.get("JAX_PLATFORMS")) or ""
  if platforms.strip():
    return platforms.split(",")[0].strip().lower() == "cpu"
  return not accelerator_plugins()


def apply(mode: str) -> dict[str, str]:
  """Adds the defaults of ``mode`` (train, eval, predict, export) to ``os.environ["XLA_FLAGS"]``.

  Returns the options it added (none where the user set them, or where JAX's backend will not be
  the CPU). Logs a warning and changes nothing when a JAX backend is already running, as XLA
  would no longer read the variable.
  """
  if mode not in MODES:
    raise ValueError(f"xla_flags.apply: unknown mode {mode!r}; known: {sorted(MODES)}")
  if _backend_started():
    logging.warning("xla_flags.apply(%r): JAX already started; XLA_FLAGS left as it is", mode)
    return {}
  if not backend_is_cpu():
    logging.info("XLA:CPU options not added: JAX's backend will not be the CPU (JAX_PLATFORMS=%r, "
                 "accelerator plugins: %s)", os.environ.get("JAX_PLATFORMS", ""),
                 ", ".join(accelerator_plugins()) or "none")
    return {}
  flags, added = with_defaults(os.environ.get("XLA_FLAGS", ""), DEFAULTS[MODES[mode]])
  if flags:
    os.environ["XLA_FLAGS"] = flags
  return added


def summary() -> str:
  """One line for the start-up log: the XLA_FLAGS in force."""
  return f"XLA_FLAGS in force: {os.environ.get('XLA_FLAGS') or '(none)'}"


def _backend_started() -> bool:
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge  # no public spelling; the check only guards against misuse
  return xla_bridge.backends_are_initialized()
