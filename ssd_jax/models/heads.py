"""The MultiBox prediction heads and the SSD module that joins them to a backbone.

Head outputs are flattened in the prior order of DESIGN.md: source map by source map, row-major
over cells (y, then x), then the k boxes of a cell. A 3x3 conv with k * D output channels is read
as [k, D] per cell (box-major, as in Caffe and torchvision), so reshaping the NHWC output
[B, H, W, k * D] to [B, H * W * k, D] gives exactly that order.
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models import layers

Array = jax.Array


class SSDOutput(NamedTuple):
  """What every SSD model returns."""
  loc: Array  # [B, P, 4] float32 offsets, encoded as in DESIGN.md (cx, cy, w, h)
  logits: Array  # [B, P, C] float32 class logits, class 0 = background
  features: tuple[Array, ...]  # the source maps [B, H_m, W_m, C_m] in the compute dtype


class SeparablePredictor(nnx.Module):
  """SSDLite predictor: 3x3 depthwise conv + BN + ReLU6, then a 1x1 conv with bias."""

  def __init__(self, in_features: int, out_features: int, *, bn_momentum: float,
               bn_epsilon: float, dtype, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.03)  # torchvision's SSDLite head init
    self.depthwise = layers.ConvBN(in_features, in_features, 3, groups=in_features,
                                   activation=layers.relu6, bn_momentum=bn_momentum,
                                   bn_epsilon=bn_epsilon, kernel_init=init, dtype=dtype,
                                   rngs=rngs)
    self.pointwise = layers.conv(in_features, out_features, 1, kernel_init=init, dtype=dtype,
                                 rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.pointwise(self.depthwise(x))


class MultiBoxHead(nnx.Module):
  """One location and one class predictor per source map.

  ``loc[m]`` emits 4 * k_m channels, ``conf[m]`` num_classes * k_m, where k_m is the number of
  priors per cell of map m (``ssd_jax.priors.boxes_per_cell``).
  """

  def __init__(self, in_channels: Sequence[int], boxes_per_cell: Sequence[int],
               num_classes: int, *, separable: bool = False, bn_momentum: float = 0.97,
               bn_epsilon: float = 1e-3, dtype=jnp.float32, rngs: nnx.Rngs):
    if len(in_channels) != len(boxes_per_cell):
      raise ValueError(f"MultiBoxHead: {len(in_channels)} source maps but boxes_per_cell has "
                       f"{len(boxes_per_cell)} entries (one per map, from config.priors)")
    def predictor(channels: int, outputs: int) -> nnx.Module:
      if separable:
        return SeparablePredictor(channels, outputs, bn_momentum=bn_momentum,
                                  bn_epsilon=bn_epsilon, dtype=dtype, rngs=rngs)
      return layers.conv(channels, outputs, 3, padding=1, dtype=dtype, rngs=rngs)
    self.num_classes = num_classes
    self.loc = nnx.List([predictor(c, 4 * k) for c, k in zip(in_channels, boxes_per_cell)])
    self.conf = nnx.List([predictor(c, num_classes * k)
                          for c, k in zip(in_channels, boxes_per_cell)])

  def __call__(self, features: Sequence[Array]) -> tuple[Array, Array]:
    """Source maps [B, H_m, W_m, C_m] -> (loc [B, P, 4], logits [B, P, C]), both float32."""
    if len(features) != len(self.loc):
      raise ValueError(f"MultiBoxHead: expected {len(self.loc)} source maps, got {len(features)}")
    loc = [_flatten(head(x), 4) for head, x in zip(self.loc, features)]
    logits = [_flatten(head(x), self.num_classes) for head, x in zip(self.conf, features)]
    return jnp.concatenate(loc, axis=1), jnp.concatenate(logits, axis=1)


def _flatten(x: Array, columns: int) -> Array:
  """[B, H, W, k * columns] -> float32 [B, H * W * k, columns] (cells row-major, then boxes)."""
  batch = x.shape[0]
  return x.reshape(batch, -1, columns).astype(jnp.float32)


class SSD(nnx.Module):
  """A backbone emitting the source maps, followed by the MultiBox head."""

  def __init__(self, backbone: nnx.Module, head: MultiBoxHead):
    self.backbone = backbone
    self.head = head

  def __call__(self, images: Array) -> SSDOutput:
    """Normalised images [B, H, W, 3] (config.model.input_mean/std) -> SSDOutput."""
    features = tuple(self.backbone(images))
    loc, logits = self.head(features)
    return SSDOutput(loc, logits, features)
