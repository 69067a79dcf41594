"""MultiBox loss and the exact top-k used for hard-negative mining, against sort-based references."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import np_reference as ref
from ssd_jax import losses


def sort_based_top_k(values, k):
  """Reference selection: a stable descending sort per row, first k, ties to lower indices."""
  mask = np.zeros(values.shape, bool)
  for row, count in enumerate(k):
    mask[row, np.argsort(-values[row], kind="stable")[:count]] = True
  return mask


def test_top_k_equals_sort_on_1000_rows_with_heavy_ties():
  rng = np.random.default_rng(0)
  rows, width = 1000, 97
  values = rng.integers(0, 4, size=(rows, width)).astype(np.float32) * 0.25  # 4 distinct values
  values[rng.random((rows, width)) < 0.2] = -np.inf  # excluded entries (positives)
  values[:100] = rng.normal(size=(100, width))  # some rows without ties
  values[100:110] = -0.0  # signed zeros must tie with each other
  values[110:120, ::2] = 0.0
  k = rng.integers(0, width + 1, size=rows)
  k[:5] = 0
  k[5:10] = width
  got = np.asarray(jax.jit(losses.top_k_mask)(values, k))
  np.testing.assert_array_equal(got, sort_based_top_k(values, k))
  np.testing.assert_array_equal(got.sum(axis=1), k)


def test_top_k_handles_extreme_values():
  values = np.array([[np.inf, -np.inf, 3e38, -3e38, 1e-45, -1e-45, 0.0]], np.float32)
  for k in range(8):
    np.testing.assert_array_equal(losses.top_k_mask(values, np.array([k])),
                                  sort_based_top_k(values, [k]))


def random_batch(rng, batch=4, priors=300, classes=6, positive_rate=0.05, quantise=False):
  loc_pred = rng.normal(size=(batch, priors, 4)).astype(np.float32)
  logits = rng.normal(size=(batch, priors, classes)).astype(np.float32)
  if quantise:  # many exactly tied background losses
    logits = np.round(logits)
  loc_targets = rng.normal(size=(batch, priors, 4)).astype(np.float32)
  cls_targets = np.where(rng.random((batch, priors)) < positive_rate,
                         rng.integers(1, classes, size=(batch, priors)), 0).astype(np.int32)
  return loc_pred, logits, loc_targets, cls_targets


@pytest.mark.parametrize("quantise", [False, True])
@pytest.mark.parametrize("positive_rate", [0.02, 0.3, 0.9])
def test_loss_equals_reference(quantise, positive_rate):
  rng = np.random.default_rng(int(positive_rate * 100) + quantise)
  batch = random_batch(rng, positive_rate=positive_rate, quantise=quantise)
  batch[3][1] = 0  # one image without any positive contributes no negatives either
  loss, metrics = jax.jit(losses.multibox_loss)(*batch)
  ref_loss, ref_loc, ref_conf, ref_negatives = ref.multibox_loss(*batch)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["loc_loss"], ref_loc, rtol=1e-5)
  np.testing.assert_allclose(metrics["conf_loss"], ref_conf, rtol=1e-5)
  assert int(metrics["num_pos"]) == int((batch[3] > 0).sum())
  assert int(metrics["num_neg"]) == int(ref_negatives.sum())


def test_mined_negative_count_is_k_per_image():
  rng = np.random.default_rng(5)
  loc_pred, logits, loc_targets, cls_targets = random_batch(rng, priors=200, positive_rate=0.1)
  cls_targets[1] = 0
  cls_targets[2] = np.arange(200) < 190  # 190 positives, only 10 negatives: k = 10, not 570
  _, metrics = losses.multibox_loss(loc_pred, logits, loc_targets, cls_targets, neg_pos_ratio=3)
  num_pos = (cls_targets > 0).sum(axis=1)
  expected = np.minimum(3 * num_pos, 200 - num_pos)
  assert expected[1] == 0 and expected[2] == 10
  assert int(metrics["num_neg"]) == expected.sum()


def test_no_positives_gives_zero_loss_and_finite_gradients():
  rng = np.random.default_rng(1)
  loc_pred, logits, loc_targets, _ = random_batch(rng)
  cls_targets = np.zeros(loc_pred.shape[:2], np.int32)
  loss_fn = lambda lp, lg: losses.multibox_loss(lp, lg, loc_targets, cls_targets)[0]
  loss, grads = jax.value_and_grad(loss_fn, argnums=(0, 1))(loc_pred, logits)
  assert float(loss) == 0.0
  assert all(np.all(np.isfinite(g)) and not np.any(g) for g in grads)


def test_perfect_localisation_gives_zero_loc_loss():
  rng = np.random.default_rng(2)
  loc_pred, logits, _, cls_targets = random_batch(rng)
  _, metrics = losses.multibox_loss(loc_pred, logits, loc_pred, cls_targets)
  assert float(metrics["loc_loss"]) == 0.0 and float(metrics["conf_loss"]) > 0


def test_gradients_are_finite_and_reach_every_positive():
  rng = np.random.default_rng(3)
  loc_pred, logits, loc_targets, cls_targets = random_batch(rng)
  grads = jax.grad(lambda lp, lg: losses.multibox_loss(lp, lg, loc_targets, cls_targets)[0],
                   argnums=(0, 1))(loc_pred, logits)
  positive = cls_targets > 0
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert np.all(np.abs(grads[0][positive]).sum(-1) > 0)
  assert np.all(np.abs(grads[1][positive]).sum(-1) > 0)
  assert not np.any(grads[0][~positive])  # negatives have no localisation target


def test_bfloat16_logits_give_a_float32_loss():
  rng = np.random.default_rng(4)
  loc_pred, logits, loc_targets, cls_targets = random_batch(rng)
  low = (jnp.asarray(loc_pred, jnp.bfloat16), jnp.asarray(logits, jnp.bfloat16))
  loss, _ = jax.jit(losses.multibox_loss)(*low, loc_targets, cls_targets)
  expected = ref.multibox_loss(*(np.asarray(x, np.float32) for x in low), loc_targets, cls_targets)[0]
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_alpha_weights_the_localisation_part():
  batch = random_batch(np.random.default_rng(6))
  _, metrics = losses.multibox_loss(*batch, alpha=2.5)
  np.testing.assert_allclose(metrics["loss"], metrics["conf_loss"] + 2.5 * metrics["loc_loss"],
                             rtol=1e-6)


def test_bad_inputs_raise_at_trace_time():
  loc_pred, logits, loc_targets, cls_targets = random_batch(np.random.default_rng(0))
  with pytest.raises(AssertionError):
    losses.multibox_loss(loc_pred[:, :-1], logits, loc_targets, cls_targets)
  with pytest.raises(AssertionError):
    losses.multibox_loss(loc_pred, logits, loc_targets, cls_targets.astype(np.float32))
  with pytest.raises(AssertionError):
    losses.multibox_loss(loc_pred[..., :3], logits, loc_targets[..., :3], cls_targets)


def test_readme_snippet_runs_and_gives_the_papers_loss(monkeypatch, capsys):
  """README's "The detection math" block runs as written (from the checkout); with zero
  predictions its loss is, by hand: every selected prior's cross entropy is ln C (positives and
  exactly min(3 * positives, negatives) mined negatives), plus the smooth L1 of the positives'
  targets, over the positives."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  readme = open(os.path.join(repo, "README.md")).read()
  start = readme.index("## The detection math")
  (block,) = re.findall(r"```python\n(.*?)```", readme[start:readme.index("\n## ", start + 1)],
                        re.DOTALL)
  monkeypatch.chdir(repo)
  scope = {}
  exec(block, scope)  # pylint: disable=exec-used
  cls_t, loc_t = np.asarray(scope["cls_t"]), np.asarray(scope["loc_t"], np.float64)
  positives = int((cls_t > 0).sum())
  assert positives > 0 and set(np.unique(cls_t)) == {0, 12}
  negatives = min(3 * positives, cls_t.size - positives)
  conf = (positives + negatives) * np.log(scope["config"].model.num_classes)
  offsets = np.abs(loc_t[cls_t > 0])
  loc = np.where(offsets < 1, 0.5 * offsets ** 2, offsets - 0.5).sum()
  assert float(scope["loss"]) == pytest.approx((conf + loc) / positives, rel=1e-5)
  assert f"{positives} matched priors" in capsys.readouterr().out
