"""Optimiser recipe: learning-rate scaling and schedule, bias and weight-decay rules."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssd_jax import optimizer


def test_learning_rate_scales_linearly_with_batch(ssd300_config):
  config = ssd300_config.copy_and_resolve_references()
  config.data.batch_size = 8
  assert optimizer.scaled_learning_rate(config) == pytest.approx(1e-3 * 8 / 32)


def test_schedule_warmup_then_decay_steps(ssd300_config):
  schedule = optimizer.learning_rate_schedule(ssd300_config)
  np.testing.assert_allclose(
      [schedule(s) for s in (0, 500, 1000, 79_999, 80_000, 99_999, 100_000, 119_999)],
      [1e-3 / 3, 1e-3 * (1 / 3 + 2 / 3 * 0.5), 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-5)


class _Tiny(nnx.Module):
  def __init__(self):
    self.conv = nnx.Conv(1, 1, (1, 1), rngs=nnx.Rngs(0))
    self.conv.kernel[...] = jnp.ones((1, 1, 1, 1))
    self.conv.bias[...] = jnp.ones((1,))


def test_bias_gets_double_lr_and_no_decay_weights_get_l2(ssd300_config):
  config = ssd300_config.copy_and_resolve_references()
  config.optimizer.warmup_steps = 0
  config.optimizer.momentum = 0.0
  tx, _ = optimizer.create_optimizer(config)
  params = nnx.state(_Tiny(), nnx.Param)
  grads = jax_zeros_like(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  flat = _flat(updates)
  # With zero gradients only weight decay moves a parameter: -lr * wd * w for kernels, 0 for biases.
  assert flat["conv/kernel"] == pytest.approx(-1e-3 * 5e-4)
  assert flat["conv/bias"] == 0.0
  grads = jax_ones_like(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  flat = _flat(updates)
  assert flat["conv/bias"] == pytest.approx(-2e-3)
  assert flat["conv/kernel"] == pytest.approx(-1e-3 * (1 + 5e-4))


def _flat(state):
  """{"conv/kernel": first value, ...} of an nnx.State of updates."""
  return {"/".join(str(k) for k in path): float(np.ravel(v[...])[0])
          for path, v in nnx.to_flat_state(state)}


def jax_zeros_like(tree):
  return optax.tree_utils.tree_zeros_like(tree)


def jax_ones_like(tree):
  return optax.tree_utils.tree_full_like(tree, 1.0)


def test_unknown_optimizer_is_named(ssd300_config):
  config = ssd300_config.copy_and_resolve_references()
  config.optimizer.name = "adamw"
  with pytest.raises(ValueError, match="config.optimizer.name"):
    optimizer.create_optimizer(config)


def test_cosine_schedule_ends_at_zero(ssd300_config):
  config = ssd300_config.copy_and_resolve_references()
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 0
  schedule = optimizer.learning_rate_schedule(config)
  total = config.train.num_steps
  np.testing.assert_allclose([schedule(0), schedule(total // 2), schedule(total)],
                             [1e-3, 0.5e-3, 0.0], atol=1e-9)
