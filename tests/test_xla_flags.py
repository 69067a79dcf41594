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


def _apply_in_fresh_process(scenarios: dict[str, dict[str, str]], start_jax: bool = False,
                            plugin_dir: str = "") -> dict[str, dict[str, str]]:
  """{scenario: {mode: XLA_FLAGS after ``xla_flags.apply(mode)``}} in one new interpreter where
  JAX has not started: each scenario is the environment variables it sets (XLA_FLAGS,
  JAX_PLATFORMS) over an environment without them; ``plugin_dir`` goes on sys.path first for the
  scenarios whose name starts with "plugin"."""
  env = dict(os.environ, PYTHONPATH=REPO)
  for name in ("XLA_FLAGS", "JAX_PLATFORMS", "TPU_LIBRARY_PATH"):
    env.pop(name, None)
  code = ("import os, sys, json; from ssd_jax import xla_flags\n"
          f"scenarios, plugin_dir = {scenarios!r}, {plugin_dir!r}\n"
          "start, out = dict(os.environ), {}\n"
          "for name, variables in scenarios.items():\n"
          "  if name.startswith('plugin'):\n"
          "    sys.path.insert(0, plugin_dir)\n"
          "  out[name] = {}\n"
          "  for mode in xla_flags.MODES:\n"
          "    os.environ.clear(); os.environ.update(start, **variables)\n"
          "    xla_flags.apply(mode)\n"
          "    out[name][mode] = os.environ.get('XLA_FLAGS', '')\n"
          "print(json.dumps(out))\n")
  if start_jax:  # XLA parses the options here and aborts on a name it does not know
    code += "import jax; jax.numpy.ones(3).block_until_ready()\n"
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout)


def test_user_flags_are_kept_and_options_are_added_only_for_the_cpu(tmp_path):
  user = f"--{YNN}=individual_convolution --xla_force_host_platform_device_count=2"
  device_count = "--xla_force_host_platform_device_count=2"
  # A stand-in for an installed GPU plugin (jax[cuda13] installs jax_plugins/xla_cuda13), found
  # without being imported: importing it would fail.
  (tmp_path / "jax_plugins" / "xla_fake_gpu").mkdir(parents=True)
  (tmp_path / "jax_plugins" / "xla_fake_gpu" / "__init__.py").write_text("raise ImportError\n")
  scenarios = {
      "user": {"XLA_FLAGS": user},
      "cpu": {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": device_count},
      "cpu first": {"JAX_PLATFORMS": "CPU,cuda"},
      "gpu": {"JAX_PLATFORMS": "cuda", "XLA_FLAGS": device_count},
      "gpu first": {"JAX_PLATFORMS": "cuda,cpu"},
      "tpu": {"JAX_PLATFORMS": "tpu"},
      "plugin": {},
      "plugin, cpu asked for": {"JAX_PLATFORMS": "cpu"},
  }
  out = _apply_in_fresh_process(scenarios, plugin_dir=str(tmp_path))
  ours = lambda mode, flags="": xla_flags.with_defaults(flags, xla_flags.DEFAULTS[  # noqa: E731
      xla_flags.MODES[mode]])[0]
  expected = {"user": {mode: user for mode in xla_flags.MODES},
              "cpu": {mode: ours(mode, device_count) for mode in xla_flags.MODES},
              "cpu first": {mode: ours(mode) for mode in xla_flags.MODES},
              "gpu": {mode: device_count for mode in xla_flags.MODES},
              "gpu first": {mode: "" for mode in xla_flags.MODES},
              "tpu": {mode: "" for mode in xla_flags.MODES},
              "plugin": {mode: "" for mode in xla_flags.MODES},
              "plugin, cpu asked for": {mode: ours(mode) for mode in xla_flags.MODES}}
  assert out == expected
  assert all(ours(mode) for mode in xla_flags.MODES)  # the CPU cases above add something


def test_accelerator_plugins_are_found_without_importing_them(tmp_path, monkeypatch):
  (tmp_path / "jax_plugins" / "xla_fake_gpu").mkdir(parents=True)
  (tmp_path / "jax_plugins" / "xla_fake_gpu" / "__init__.py").write_text("raise ImportError\n")
  monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
  before = xla_flags.accelerator_plugins()
  monkeypatch.syspath_prepend(str(tmp_path))
  assert xla_flags.accelerator_plugins() == sorted(set(before) | {"xla_fake_gpu"})
  monkeypatch.setenv("TPU_LIBRARY_PATH", "/opt/libtpu.so")
  assert "libtpu" in xla_flags.accelerator_plugins()


def test_defaults_applied_when_unset_and_accepted_by_xla():
  out = _apply_in_fresh_process({"cpu": {"JAX_PLATFORMS": "cpu"}}, start_jax=True)["cpu"]
  for mode, flags in out.items():
    defaults = xla_flags.DEFAULTS[xla_flags.MODES[mode]]
    assert xla_flags.option_names(flags) == set(defaults)
    assert all(f"--{name}={value}" in flags.split() for name, value in defaults.items())


def test_apply_after_jax_started_changes_nothing(monkeypatch):
  import jax
  jax.numpy.ones(1).block_until_ready()
  monkeypatch.setenv("XLA_FLAGS", "--x=1")
  assert xla_flags.apply("train") == {} and os.environ["XLA_FLAGS"] == "--x=1"
