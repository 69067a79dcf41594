"""The command line's errors: one line on stderr, exit status 2, no traceback."""

import os
import subprocess
import sys

import pytest

from conftest import CONFIG_DIR

REPO = os.path.dirname(CONFIG_DIR)
TINY = f"--config={os.path.join(CONFIG_DIR, 'quickstart.py')}:tiny"


def _run(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "ssd_jax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


# (flags, fragments the error line must contain, whether it comes before JAX and TF start).
_CASES = {
    "missing config file": (["--config=configs/nope.py"],
                            ["--config=configs/nope.py", "no config file", "quickstart.py"], True),
    "unknown variant": (["--config=configs/quickstart.py:tinyy"],
                        ["--config=configs/quickstart.py:tinyy", "unknown variant 'tinyy'",
                         "'tiny'"], True),
    "misspelled field": ([TINY, "--config.optimizer.learnin_rate=1e-3"],
                         ["--config.optimizer.learnin_rate=1e-3", "no field 'learnin_rate'",
                          "closest: learning_rate"], True),
    "misspelled group": ([TINY, "--config.optimiser.learning_rate=1e-3"],
                         ["config has no field 'optimiser'", "closest: optimizer"], True),
    "value of the wrong type": ([TINY, "--config.train.num_steps=abc"],
                                ["--config.train.num_steps=abc", "invalid literal"], True),
    "num_classes mismatch": ([TINY, "--config.data.class_names=redbox,bluebox",
                              "--config.model.num_classes=5"],
                             ["config.model.num_classes=5", "('redbox', 'bluebox')",
                              "--config.model.num_classes=3"], True),
    "bad value": ([TINY, "--config.model.dtype=float64"],
                  ["config.model.dtype='float64'", "expected"], True),
    # eval.metric is read only at the first evaluation: validation stops it before any training.
    "misspelled choice": ([TINY, "--config.eval.metric=voc12"],
                          ["config.eval.metric='voc12': expected one of ('voc07', 'voc', 'coco')"],
                          True),
    "non-positive batch": ([TINY, "--config.data.batch_size=-8"],
                           ["config.data.batch_size=-8: expected a positive integer"], True),
    "predict without images": ([TINY, "--mode=predict"],
                               ["--mode=predict needs --images=PATTERN and --output=DIR"], True),
    "export to a file": ([TINY, "--mode=export", "--output=README.md"],
                         ["--output=README.md:", "README.md is a file; expected a folder"], True),
    "predict below a file": ([TINY, "--mode=predict", "--images=README.md",
                              "--output=README.md/pictures"],
                             ["--output=README.md/pictures:", "README.md is a file; expected a "
                              "folder"], True),
    "missing dataset": ([TINY, "--config.data.source=voc_folder", "--config.data.data_dir={tmp}"],
                        ["VOC-format folder not found", "shapes/ImageSets/Main/train.txt"], False),
    "missing checkpoint": ([TINY, "--config.data.data_dir={tmp}", "--mode=eval"],
                           ["no checkpoint in", "train first"], False),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_errors_are_one_line_with_exit_status_2(case, tmp_path):
  args, fragments, early = _CASES[case]
  result = _run(*(a.format(tmp=tmp_path) for a in args), f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1
  for fragment in fragments:
    assert fragment in lines[-1], (fragment, lines[-1])
  if early:  # stopped before JAX, TF or any log line, and before the workdir is made
    assert len(lines) == 1, result.stderr
    assert not (tmp_path / "run").exists()
  assert result.stdout == ""


def test_native_notices_are_dropped_and_other_stderr_lines_kept(capfd):
  from ssd_jax import console
  with console.native_notices_dropped():
    os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see...\n"
                b"something else on stderr\n")
  captured = capfd.readouterr().err
  assert "oneDNN" not in captured and "something else on stderr" in captured
