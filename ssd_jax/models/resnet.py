"""SSD300 on ResNet-34 (MLPerf SSD benchmark) and ResNet-50 (NVIDIA SSD300 v1.1).

The backbone is a torchvision-style ResNet (v1.5: the stride of a bottleneck sits in its 3x3
conv) cut after layer3 (conv4_x); layer3's first block has stride 1, so at 300 input the first
source map is 38x38 (stem 150, pool 75, layer2 38). Five extra levels follow, each a 1x1 conv and
a 3x3 conv (stride 2, padding 1 for the first three; valid for the last two), every conv followed
by BatchNorm and ReLU: source maps 38, 19, 10, 5, 3, 1 with 256 (ResNet-34) or 1024 (ResNet-50),
512, 512, 256, 256, 256 channels.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models import layers

Array = jax.Array

# (1x1 channels, 3x3 channels, stride, padding) of the extra levels, as NVIDIA's SSD300 v1.1.
EXTRAS = ((256, 512, 2, 1), (256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0),
          (128, 256, 1, 0))


class BasicBlock(nnx.Module):
  """Two 3x3 ConvBN units with a residual connection (ResNet-18/34)."""
  expansion = 1

  def __init__(self, in_features: int, features: int, stride: int, *, dtype, rngs: nnx.Rngs):
    self.conv1 = layers.ConvBN(in_features, features, 3, stride=stride, dtype=dtype, rngs=rngs)
    self.conv2 = layers.ConvBN(features, features, 3, activation=None, dtype=dtype, rngs=rngs)
    self.downsample = _shortcut(in_features, features, stride, dtype, rngs)

  def __call__(self, x: Array) -> Array:
    identity = x if self.downsample is None else self.downsample(x)
    return nnx.relu(self.conv2(self.conv1(x)) + identity)


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (strided) -> 1x1 (4x channels) with a residual connection (ResNet-50 v1.5)."""
  expansion = 4

  def __init__(self, in_features: int, features: int, stride: int, *, dtype, rngs: nnx.Rngs):
    out = features * self.expansion
    self.conv1 = layers.ConvBN(in_features, features, 1, dtype=dtype, rngs=rngs)
    self.conv2 = layers.ConvBN(features, features, 3, stride=stride, dtype=dtype, rngs=rngs)
    self.conv3 = layers.ConvBN(features, out, 1, activation=None, dtype=dtype, rngs=rngs)
    self.downsample = _shortcut(in_features, out, stride, dtype, rngs)

  def __call__(self, x: Array) -> Array:
    identity = x if self.downsample is None else self.downsample(x)
    return nnx.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


def _shortcut(in_features: int, out_features: int, stride: int, dtype,
              rngs: nnx.Rngs) -> layers.ConvBN | None:
  """The 1x1 ConvBN projection of a block whose shape changes; None for the identity."""
  if stride == 1 and in_features == out_features:
    return None
  return layers.ConvBN(in_features, out_features, 1, stride=stride, activation=None,
                       dtype=dtype, rngs=rngs)


# Block type and blocks per stage of layer1..layer3 (layer4 is dropped).
ARCHITECTURES = {"resnet34": (BasicBlock, (3, 4, 6)), "resnet50": (Bottleneck, (3, 4, 6))}


class ExtraLevel(nnx.Module):
  """1x1 ConvBN + ReLU, then 3x3 ConvBN + ReLU: one extra source map."""

  def __init__(self, in_features: int, mid: int, out: int, stride: int, padding: int, *,
               dtype, rngs: nnx.Rngs):
    init = layers.xavier_uniform
    self.conv1 = layers.ConvBN(in_features, mid, 1, kernel_init=init, dtype=dtype, rngs=rngs)
    self.conv2 = layers.ConvBN(mid, out, 3, stride=stride, padding=padding, kernel_init=init,
                               dtype=dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.conv2(self.conv1(x))


class ResNetBackbone(nnx.Module):
  """ResNet stem + layer1..layer3 (layer3 at stride 1) + extras -> six source maps (NHWC)."""

  def __init__(self, depth: str = "resnet34", *, width: float = 1.0, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if depth not in ARCHITECTURES:
      raise ValueError(f"ResNetBackbone: unknown depth {depth!r}; known: {sorted(ARCHITECTURES)}")
    block, counts = ARCHITECTURES[depth]
    ch = lambda c: layers.scale_channels(c, width)  # noqa: E731
    self.stem = layers.ConvBN(3, ch(64), 7, stride=2, dtype=dtype, rngs=rngs)
    in_features = ch(64)
    stages = []
    for features, count, stride in zip((64, 128, 256), counts, (1, 2, 1)):
      blocks = []
      for index in range(count):
        blocks.append(block(in_features, ch(features), stride if index == 0 else 1,
                            dtype=dtype, rngs=rngs))
        in_features = ch(features) * block.expansion
      stages.append(nnx.List(blocks))
    self.layer1, self.layer2, self.layer3 = stages
    channels = [in_features]
    extras = []
    for mid, out, stride, padding in EXTRAS:
      extras.append(ExtraLevel(channels[-1], ch(mid), ch(out), stride, padding, dtype=dtype,
                               rngs=rngs))
      channels.append(ch(out))
    self.extras = nnx.List(extras)
    self.out_channels = tuple(channels)

  def __call__(self, x: Array) -> list[Array]:
    """[B, H, W, 3] -> source maps, layer3 output first."""
    x = layers.max_pool(self.stem(x), 3, 2, padding=1)
    for stage in (self.layer1, self.layer2, self.layer3):
      for block in stage:
        x = block(x)
    sources = [x]
    for level in self.extras:
      x = level(x)
      sources.append(x)
    return sources
