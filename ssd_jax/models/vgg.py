"""SSD300 / SSD512 on VGG16, as in the paper and the Caffe release (``ssd_pascal.py``,
``ssd_pascal512.py``) and torchvision's ``ssd300_vgg16``.

VGG16 conv1_1..conv5_3 with ceil-mode 2x2 pools (Caffe; pool3 maps 75 -> 38 at 300), an L2Norm
(scale 20) on conv4_3, pool5 3x3 stride 1, fc6 as a 3x3 conv with dilation 6 and fc7 as a 1x1
conv (1024 channels each), then the extra layers. Source maps: conv4_3, fc7, conv8_2 ..
conv11_2 (SSD300: 38, 19, 10, 5, 3, 1) or .. conv12_2 (SSD512: 64, 32, 16, 8, 4, 2, 1).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models import layers

Array = jax.Array

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

# Extra layers (1x1 channels, 3x3 channels, kernel, stride, padding), conv8 onwards. SSD512 keeps
# stride 2 down to 2x2 and ends with a 4x4 conv (padding 1) to 1x1, as Caffe's ssd_pascal512.
EXTRAS = {
    "ssd300": ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 1, 0),
               (128, 256, 3, 1, 0)),
    "ssd512": ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1),
               (128, 256, 3, 2, 1), (128, 256, 4, 1, 1)),
}


def vgg_conv_names() -> list[str]:
  """conv1_1 .. conv5_3, in order."""
  return [f"conv{b}_{i}" for b, block in enumerate(VGG16_BLOCKS, 1)
          for i in range(1, len(block) + 1)]


def extra_names(variant: str) -> list[tuple[str, str]]:
  """[(conv8_1, conv8_2), ...]: the 1x1 and 3x3 convs of each extra level."""
  return [(f"conv{n}_1", f"conv{n}_2") for n in range(8, 8 + len(EXTRAS[variant]))]


class VGG16Backbone(nnx.Module):
  """VGG16 + fc6/fc7 atrous convs + extra layers -> the SSD source maps (NHWC)."""

  def __init__(self, variant: str = "ssd300", *, width: float = 1.0, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if variant not in EXTRAS:
      raise ValueError(f"VGG16Backbone: unknown variant {variant!r}; known: {sorted(EXTRAS)}")
    self.variant = variant
    ch = lambda c: layers.scale_channels(c, width)  # noqa: E731
    in_features = 3
    names = iter(vgg_conv_names())
    for block in VGG16_BLOCKS:
      for channels in block:
        setattr(self, next(names), layers.conv(
            in_features, ch(channels), 3, padding=1, kernel_init=layers.kaiming_fan_out,
            dtype=dtype, rngs=rngs))
        in_features = ch(channels)
    self.conv4_3_norm = layers.L2Norm(ch(512), dtype=dtype)
    self.fc6 = layers.conv(ch(512), ch(1024), 3, padding=6, dilation=6, dtype=dtype, rngs=rngs)
    self.fc7 = layers.conv(ch(1024), ch(1024), 1, dtype=dtype, rngs=rngs)
    in_features = ch(1024)
    for (name1, name2), (mid, out, kernel, stride, pad) in zip(extra_names(variant),
                                                               EXTRAS[variant]):
      setattr(self, name1, layers.conv(in_features, ch(mid), 1, dtype=dtype, rngs=rngs))
      setattr(self, name2, layers.conv(ch(mid), ch(out), kernel, stride=stride, padding=pad,
                                       dtype=dtype, rngs=rngs))
      in_features = ch(out)
    self.out_channels = (ch(512), ch(1024)) + tuple(ch(e[1]) for e in EXTRAS[variant])

  def __call__(self, x: Array) -> list[Array]:
    """[B, H, W, 3] -> source maps, conv4_3 (L2-normalised) first."""
    names = iter(vgg_conv_names())
    sources = []
    for index, block in enumerate(VGG16_BLOCKS):
      if index > 0:
        x = layers.max_pool(x, 2, 2, ceil_mode=True)
      for _ in block:
        x = nnx.relu(getattr(self, next(names))(x))
      if index == 3:
        sources.append(self.conv4_3_norm(x))
    x = layers.max_pool(x, 3, 1, padding=1)  # pool5: keeps the 19x19 / 32x32 resolution
    x = nnx.relu(self.fc6(x))
    x = nnx.relu(self.fc7(x))
    sources.append(x)
    for name1, name2 in extra_names(self.variant):
      x = nnx.relu(getattr(self, name1)(x))
      x = nnx.relu(getattr(self, name2)(x))
      sources.append(x)
    return sources

