"""The prepared accelerator benchmark runs end to end in its shrunk CPU form (`--small`)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_small_accelerator_benchmark_records_every_figure(tmp_path):
  env = dict(os.environ, SSD_JAX_BENCH_INSTALL="0", PYTHON=sys.executable, PYTHONPATH=REPO)
  result = subprocess.run(["bash", os.path.join(REPO, "experiments", "bench_accelerator.sh"),
                           "--small", f"--output={tmp_path}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert results["small"] and results["skipped"] == []
  for model in ("SSD300-VGG16", "SSD300-ResNet34"):
    assert results[f"{model} train bfloat16"]["batch"] == 2
    assert results[f"{model} train bfloat16"]["images_per_second"] > 0
    for batch in (1, 2):
      assert results[f"{model} forward bfloat16 batch {batch}"]["images_per_second"] > 0
  loop = results["quickstart loop vs bare step"]
  assert loop["loop_images_per_second"] > 0 and loop["bare_images_per_second"] > 0
  assert len(loop["save_block_seconds"]) == 4  # steps 2, 4, 6 and the final 8
  assert results["export"]["ran_on"] == ["cpu"] and "cuda" in results["export"]["exported_for"]
  assert results["export"]["boxes_shape"][0] == 2
