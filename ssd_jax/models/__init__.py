"""SSD models (Flax NNX) and the registry that builds one from ``config.model``.

``config.model.name`` is the registry key (``model_names()`` lists them); the heads get one entry
per source map from ``config.priors.aspect_ratios``, so the outputs always have the config's
prior count. A model returns ``SSDOutput(loc [B, P, 4], logits [B, P, C], features)``.
Models start in training mode (BatchNorm on batch statistics): call ``model.eval()`` to predict.

At the jit boundary (graphdef + states), a function that differentiates with respect to the
params must rebuild the model with ``nnx.merge(graphdef, params, rest, copy=True)``: the
BatchStat variables of ``rest`` come from outside the grad trace, and BatchNorm's in-place update
of them in train mode raises flax's TraceContextError otherwise.
"""

from typing import Callable

import jax.numpy as jnp
import ml_collections
from flax import nnx

from ssd_jax import priors as priors_lib
from ssd_jax.models import mobilenet, resnet, tiny, vgg
from ssd_jax.models.heads import MultiBoxHead, SSD, SSDOutput

__all__ = ["DTYPES", "SSD", "SSDOutput", "create_model", "model_names"]

DTYPES = ("float32", "bfloat16", "float16")  # config.model.dtype: the compute dtype

BackboneFactory = Callable[..., nnx.Module]  # (*, width, dtype, rngs) -> backbone

# name -> (backbone factory, depthwise-separable heads?)
_REGISTRY: dict[str, tuple[BackboneFactory, bool]] = {
    "ssd300_vgg16": (lambda **kw: vgg.VGG16Backbone("ssd300", **kw), False),
    "ssd512_vgg16": (lambda **kw: vgg.VGG16Backbone("ssd512", **kw), False),
    "ssd300_resnet34": (lambda **kw: resnet.ResNetBackbone("resnet34", **kw), False),
    "ssd300_resnet50": (lambda **kw: resnet.ResNetBackbone("resnet50", **kw), False),
    "ssdlite320_mobilenetv2": (lambda **kw: mobilenet.MobileNetV2Backbone(**kw), True),
    "ssd_tiny": (lambda **kw: tiny.TinyBackbone(**kw), False),  # quickstart and tests
}


def model_names() -> list[str]:
  """The known values of ``config.model.name``."""
  return sorted(_REGISTRY)


def create_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> SSD:
  """Builds the model of ``config`` (``config.model`` and ``config.priors.aspect_ratios``).

  ``config.model.dtype`` is the compute dtype; parameters are float32.
  """
  name = config.model.name
  if name not in _REGISTRY:
    raise ValueError(f"unknown config.model.name {name!r}; known models: {model_names()}")
  factory, separable = _REGISTRY[name]
  dtype = jnp.dtype(config.model.dtype)
  backbone = factory(width=config.model.width, dtype=dtype, rngs=rngs)
  boxes = priors_lib.boxes_per_cell(config.priors.aspect_ratios)
  if len(boxes) != len(backbone.out_channels):
    raise ValueError(f"{name} has {len(backbone.out_channels)} source maps but "
                     f"config.priors.aspect_ratios has {len(boxes)} entries")
  head = MultiBoxHead(backbone.out_channels, boxes, config.model.num_classes,
                      separable=separable, dtype=dtype, rngs=rngs)
  return SSD(backbone, head)

