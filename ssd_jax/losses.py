"""The MultiBox loss (SSD paper, eq. 1-3) with hard-negative mining by an exact top-k.

L = (L_conf + alpha * L_loc) / N, N = positives in the whole batch; L = 0 when N = 0.
L_loc: smooth L1 over positives. L_conf: softmax cross entropy over the positives and, per image,
exactly k = min(neg_pos_ratio * num_pos, num_neg) negatives with the largest background loss
(ties broken by the lower prior index).

The k-largest selection avoids the usual argsort-of-argsort (two O(P log P) sorts per row): a
bisection over the order-preserving integer keys of the float32 losses finds each row's k-th
largest value in 32 vectorised counting passes, and a cumulative sum over the entries equal to it
picks exactly the lowest-index ties needed to reach k.
"""

import chex
import jax
import jax.numpy as jnp
import optax

_KEY_BITS = 32


def _ordered_keys(values: jnp.ndarray) -> jnp.ndarray:
  """float32 [...] -> uint32 [...] keys with the same order (IEEE-754 bit trick; -inf lowest)."""
  bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.uint32)
  negative = (bits >> 31) == 1
  # Negative floats: flip all bits (larger magnitude -> smaller key); positive: set the sign bit.
  return jnp.where(negative, ~bits, bits | jnp.uint32(1 << 31))


def _kth_largest_key(keys: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
  """Per row of keys [R, P] (uint32), the largest t with count(keys >= t) >= k[R]; [R] uint32."""
  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2 + (lo < hi).astype(jnp.uint32)  # upper middle; never overflows
    enough = jnp.sum(keys >= mid[:, None], axis=-1) >= k
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - 1)
  rows = keys.shape[0]
  lo = jnp.zeros(rows, jnp.uint32)  # count(keys >= 0) = P >= k always
  hi = jnp.full(rows, jnp.iinfo(jnp.uint32).max, jnp.uint32)
  lo, _ = jax.lax.fori_loop(0, _KEY_BITS, halve, (lo, hi))
  return lo


def top_k_mask(values: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
  """Marks exactly k[r] largest entries of each row of values [R, P]; ties go to lower indices.

  Args:
    values: [R, P] float; entries that must never be chosen should be -inf.
    k: [R] int, 0 <= k <= P.

  Returns:
    [R, P] bool mask with k[r] True entries in row r.
  """
  chex.assert_rank([values, k], [2, 1])
  keys = _ordered_keys(values)  # [R, P]
  kth = _kth_largest_key(keys, k)[:, None]  # [R, 1]
  above = keys > kth
  ties = keys == kth
  still_needed = k[:, None] - jnp.sum(above, axis=-1, keepdims=True)  # [R, 1]
  tie_rank = jnp.cumsum(ties, axis=-1)  # 1-based position among the ties
  return above | (ties & (tie_rank <= still_needed))


def multibox_loss(loc_pred: jnp.ndarray, cls_logits: jnp.ndarray, loc_targets: jnp.ndarray,
                  cls_targets: jnp.ndarray, neg_pos_ratio: float = 3, alpha: float = 1.0,
                  ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """SSD's MultiBox loss for a batch; computed in float32 whatever the input dtype.

  Args:
    loc_pred: [B, P, 4] predicted offsets.
    cls_logits: [B, P, C] class logits, class 0 = background.
    loc_targets: [B, P, 4] encoded targets (read only at positives).
    cls_targets: [B, P] int, 0 = background.
    neg_pos_ratio: at most this many mined negatives per positive, per image.
    alpha: weight of the localisation loss.

  Returns:
    (loss, metrics): scalar loss; metrics "loss", "loc_loss", "conf_loss" (each summed over the
    batch and divided by N), "num_pos" and "num_neg" (batch totals).
  """
  chex.assert_rank([loc_pred, cls_logits, loc_targets, cls_targets], [3, 3, 3, 2])
  chex.assert_equal_shape([loc_pred, loc_targets])
  chex.assert_equal_shape_prefix([loc_pred, cls_logits, cls_targets], 2)
  chex.assert_axis_dimension(loc_pred, 2, 4)
  chex.assert_type(cls_targets, int)
  logits = cls_logits.astype(jnp.float32)
  positive = cls_targets > 0  # [B, P]
  num_pos = jnp.sum(positive, axis=-1)  # [B]

  smooth_l1 = optax.huber_loss(loc_pred.astype(jnp.float32), loc_targets.astype(jnp.float32),
                               delta=1.0).sum(axis=-1)  # [B, P]
  loc_loss = jnp.sum(jnp.where(positive, smooth_l1, 0.0))

  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, cls_targets)  # [B, P]
  # For negatives, cls_targets is 0, so cross_entropy is already the background loss to mine.
  mining_loss = jnp.where(positive, -jnp.inf, cross_entropy)
  num_neg = jnp.minimum(jnp.floor(neg_pos_ratio * num_pos).astype(jnp.int32),
                        positive.shape[-1] - num_pos)  # [B]
  negative = top_k_mask(jax.lax.stop_gradient(mining_loss), num_neg)
  conf_loss = jnp.sum(jnp.where(positive | negative, cross_entropy, 0.0))

  total_pos = jnp.sum(num_pos)
  normaliser = jnp.maximum(total_pos, 1).astype(jnp.float32)  # every part is 0 when N = 0
  metrics = {
      "loss": (conf_loss + alpha * loc_loss) / normaliser,
      "loc_loss": loc_loss / normaliser,
      "conf_loss": conf_loss / normaliser,
      "num_pos": total_pos,
      "num_neg": jnp.sum(num_neg),
  }
  return metrics["loss"], metrics
