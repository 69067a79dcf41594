"""Optimiser and learning-rate schedule of an experiment, built from ``config.optimizer``.

The reference recipe (Caffe ``ssd_pascal.py``): SGD with momentum 0.9, weight decay 5e-4 on
weights only (biases have ``decay_mult: 0``) and biases at twice the learning rate
(``lr_mult: 2``), lr 1e-3 for batch 32, x0.1 at 80k and 100k iterations.
"""

import logging

import jax
import jax.numpy as jnp
import ml_collections
import optax


def scaled_learning_rate(config: ml_collections.ConfigDict) -> float:
  """The base learning rate scaled linearly from the reference batch to ``config.data.batch_size``."""
  opt = config.optimizer
  return opt.learning_rate * config.data.batch_size / opt.reference_batch_size


OPTIMIZERS = ("sgd",)  # config.optimizer.name
SCHEDULES = ("piecewise", "cosine")  # config.optimizer.schedule


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from ``warmup_init_factor`` x lr, then ``config.optimizer.schedule``:
  "piecewise" (x ``decay_factor`` at each of ``decay_steps``, as Caffe's multistep) or "cosine"
  (to 0 at ``config.train.num_steps``, as torchvision's SSDLite recipe)."""
  opt = config.optimizer
  peak = scaled_learning_rate(config)
  if opt.schedule == "piecewise":
    decay = optax.piecewise_constant_schedule(
        peak, {int(step): opt.decay_factor for step in opt.decay_steps})
  elif opt.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, config.train.num_steps)
  else:
    raise ValueError(f"config.optimizer.schedule={opt.schedule!r}: expected one of {SCHEDULES}")
  if opt.warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(peak * opt.warmup_init_factor, peak, opt.warmup_steps)
  return lambda step: jnp.where(step < opt.warmup_steps, warmup(step), decay(step))


def _param_name(path) -> str:
  """A parameter's own name ('bias', 'kernel', 'scale') from its tree path.

  In an nnx.State the path ends with the Variable's '.value' attribute: the name is the last
  dictionary key before it.
  """
  keys = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)]
  return str(keys[-1])


def _labels(params, no_decay_names: tuple[str, ...], bias_names: tuple[str, ...]):
  """A tree of 'bias' / 'no_decay' / 'decay' labels with the structure of params."""
  def label(path, _):
    name = _param_name(path)
    if name in bias_names:
      return "bias"
    return "no_decay" if name in no_decay_names else "decay"
  return jax.tree_util.tree_map_with_path(label, params)


def create_optimizer(config: ml_collections.ConfigDict,
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimiser, schedule) for ``config.optimizer``; parameters are an nnx.State of nnx.Params.

  Weight decay is L2 added to the gradient (as Caffe does), skipped for parameters whose name is
  in ``no_decay_names`` or ``bias_names``; ``bias_names`` parameters also get
  ``bias_lr_multiplier`` x the learning rate.
  """
  opt = config.optimizer
  if opt.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name={opt.name!r}: expected one of {OPTIMIZERS}")
  schedule = learning_rate_schedule(config)
  logging.info("learning rate %.3g for batch %d (reference %.3g at batch %d, scaled linearly)",
               scaled_learning_rate(config), config.data.batch_size, opt.learning_rate,
               opt.reference_batch_size)

  def sgd(lr_multiplier: float, weight_decay: float) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(lambda step: lr_multiplier * schedule(step), momentum=opt.momentum))

  label_fn = lambda params: _labels(params, tuple(opt.no_decay_names), tuple(opt.bias_names))
  tx = optax.multi_transform(
      {"decay": sgd(1.0, opt.weight_decay), "no_decay": sgd(1.0, 0.0),
       "bias": sgd(opt.bias_lr_multiplier, 0.0)}, label_fn)
  if opt.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, schedule
