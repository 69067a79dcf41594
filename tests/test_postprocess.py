"""Detection output: per-class greedy NMS against a plain numpy reference, ordering, thresholds,
dtypes and static shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_boxes
import np_reference
from ssd_jax import boxes as boxes_lib
from ssd_jax import postprocess


def reference_select(boxes, scores, score_threshold, nms_iou_threshold, pre_nms_top_k,
                     max_detections):
  """One image, written as Caffe's DetectionOutput reads: [(score, prior index, class)] kept,
  ranked by descending score, then class, then prior index (the documented tie rule)."""
  detections = []
  for c in range(1, scores.shape[1]):
    candidates = [p for p in range(len(boxes)) if scores[p, c] > score_threshold]
    candidates = sorted(candidates, key=lambda p: (-scores[p, c], p))[:pre_nms_top_k]
    kept = []
    for p in candidates:
      overlaps = np_reference.iou_matrix(boxes[[p]], boxes[kept]).reshape(-1) if kept else []
      if all(overlap <= nms_iou_threshold for overlap in overlaps):
        kept.append(p)
    detections += [(float(scores[p, c]), p, c) for p in kept]
  return sorted(detections, key=lambda d: (-d[0], d[2], d[1]))[:max_detections]


def as_rows(indices, scores, classes, valid):
  """One image of select's output -> [(score, prior index, class)] of the valid rows."""
  return [(float(s), int(i), int(c)) for i, s, c, v in zip(indices, scores, classes, valid) if v]


_jit_select = jax.jit(postprocess.select, static_argnames=("pre_nms_top_k", "max_detections"))


def clustered_boxes(rng, n):
  """[n, 4] boxes in a few clusters, so that NMS has plenty to suppress."""
  centres = random_boxes(rng, 6, min_size=0.2)[rng.integers(0, 6, n)]
  jitter = rng.normal(0, 0.03, size=(n, 4))
  boxes = np.clip(centres + jitter, 0, 1)
  return np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]),
                         np.maximum(boxes[:, :2], boxes[:, 2:])], 1).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_select_matches_numpy_greedy_nms_including_ties(seed):
  rng = np.random.default_rng(seed)
  batch, num_priors, num_classes = 2, 300, 4
  boxes = np.stack([clustered_boxes(rng, num_priors) for _ in range(batch)])
  # Scores on a coarse grid: many exact ties, within and across classes; some under threshold.
  scores = rng.integers(0, 12, size=(batch, num_priors, num_classes)).astype(np.float32) / 16
  settings = dict(score_threshold=0.125, nms_iou_threshold=0.45, pre_nms_top_k=50,
                  max_detections=60)
  out = _jit_select(boxes, scores, **settings)
  for image in range(batch):
    expected = reference_select(boxes[image], scores[image], **settings)
    got = as_rows(*(np.asarray(x[image]) for x in out))
    assert got == expected
  assert np.asarray(out[3]).sum() > 0


def test_detect_matches_reference_end_to_end():
  rng = np.random.default_rng(3)
  num_priors, num_classes = 400, 3
  priors = np.asarray(boxes_lib.xyxy_to_cxcywh(jnp.asarray(clustered_boxes(rng, num_priors))))
  loc = rng.normal(0, 0.5, size=(1, num_priors, 4)).astype(np.float32)
  logits = rng.normal(0, 2, size=(1, num_priors, num_classes)).astype(np.float32)
  boxes, scores, classes, valid = postprocess.detect(loc, logits, priors, pre_nms_top_k=100,
                                                     max_detections=150)
  decoded = np.clip(np.asarray(boxes_lib.decode(jnp.asarray(loc[0]), jnp.asarray(priors))), 0, 1)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits[0]), axis=-1))
  expected = reference_select(decoded, probs, 0.01, 0.45, 100, 150)
  assert int(valid.sum()) == len(expected)
  np.testing.assert_allclose(scores[0, :len(expected)], [d[0] for d in expected], rtol=1e-6)
  np.testing.assert_array_equal(classes[0, :len(expected)], [d[2] for d in expected])
  np.testing.assert_allclose(boxes[0, :len(expected)], decoded[[d[1] for d in expected]],
                             atol=1e-6)
  assert np.all(np.diff(np.asarray(scores[0, :len(expected)])) <= 0)


def _logits(num_priors, num_classes, hot):
  """Logits where prior p is confidently of class hot[p] (0: background)."""
  logits = np.full((1, num_priors, num_classes), -10.0, np.float32)
  logits[0, np.arange(num_priors), hot] = 10.0
  return logits


def test_classes_never_suppress_each_other_and_duplicates_do():
  # Three identical priors and zero offsets: same box three times.
  priors = np.tile(np.array([[0.5, 0.5, 0.4, 0.4]], np.float32), (3, 1))
  logits = _logits(3, 3, hot=np.array([1, 2, 1]))
  logits[0, 0, 1] = 11.0  # prior 0 beats prior 2 in class 1
  boxes, scores, classes, valid = postprocess.detect(np.zeros((1, 3, 4), np.float32), logits,
                                                     priors, max_detections=5)
  assert valid[0].tolist() == [True, True, False, False, False]
  assert sorted(classes[0, :2].tolist()) == [1, 2]
  np.testing.assert_allclose(boxes[0, :2], [[0.3, 0.3, 0.7, 0.7]] * 2, atol=1e-6)
  assert classes[0, 2:].tolist() == [0, 0, 0] and scores[0, 2:].tolist() == [0, 0, 0]


