"""A small dense SSD backbone for the quickstart and for tests: trains on 2 CPU cores in minutes.

3x3 convs and ReLU with one source map per scale: at a 128 input the maps are 16, 8, 4, 2 and 1
cells. Every downsampling is a stride-2 conv: no max pools (their backward pass made the step 3.5x
slower on XLA:CPU) and no depthwise convs (very slow on XLA:CPU too).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models import layers

Array = jax.Array

STEM = (16, 32, 64)  # channels of the stride-2 stages before the first source map
SOURCES = (64, 128, 128, 128, 128)  # channels of the source maps


class TinyBackbone(nnx.Module):
  """stem (3 stride-2 convs, /8) -> source maps at /8, /16, /32, /64, /128 (NHWC)."""

  def __init__(self, *, width: float = 1.0, dtype=jnp.float32, rngs: nnx.Rngs):
    ch = lambda c: layers.scale_channels(c, width)  # noqa: E731
    in_features = 3
    self.stem = nnx.List()
    for channels in STEM:
      self.stem.append(layers.conv(in_features, ch(channels), 3, stride=2, padding=1,
                                   kernel_init=layers.kaiming_fan_out, dtype=dtype, rngs=rngs))
      in_features = ch(channels)
    self.source0 = layers.conv(in_features, ch(SOURCES[0]), 3, padding=1,
                               kernel_init=layers.kaiming_fan_out, dtype=dtype, rngs=rngs)
    self.downs = nnx.List([
        layers.conv(ch(a), ch(b), 3, stride=2, padding=1, kernel_init=layers.kaiming_fan_out,
                    dtype=dtype, rngs=rngs)
        for a, b in zip(SOURCES[:-1], SOURCES[1:])])
    self.out_channels = tuple(ch(c) for c in SOURCES)

  def __call__(self, x: Array) -> list[Array]:
    """[B, H, W, 3] -> 5 source maps of H/8 .. H/128 cells."""
    for conv in self.stem:
      x = nnx.relu(conv(x))
    x = nnx.relu(self.source0(x))
    sources = [x]
    for down in self.downs:
      x = nnx.relu(down(x))
      sources.append(x)
    return sources
