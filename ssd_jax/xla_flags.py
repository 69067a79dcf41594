"""The XLA:CPU options measured fastest for each use, added to ``XLA_FLAGS`` before JAX starts.

XLA reads ``XLA_FLAGS`` once, when the first backend initialises (the first computation or
``jax.devices()``), so ``apply`` must run before that; importing jax earlier is harmless. An
option the user already set in ``XLA_FLAGS`` is left as the user wrote it. The figures behind
each choice are in ``experiments/RESULTS.md`` ("XLA:CPU options") and the reasons in
WORKSPACE.md ("Decisions").
"""

import logging
import os
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


def apply(mode: str) -> dict[str, str]:
  """Adds the defaults of ``mode`` (train, eval, predict, export) to ``os.environ["XLA_FLAGS"]``.

  Returns the options it added (none where the user set them). Logs a warning and changes
  nothing when a JAX backend is already running, as XLA would no longer read the variable.
  """
  if mode not in MODES:
    raise ValueError(f"xla_flags.apply: unknown mode {mode!r}; known: {sorted(MODES)}")
  if _backend_started():
    logging.warning("xla_flags.apply(%r): JAX already started; XLA_FLAGS left as it is", mode)
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
