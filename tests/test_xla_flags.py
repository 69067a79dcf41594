"""xla_flags: project XLA:CPU defaults are added when unset; a user's XLA_FLAGS always wins."""

import json
import os
import subprocess
import sys

import pytest

from ssd_jax import xla_flags

YNN = "xla_cpu_experimental_ynn_fusion_type"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_option_names():
  assert xla_flags.option_names("") == set()
  assert xla_flags.option_names(" --a=1  --b -c=x=y ") == {"a", "b", "c"}


def test_user_value_is_kept_and_other_user_options_survive():
  flags, added = xla_flags.with_defaults(f"--{YNN}=individual_convolution --x=1", {YNN: "-foo"})
  assert flags == f"--{YNN}=individual_convolution --x=1" and added == {}
  flags, added = xla_flags.with_defaults("--xla_force_host_platform_device_count=4", {YNN: "v"})
  assert flags == f"--xla_force_host_platform_device_count=4 --{YNN}=v" and added == {YNN: "v"}
  assert xla_flags.with_defaults("", {YNN: "v"}) == (f"--{YNN}=v", {YNN: "v"})


def test_every_mode_has_defaults_and_bad_mode_is_named():
  assert set(xla_flags.MODES.values()) == set(xla_flags.DEFAULTS)
  with pytest.raises(ValueError, match="unknown mode 'serve'"):
    xla_flags.apply("serve")


def _apply_in_fresh_process(env_flags: str | None, start_jax: bool = False) -> dict[str, str]:
  """{mode: XLA_FLAGS after ``xla_flags.apply(mode)``} in a new interpreter (JAX not started)."""
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop("XLA_FLAGS", None)
  if env_flags is not None:
    env["XLA_FLAGS"] = env_flags
  code = ("import os, json; from ssd_jax import xla_flags\n"
          "start, out = dict(os.environ), {}\n"
          "for mode in xla_flags.MODES:\n"
          "  os.environ.clear(); os.environ.update(start)\n"
          "  xla_flags.apply(mode)\n"
          "  out[mode] = os.environ.get('XLA_FLAGS', '')\n"
          "print(json.dumps(out))\n")
  if start_jax:  # XLA parses the options here and aborts on a name it does not know
    code += "import jax; jax.numpy.ones(3).block_until_ready()\n"
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout)


def test_user_xla_flags_are_never_overwritten():
  user = f"--{YNN}=individual_convolution --xla_force_host_platform_device_count=2"
  assert _apply_in_fresh_process(user) == {mode: user for mode in xla_flags.MODES}


def test_defaults_applied_when_unset_and_accepted_by_xla():
  for mode, flags in _apply_in_fresh_process(None, start_jax=True).items():
    defaults = xla_flags.DEFAULTS[xla_flags.MODES[mode]]
    assert xla_flags.option_names(flags) == set(defaults)
    assert all(f"--{name}={value}" in flags.split() for name, value in defaults.items())


def test_apply_after_jax_started_changes_nothing(monkeypatch):
  import jax
  jax.numpy.ones(1).block_until_ready()
  monkeypatch.setenv("XLA_FLAGS", "--x=1")
  assert xla_flags.apply("train") == {} and os.environ["XLA_FLAGS"] == "--x=1"
