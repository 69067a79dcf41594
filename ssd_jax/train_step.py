"""The train state and the pure, jit-compiled train step.

``train_step(state, batch) -> (state, metrics)``: the augmentation's pixel work of a batch the
input pipeline drew (``pixel_augment``; a batch of model input is taken as it is), forward pass,
matching/encoding of the padded
ground truth against the priors (vmapped, on the device), MultiBox loss, gradients and the optax
update. It is jitted once with the batch sharded on the mesh's ``data`` axis, the state
replicated and donated. It reads no ConfigDict: the few config values it needs come as one
frozen ``StepOptions``. ``make_step(config, mesh)`` builds all of it from a config, for the
training loop, the tests and the benchmarks alike; ``synthetic_batch`` is a learnable batch for
running the step without an input pipeline.
"""

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from ssd_jax import losses, matching, models, optimizer, parallel, pixel_augment
from ssd_jax import priors as priors_lib

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Bundle:
  """What a run builds once from its config, for the train step and the periodic evaluation."""
  mesh: Mesh
  graphdef: nnx.GraphDef  # the model's graph in training mode
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  priors: np.ndarray  # [P, 4] cxcywh


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: a pytree, so it can be jitted, sharded, donated and saved."""
  step: jax.Array  # int32 scalar: steps taken
  params: nnx.State  # the model's nnx.Param variables
  model_state: nnx.State  # every other variable (BatchNorm statistics)
  opt_state: optax.OptState


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation,
                       ) -> tuple[nnx.GraphDef, TrainState]:
  """Splits a model (in training mode) into its graph definition and a fresh train state."""
  model.train()
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                     opt_state=tx.init(params))
  return graphdef, state


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """The config values the step reads (``StepOptions.from_config``)."""
  iou_threshold: float  # config.matching.iou_threshold: a prior matches at IoU >= this
  variances: tuple[float, float]  # config.matching.variances: box encoding (centre, size)
  matching_rule: str  # config.matching.rule: one of matching.RULES
  neg_pos_ratio: float  # config.loss.neg_pos_ratio: hard negatives per positive
  alpha: float  # config.loss.alpha: weight of the localisation loss
  skip_nonfinite: bool  # config.train.skip_nonfinite: drop a non-finite update, keep going
  augment: pixel_augment.Options  # the augmentation's pixel work of a drawn batch

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "StepOptions":
    return cls(iou_threshold=float(config.matching.iou_threshold),
               variances=tuple(float(v) for v in config.matching.variances),
               matching_rule=str(config.matching.rule),
               neg_pos_ratio=float(config.loss.neg_pos_ratio), alpha=float(config.loss.alpha),
               skip_nonfinite=bool(config.train.skip_nonfinite),
               augment=pixel_augment.Options.from_config(config))


def _loss_fn(params: nnx.State, model_state: nnx.State, batch: Batch, graphdef: nnx.GraphDef,
             priors: np.ndarray, options: StepOptions):
  """Scalar loss and (metrics, updated model state) of one batch."""
  # copy=True: fresh Variables owned by this trace, so BatchNorm may update its statistics.
  model = nnx.merge(graphdef, params, model_state, copy=True)
  outputs = model(batch["image"])  # normalised by the input pipeline
  loc_targets, cls_targets = matching.match_batch(
      batch["boxes"], batch["labels"], batch["mask"], jnp.asarray(priors),
      options.iou_threshold, options.variances, options.matching_rule)
  loss, metrics = losses.multibox_loss(
      outputs.loc, outputs.logits, loc_targets, cls_targets, options.neg_pos_ratio, options.alpha)
  _, _, new_model_state = nnx.split(model, nnx.Param, ...)
  return loss, (metrics, new_model_state)


def _keep_if(finite: jax.Array, new: Any, old: Any) -> Any:
  """``new`` where the step was finite, else ``old`` (leaf by leaf)."""
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def train_step(state: TrainState, batch: Batch, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, schedule: optax.Schedule, priors: np.ndarray,
               options: StepOptions) -> tuple[TrainState, Metrics]:
  """One optimisation step on a global batch (padded boxes [B, G, 4] xyxy in [0, 1], labels
  [B, G], mask [B, G], and either the input pipeline's decoded images with their drawn
  augmentation, see ``pixel_augment``, or ``image`` [B, S, S, 3] model input); ``priors`` [P, 4]
  cxcywh.

  A non-finite loss or gradient is reported in ``metrics["finite"]``; with
  ``options.skip_nonfinite`` the update is dropped, otherwise the caller stops the run.
  """
  batch = {"image": pixel_augment.model_input(batch, options.augment),
           **{key: batch[key] for key in ("boxes", "labels", "mask")}}
  grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)
  (loss, (metrics, model_state)), grads = grad_fn(
      state.params, state.model_state, batch, graphdef, priors, options)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if options.skip_nonfinite:
    params, opt_state, model_state = _keep_if(
        finite, (params, opt_state, model_state), (state.params, state.opt_state, state.model_state))
  metrics = dict(metrics, grad_norm=grad_norm, param_norm=optax.tree.norm(params),
                 learning_rate=schedule(state.step), finite=finite)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            model_state=model_state)
  return new_state, metrics


StepFn = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]


def jit_train_step(mesh: Mesh, state: TrainState, **kwargs) -> StepFn:
  """``train_step`` jitted once: state replicated and donated, batch sharded on ``data``."""
  replicated = parallel.replicated(mesh)
  state_sharding = jax.tree.map(lambda _: replicated, state)
  return jax.jit(functools.partial(train_step, **kwargs),
                 in_shardings=(state_sharding, parallel.batch_sharded(mesh)),
                 out_shardings=(state_sharding, replicated), donate_argnums=0)


def make_step(config: ml_collections.ConfigDict, mesh: Mesh, model: nnx.Module | None = None,
              ) -> tuple[Bundle, TrainState, StepFn]:
  """(bundle, fresh state replicated on ``mesh``, the jitted step) of ``config``'s model,
  optimiser (``config.optimizer``), priors and step options.

  ``model`` defaults to ``config``'s model initialised with ``config.train.seed`` (the training
  loop passes its own, e.g. with ``init_from`` weights). Nothing compiles until the first call.
  """
  if model is None:
    model = models.create_model(config, nnx.Rngs(config.train.seed))
  tx, schedule = optimizer.create_optimizer(config)
  graphdef, state = create_train_state(model, tx)
  state = jax.device_put(state, parallel.replicated(mesh))
  bundle = Bundle(mesh, graphdef, tx, schedule, priors_lib.from_config(config))
  step = jit_train_step(mesh, state, graphdef=graphdef, tx=tx, schedule=schedule,
                        priors=bundle.priors, options=StepOptions.from_config(config))
  return bundle, state, step


def synthetic_batch(config: ml_collections.ConfigDict, seed: int = 0, drawn: bool = False,
                    ) -> dict[str, np.ndarray]:
  """A learnable global batch in the step's format, without the input pipeline: dark noise images
  [B, S, S, 3] float32 with two bright squares each (class 1 in the red channel, class 2 in the
  green), their boxes [B, G, 4] xyxy in [0, 1], labels [B, G] and mask [B, G]
  (B = config.data.batch_size, S = config.model.image_size, G = config.data.max_boxes >= 2).
  The loss on it must fall within a few dozen steps; a function of ``seed`` only.

  ``drawn``: in the input pipeline's training format instead (``pixel_augment``), so that the step
  does the augmentation's pixel work: the scenes as uint8 images of min(S, M) pixels on the
  M x M canvas (M = config.data.max_image_size), whole-image windows, resize methods and
  photometric values drawn at random within the Caffe recipe's ranges, channels in order.
  """
  rng = np.random.default_rng(seed)
  batch = config.data.batch_size
  size = min(config.model.image_size, config.data.max_image_size) if drawn else (
      config.model.image_size)
  images = rng.uniform(0, 0.2, (batch, size, size, 3)).astype(np.float32)
  boxes = np.zeros((batch, config.data.max_boxes, 4), np.float32)
  labels = np.zeros((batch, config.data.max_boxes), np.int32)
  mask = np.zeros((batch, config.data.max_boxes), bool)
  for b in range(batch):
    for g in range(2):
      x0, y0 = rng.uniform(0, 0.5, 2)
      side = rng.uniform(0.3, 0.5)
      boxes[b, g] = [x0, y0, x0 + side, y0 + side]
      labels[b, g], mask[b, g] = g + 1, True
      px = (boxes[b, g] * size).astype(int)
      images[b, px[1]:px[3], px[0]:px[2], g] = 1.0
  targets = {"boxes": boxes, "labels": labels, "mask": mask}
  if not drawn:
    return {"image": images, **targets}
  canvas = np.zeros((batch, config.data.max_image_size, config.data.max_image_size, 3), np.uint8)
  canvas[:, :size, :size] = np.round(images * 255)
  photometric = np.stack([rng.uniform(-32, 32, batch), rng.uniform(0.5, 1.5, batch),
                          rng.integers(0, 2, batch), rng.uniform(0.5, 1.5, batch),
                          rng.uniform(-0.1, 0.1, batch)], axis=1).astype(np.float32)
  return {"image": canvas, "image_size": np.full((batch, 2), size, np.int32),
          "window": np.tile(np.float32([0, 0, 1, 1]), (batch, 1)),
          "method": rng.integers(0, len(config.augment.resize_methods), batch).astype(np.int32),
          "photometric": photometric, "channel_order": np.tile(np.int32([0, 1, 2]), (batch, 1)),
          **targets}
