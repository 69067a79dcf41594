"""SSDLite on MobileNetV2 (Sandler et al. 2018, section 6.2), for mobile inference at 320x320.

The backbone is torchvision's MobileNetV2 layout. As in the paper, the first source map is the
expansion output (576 channels) of the first 160-channel block, at output stride 16 (20x20 at
320 input); the second is the final 1x1 conv (1280 channels, 10x10). Four SSDLite extra levels
(1x1 conv, 3x3 depthwise stride 2, 1x1 conv, each with BatchNorm and ReLU6) give 512, 256, 256
and 128 channels at 5, 3, 2, 1, built as torchvision's ``ssdlite320_mobilenet_v3_large`` builds
them. The heads (``MultiBoxHead(separable=True)``) are depthwise-separable too.
BatchNorm: epsilon 1e-3, momentum 0.97 (torchvision's SSDLite / TF's 0.997 decay rounded).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models import layers

Array = jax.Array

# (expansion t, channels c, repeats n, first stride s) of the inverted-residual stages.
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))
SOURCE_BLOCK = 13  # blocks[13] = torchvision features[14], the first 160-channel block
EXTRA_DEPTHS = (512, 256, 256, 128)
BN = {"bn_momentum": 0.97, "bn_epsilon": 1e-3}


class InvertedResidual(nnx.Module):
  """1x1 expansion (unless t = 1), 3x3 depthwise, linear 1x1 projection; residual if same shape."""

  def __init__(self, in_features: int, out_features: int, stride: int, expansion: int, *,
               dtype, rngs: nnx.Rngs):
    hidden = in_features * expansion
    self.expand = None if expansion == 1 else layers.ConvBN(
        in_features, hidden, 1, activation=layers.relu6, dtype=dtype, rngs=rngs, **BN)
    self.depthwise = layers.ConvBN(hidden, hidden, 3, stride=stride, groups=hidden,
                                   activation=layers.relu6, dtype=dtype, rngs=rngs, **BN)
    self.project = layers.ConvBN(hidden, out_features, 1, activation=None, dtype=dtype,
                                 rngs=rngs, **BN)
    self.residual = stride == 1 and in_features == out_features

  def expanded(self, x: Array) -> Array:
    """The expansion output (the SSDLite source of the stride-16 level)."""
    return x if self.expand is None else self.expand(x)

  def __call__(self, x: Array) -> Array:
    y = self.project(self.depthwise(self.expanded(x)))
    return x + y if self.residual else y


class ExtraLevel(nnx.Module):
  """SSDLite extra level: 1x1 (half channels), 3x3 depthwise stride 2, 1x1; BN + ReLU6 each."""

  def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
    mid = out_features // 2
    init = nnx.initializers.normal(0.03)  # torchvision's SSDLite extras
    unit = lambda i, o, k, **kw: layers.ConvBN(  # noqa: E731
        i, o, k, activation=layers.relu6, kernel_init=init, dtype=dtype, rngs=rngs, **BN, **kw)
    self.reduce = unit(in_features, mid, 1)
    self.depthwise = unit(mid, mid, 3, stride=2, groups=mid)
    self.expand = unit(mid, out_features, 1)

  def __call__(self, x: Array) -> Array:
    return self.expand(self.depthwise(self.reduce(x)))


class MobileNetV2Backbone(nnx.Module):
  """MobileNetV2 features + SSDLite extras -> six source maps (NHWC)."""

  def __init__(self, *, width: float = 1.0, dtype=jnp.float32, rngs: nnx.Rngs):
    ch = lambda c: layers.scale_channels(c, width)  # noqa: E731
    self.stem = layers.ConvBN(3, ch(32), 3, stride=2, activation=layers.relu6, dtype=dtype,
                              rngs=rngs, **BN)
    blocks = []
    in_features = ch(32)
    for expansion, channels, repeats, stride in MOBILENET_V2:
      for index in range(repeats):
        blocks.append(InvertedResidual(in_features, ch(channels), stride if index == 0 else 1,
                                       expansion, dtype=dtype, rngs=rngs))
        in_features = ch(channels)
    self.blocks = nnx.List(blocks)
    self.last = layers.ConvBN(in_features, ch(1280), 1, activation=layers.relu6, dtype=dtype,
                              rngs=rngs, **BN)
    channels = [blocks[SOURCE_BLOCK].depthwise.conv.in_features, ch(1280)]
    extras = []
    for depth in EXTRA_DEPTHS:
      extras.append(ExtraLevel(channels[-1], ch(depth), dtype=dtype, rngs=rngs))
      channels.append(ch(depth))
    self.extras = nnx.List(extras)
    self.out_channels = tuple(channels)

  def __call__(self, x: Array) -> list[Array]:
    """[B, H, W, 3] -> source maps: the stride-16 expansion output first."""
    x = self.stem(x)
    for block in self.blocks[:SOURCE_BLOCK]:
      x = block(x)
    c4 = self.blocks[SOURCE_BLOCK]
    source = c4.expanded(x)
    x = c4.project(c4.depthwise(source))  # no residual: this block has stride 2
    for block in self.blocks[SOURCE_BLOCK + 1:]:
      x = block(x)
    sources = [source, self.last(x)]
    for level in self.extras:
      sources.append(level(sources[-1]))
    return sources