def test_nms_threshold_is_strict():
  # Two boxes with IoU 0.6: both kept at a threshold equal to their IoU, one just below it.
  priors = np.array([[0.375, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]], np.float32)  # cxcywh
  a, b = boxes_lib.cxcywh_to_xyxy(jnp.asarray(priors))
  overlap = float(boxes_lib.iou(a[None], b[None])[0, 0])
  logits = _logits(2, 2, hot=np.array([1, 1]))
  loc = np.zeros((1, 2, 4), np.float32)
  kept_at = lambda t: int(postprocess.detect(loc, logits, priors, nms_iou_threshold=t)[3].sum())
  assert kept_at(overlap) == 2 and kept_at(overlap - 1e-3) == 1


def test_nothing_above_threshold_gives_no_valid_rows(ssd300_priors):
  num_priors = ssd300_priors.shape[0]
  logits = np.repeat(_logits(num_priors, 21, hot=np.zeros(num_priors, int)), 2, 0)  # background
  boxes, scores, classes, valid = postprocess.detect(
      np.zeros((2, num_priors, 4), np.float32), logits, ssd300_priors)
  assert not valid.any()
  assert not boxes.any() and not scores.any() and not classes.any()


def test_score_threshold_is_strict():
  priors = np.array([[0.5, 0.5, 0.2, 0.2]], np.float32)
  logits = np.zeros((1, 1, 2), np.float32)  # both classes at exactly 0.5
  loc = np.zeros((1, 1, 4), np.float32)
  assert not postprocess.detect(loc, logits, priors, score_threshold=0.5)[3].any()
  assert postprocess.detect(loc, logits, priors, score_threshold=0.49)[3][0, 0]


def test_boxes_are_clipped_to_the_image():
  priors = np.array([[0.05, 0.95, 0.3, 0.3]], np.float32)
  boxes, _, _, valid = postprocess.detect(np.zeros((1, 1, 4), np.float32),
                                          _logits(1, 2, np.array([1])), priors)
  assert valid[0, 0]
  np.testing.assert_allclose(boxes[0, 0], [0.0, 0.8, 0.2, 1.0], atol=1e-6)


def test_bfloat16_inputs_give_float32_outputs(ssd300_priors):
  rng = np.random.default_rng(0)
  num_priors = ssd300_priors.shape[0]
  loc = jnp.asarray(rng.normal(size=(2, num_priors, 4)), jnp.bfloat16)
  logits = jnp.asarray(rng.normal(size=(2, num_priors, 21)) * 3, jnp.bfloat16)
  low = postprocess.detect(loc, logits, ssd300_priors)
  high = postprocess.detect(loc.astype(jnp.float32), logits.astype(jnp.float32), ssd300_priors)
  assert low[0].dtype == jnp.float32 and low[1].dtype == jnp.float32
  np.testing.assert_array_equal(low[1], high[1])  # same values, computed in float32 both ways
  np.testing.assert_array_equal(low[2], high[2])


def test_shapes_are_static_and_jit_compiles_once(ssd300_config, ssd300_priors):
  rng = np.random.default_rng(1)
  num_priors = ssd300_priors.shape[0]
  traces = []

  @jax.jit
  def eval_step(loc, logits):
    traces.append(1)
    return postprocess.detect(loc, logits, ssd300_priors, **postprocess.detect_args(ssd300_config))

  for scale in (0.1, 5.0):  # from almost nothing to everything above threshold
    loc = rng.normal(size=(3, num_priors, 4)).astype(np.float32)
    logits = (rng.normal(size=(3, num_priors, 21)) * scale).astype(np.float32)
    boxes, scores, classes, valid = eval_step(loc, logits)
    assert boxes.shape == (3, 200, 4) and scores.shape == classes.shape == valid.shape == (3, 200)
    assert classes.dtype == jnp.int32 and valid.dtype == jnp.bool_
    assert np.all((classes[valid] >= 1) & (classes[valid] <= 20))
    assert np.all((boxes >= 0) & (boxes <= 1))
    assert np.all(np.diff(np.where(valid, scores, -1), axis=1) <= 0)  # sorted, valid rows first
  assert len(traces) == 1


def test_fewer_candidates_than_max_detections_are_padded():
  priors = np.array([[0.5, 0.5, 0.2, 0.2]], np.float32)
  out = postprocess.detect(np.zeros((2, 1, 4), np.float32), np.zeros((2, 1, 3), np.float32),
                           priors, max_detections=7)
  assert out[0].shape == (2, 7, 4) and out[3].sum(axis=1).tolist() == [2, 2]


def test_bad_shapes_are_refused():
  with pytest.raises(ValueError, match="priors"):
    postprocess.detect(np.zeros((1, 3, 4)), np.zeros((1, 3, 2)), np.zeros((4, 4)))
  with pytest.raises(ValueError, match="cls_logits"):
    postprocess.detect(np.zeros((1, 3, 4)), np.zeros((1, 2, 2)), np.zeros((3, 4)))
