"""A trained detector for evaluation and prediction: restore a checkpoint, run model + NMS in one jit.

``Detector.restore(config, workdir, step)`` loads the model's variables (parameters and BatchNorm
statistics) of a training checkpoint, with the model registry and ``checkpoint`` alone (no
optimiser is built); ``detector(images)`` maps normalised images [B, S, S, 3] to static-shape
detections on the device: boxes [B, K, 4] xyxy in [0, 1], scores [B, K], classes [B, K] int32 in
1..C-1 and valid [B, K].
"""

import copy
import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from ssd_jax import checkpoint, models, parallel, postprocess, priors

Detections = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def detect_images(params: nnx.State, model_state: nnx.State, images: jax.Array, *,
                  graphdef: nnx.GraphDef, prior_boxes: np.ndarray,
                  config: ml_collections.ConfigDict) -> Detections:
  """Model (in eval mode) then batched per-class NMS; a pure function for jax.jit."""
  outputs = nnx.merge(graphdef, params, model_state)(images)
  return postprocess.detect(outputs.loc, outputs.logits, jnp.asarray(prior_boxes),
                            **postprocess.detect_args(config))


@dataclasses.dataclass
class Detector:
  """The eval-mode model of ``config`` with its variables, and one jitted detect function; images
  are batched over ``mesh`` (``parallel.global_batch``)."""
  config: ml_collections.ConfigDict
  params: nnx.State
  model_state: nnx.State
  step: int
  graphdef: nnx.GraphDef
  mesh: Mesh

  def __post_init__(self):
    self._detect = jax.jit(functools.partial(
        detect_images, graphdef=self.graphdef, prior_boxes=priors.from_config(self.config),
        config=self.config))

  def __call__(self, images: np.ndarray) -> Detections:
    return self._detect(self.params, self.model_state, images)

  def with_state(self, state) -> "Detector":
    """This detector, its compiled function included, with the variables and step of a train
    state of the same model (``train_step.TrainState``: params, model_state, step)."""
    other = copy.copy(self)
    other.params, other.model_state = state.params, state.model_state
    other.step = int(jax.device_get(state.step))
    return other

  @classmethod
  def from_state(cls, config: ml_collections.ConfigDict, state, mesh: Mesh) -> "Detector":
    """The detector of a train state (see ``with_state``), e.g. for periodic evaluation."""
    return cls(config, state.params, state.model_state, int(jax.device_get(state.step)),
               eval_model(config)[0], mesh)

  @classmethod
  def restore(cls, config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> "Detector":
    """The detector of checkpoint ``step`` (default: the latest) in ``workdir``."""
    mesh = parallel.create_mesh(config)
    graphdef, abstract = eval_model(config, parallel.replicated(mesh))
    manager = checkpoint.create_manager(workdir, config.train.keep_checkpoints, read_only=True)
    restored = checkpoint.restore_variables(manager, abstract, step)
    manager.close()
    if restored is None:
      raise FileNotFoundError(f"no checkpoint in {manager.directory}: train first "
                              "(--mode=train with the same --workdir)")
    variables, step = restored
    logging.info("detector from step %d of %s", step, workdir)
    return cls(config, variables["params"], variables["model_state"], step, graphdef, mesh)


def eval_model(config: ml_collections.ConfigDict, sharding: jax.sharding.Sharding | None = None,
               ) -> tuple[nnx.GraphDef, dict[str, nnx.State]]:
  """The graph of ``config``'s model in eval mode (BatchNorm on its running statistics) and its
  variables' shapes: {"params", "model_state"} of ``jax.ShapeDtypeStruct`` placed with
  ``sharding`` (what ``checkpoint.restore_variables`` takes); nothing is computed."""
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  model.eval()
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        {"params": params, "model_state": model_state})
  return graphdef, shapes

