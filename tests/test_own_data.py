"""README's "Your own data", followed verbatim on a VOC folder and a COCO json this test writes."""

import io
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

import test_data_helpers as helpers
from conftest import CONFIG_DIR

REPO = os.path.dirname(CONFIG_DIR)
NAMES = ("redbox", "bluebox")
COLOURS = ((220, 30, 30), (30, 30, 220))


def readme_commands() -> list[str]:
  """The ``python -m ssd_jax.main`` lines of README.md's "Your own data" section, in order."""
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  section = text.split("\n## Your own data\n", 1)[1].split("\n## ", 1)[0]
  return [line.strip() for line in section.splitlines()
          if line.startswith("    python -m ssd_jax.main ")]


def _picture(seed: int) -> tuple[bytes, list[tuple[str, tuple[int, int, int, int]]]]:
  """A 96 x 72 JPEG with one red and one blue box at random places, and their pixel boxes."""
  rng = np.random.default_rng(seed)
  image = Image.new("RGB", (96, 72), (200, 200, 190))
  canvas, objects = ImageDraw.Draw(image), []
  for name, colour in zip(NAMES, COLOURS):
    w, h = rng.integers(20, 40, 2)
    x0, y0 = rng.integers(0, 96 - w), rng.integers(0, 72 - h)
    canvas.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
    objects.append((name, (int(x0), int(y0), int(x0 + w), int(y0 + h))))
  buffer = io.BytesIO()
  image.save(buffer, "JPEG", quality=95)
  return buffer.getvalue(), objects


def _write_voc(root: str) -> None:
  images = {}
  for i in range(12):
    encoded, objects = _picture(i)
    images[f"{i:04d}"] = (encoded, helpers.voc_xml([(n, b, False) for n, b in objects], 96, 72))
  helpers.write_voc(root, images, {"train": [f"{i:04d}" for i in range(8)],
                                   "test": [f"{i:04d}" for i in range(8, 12)]})


def _write_coco(root: str) -> None:
  categories = [{"id": 5, "name": "redbox"}, {"id": 9, "name": "bluebox"}]
  for split, numbers in (("train", range(8)), ("val", range(8, 12))):
    images, annotations = {}, []
    for i in numbers:
      encoded, objects = _picture(100 + i)
      images[i] = (f"{i:04d}.jpg", encoded)
      annotations += [{"image_id": i, "category_id": 5 if name == "redbox" else 9,
                       "bbox": [x0, y0, x1 - x0, y1 - y0]} for name, (x0, y0, x1, y1) in objects]
    helpers.write_coco(os.path.join(root, "annotations", f"{split}.json"),
                       os.path.join(root, "images"), images, annotations, categories)
  for name in ("train", "val"):  # write_coco assumes 80 x 60 images; these are 96 x 72
    path = os.path.join(root, "annotations", f"{name}.json")
    with open(path) as f:
      content = json.load(f)
    for image in content["images"]:
      image.update(width=96, height=72)
    with open(path, "w") as f:
      json.dump(content, f)


def test_the_readme_gives_a_check_and_an_ssd300_command_per_format():
  check_voc, ssd300_voc, check_coco, ssd300_coco = readme_commands()
  for check, full in ((check_voc, ssd300_voc), (check_coco, ssd300_coco)):
    differ = set(shlex.split(check)) ^ set(shlex.split(full))
    assert {arg.split("=")[0] for arg in differ} == {"--config", "--workdir",
                                                    "--config.train.init_from"}, differ
    assert "--config=configs/ssd300.py" in full


@pytest.mark.slow
@pytest.mark.parametrize("index, write", [(0, _write_voc), (2, _write_coco)])
def test_following_the_readme_trains_and_evaluates(index, write, tmp_path):
  command = readme_commands()[index]
  args = shlex.split(command)
  data_dir = [a.split("=", 1)[1] for a in args if a.startswith("--config.data.data_dir=")][0]
  folder = os.path.join(tmp_path, data_dir)
  write(os.path.join(folder, "boxes") if "voc_folder" in command else folder)
  os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
  result = subprocess.run([sys.executable if a == "python" else a for a in args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  log = result.stderr
  assert "3 classes (2 + background)" in log or "3 classes (the dataset's names" in log, log
  assert "Traceback" not in log and "WARNING" not in log, log
  workdir = [a.split("=", 1)[1] for a in args if a.startswith("--workdir=")][0]
  metrics = json.load(open(os.path.join(tmp_path, workdir, "eval", "step_8", "metrics.json")))
  assert metrics["images"] == 4
  resolved = json.load(open(os.path.join(tmp_path, workdir, "config.json")))
  assert resolved["model"]["num_classes"] == 3
