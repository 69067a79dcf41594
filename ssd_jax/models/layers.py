"""Building blocks shared by the SSD backbones: convolutions with PyTorch padding, conv+BN+act,
max pooling with ceil mode and the L2Norm of conv4_3.

All modules take NHWC inputs. ``dtype`` is the compute dtype (e.g. bfloat16); parameters are
always float32, so mixed precision needs no copy of the weights.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array
Activation = Callable[[Array], Array] | None

# Initialisers of the PyTorch references: torchvision VGG/ResNet convs use Kaiming normal with
# fan_out, the SSD extra layers and heads Xavier uniform with zero biases.
kaiming_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
xavier_uniform = nnx.initializers.xavier_uniform()


def scale_channels(channels: int, width: float, minimum: int = 8) -> int:
  """Channels of a layer under the ``config.model.width`` multiplier (1.0 = the published model)."""
  return channels if width == 1.0 else max(minimum, int(round(channels * width)))


def conv(in_features: int, out_features: int, kernel_size: int, *, stride: int = 1,
         padding: int = 0, dilation: int = 1, groups: int = 1, use_bias: bool = True,
         kernel_init=xavier_uniform, dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Conv:
  """A square 2-D convolution with PyTorch's symmetric integer padding (not XLA "SAME").

  Explicit padding keeps feature-map sizes, and what converted weights see, identical to the
  PyTorch references: on an even input XLA's "SAME" pads a stride-2 conv at the bottom/right
  only, PyTorch on both sides.
  """
  return nnx.Conv(in_features, out_features, (kernel_size, kernel_size), strides=stride,
                  padding=((padding, padding), (padding, padding)),
                  kernel_dilation=dilation, feature_group_count=groups, use_bias=use_bias,
                  kernel_init=kernel_init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class ConvBN(nnx.Module):
  """Conv (no bias) -> BatchNorm -> activation, the unit of the ResNet and MobileNet models."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *, stride: int = 1,
               padding: int | None = None, groups: int = 1, activation: Activation = nnx.relu,
               bn_momentum: float = 0.9, bn_epsilon: float = 1e-5, kernel_init=kaiming_fan_out,
               dtype=jnp.float32, rngs: nnx.Rngs):
    padding = (kernel_size - 1) // 2 if padding is None else padding
    self.conv = conv(in_features, out_features, kernel_size, stride=stride, padding=padding,
                     groups=groups, use_bias=False, kernel_init=kernel_init, dtype=dtype,
                     rngs=rngs)
    self.bn = batch_norm(out_features, momentum=bn_momentum, epsilon=bn_epsilon, dtype=dtype,
                         rngs=rngs)
    self.activation = activation

  def __call__(self, x: Array) -> Array:
    x = self.bn(self.conv(x))
    return x if self.activation is None else self.activation(x)


def batch_norm(features: int, *, momentum: float = 0.9, epsilon: float = 1e-5,
               dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm over the channel axis; ``momentum`` is flax's (PyTorch momentum m -> 1 - m).

  Starts in training mode (batch statistics); ``model.eval()`` switches to the running averages.
  """
  return nnx.BatchNorm(features, use_running_average=False, momentum=momentum, epsilon=epsilon,
                       dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def relu6(x: Array) -> Array:
  """min(max(x, 0), 6), the MobileNet activation."""
  return jnp.clip(x, 0, 6)


def max_pool(x: Array, window: int, stride: int, padding: int = 0,
             ceil_mode: bool = False) -> Array:
  """Max pooling of [B, H, W, C] with PyTorch semantics (padding counts as -inf, optional ceil
  mode).

  Ceil mode pads the bottom/right just enough for one more window, which is how VGG's pool3
  maps 75 -> 38 in SSD300. Non-overlapping unpadded pools (window == stride, VGG's 2x2) take
  ``tile_max``; the others ``window_max``. Both send the gradient of a window to its first
  maximal element in row-major order, as ``lax.reduce_window`` does.
  """
  def pads(size: int) -> tuple[int, int]:
    extra = 0
    if ceil_mode:
      extra = (-(size + 2 * padding - window)) % stride
      # PyTorch drops a last window that would start entirely in the padding.
      if (size + 2 * padding - window + extra) // stride * stride >= size + padding:
        extra = 0
    return padding, padding + extra
  if window == stride and padding == 0:
    # With window == stride and no padding, a last window is never entirely padding.
    rows, cols = (_tile_extent(size, window, ceil_mode) for size in x.shape[1:3])
    x = x[:, :rows, :cols]
    # Ceil mode: the last row / column repeated, not -inf (an int8 TFLite model cannot quantise
    # -inf). A window's maximum is the same, and its first maximum is never a repeat (the
    # original comes first), so the gradient is too.
    x = _pad_edges(x, ((0, rows - x.shape[1]), (0, cols - x.shape[2])))
    return tile_max(x, window)
  return window_max(x, window, stride, (pads(x.shape[1]), pads(x.shape[2])))


def _pad_edges(x: Array, pads: tuple[tuple[int, int], tuple[int, int]]) -> Array:
  """[B, H, W, C] with its first / last rows and columns repeated ``pads`` ((top, bottom), (left,
  right)) times: a gather of clipped indices (jax2onnx mis-shapes ``jnp.pad``'s edge mode)."""
  for axis, (before, after) in zip((1, 2), pads):
    if before or after:
      size = x.shape[axis]
      x = jnp.take(x, np.clip(np.arange(-before, size + after), 0, size - 1), axis=axis)
  return x


def _reduce_window_max(x: Array, window: int, stride: int,
                       pads: tuple[tuple[int, int], tuple[int, int]]) -> Array:
  # A Python -inf init (not an array) lets JAX see a max monoid and use its differentiable rule.
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), ((0, 0), *pads, (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def window_max(x: Array, window: int, stride: int,
               pads: tuple[tuple[int, int], tuple[int, int]]) -> Array:
  """Max over window x window windows of [B, H, W, C] at ``stride``, with ``pads`` ((top,
  bottom), (left, right)) of -inf around it: the value of ``lax.reduce_window``'s max, with its
  gradient. ``pads`` must leave a real element in every window (PyTorch's rule: at most half a
  window of padding).

  The value is the elementwise max of the window's strided slices of the padded input (Pad, Slice
  and Max in ONNX: jax2onnx turns ``reduce_window`` into a MaxPool over six dimensions, which
  onnxruntime rejects); the gradient is ``reduce_window``'s (select-and-scatter: each window's to
  its first maximum), so training computes the same numbers either way.
  """
  # Edge rows / columns repeated rather than -inf (int8 TFLite cannot quantise -inf): every
  # window holds the real row or column that its padding repeats, so its maximum is unchanged.
  padded = _pad_edges(x, pads)
  rows, cols = ((padded.shape[axis] - window) // stride + 1 for axis in (1, 2))
  slices = [padded[:, dy:dy + (rows - 1) * stride + 1:stride,
                   dx:dx + (cols - 1) * stride + 1:stride]
            for dy in range(window) for dx in range(window)]
  return functools.reduce(jnp.maximum, slices)


def _window_max_fwd(x: Array, window: int, stride: int, pads) -> tuple[Array, Array]:
  return window_max(x, window, stride, pads), x


def _window_max_bwd(window: int, stride: int, pads, x: Array, g: Array) -> tuple[Array]:
  _, vjp = jax.vjp(lambda v: _reduce_window_max(v, window, stride, pads), x)
  return vjp(g)


window_max.defvjp(_window_max_fwd, _window_max_bwd)


def _tile_extent(size: int, window: int, ceil_mode: bool) -> int:
  """Rows (or columns) covered by whole windows: cropped (floor) or padded (ceil) to a multiple."""
  return (-(-size // window) if ceil_mode else size // window) * window


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def tile_max(x: Array, k: int) -> Array:
  """Max over non-overlapping k x k tiles: [B, H, W, C] -> [B, H / k, W / k, C] (H, W: k multiples).

  A reshape and a max, which XLA:CPU fuses into one loop; ``lax.reduce_window``'s gradient goes
  through select-and-scatter, several times slower. The gradient of each tile goes to its first
  maximal element in row-major order, as select-and-scatter does, so both give the same numbers.
  """
  b, h, w, c = x.shape
  return jnp.max(x.reshape(b, h // k, k, w // k, k, c), axis=(2, 4))


def _tile_max_fwd(x: Array, k: int) -> tuple[Array, tuple[Array, Array]]:
  y = tile_max(x, k)
  return y, (x, y)


def _tile_max_bwd(k: int, residuals: tuple[Array, Array], g: Array) -> tuple[Array]:
  x, y = residuals
  b, h, w, c = x.shape
  tiles = x.reshape(b, h // k, k, w // k, k, c)
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for dy in range(k):
    row = []
    for dx in range(k):
      first = (tiles[:, :, dy, :, dx, :] == y) & ~taken
      taken = taken | first
      row.append(jnp.where(first, g, jnp.zeros_like(g)))
    rows.append(jnp.stack(row, axis=3))
  return (jnp.stack(rows, axis=2).reshape(x.shape),)


tile_max.defvjp(_tile_max_fwd, _tile_max_bwd)


class L2Norm(nnx.Module):
  """Per-position L2 normalisation over channels times a learned per-channel scale (ParseNet).

  SSD applies it to conv4_3, whose activations are much larger than those of later layers;
  the scale starts at 20. Computed in float32 whatever the compute dtype, as bfloat16 sums of
  squares over 512 channels are imprecise.
  """

  def __init__(self, channels: int, init_scale: float = 20.0, eps: float = 1e-12,
               dtype=jnp.float32):
    self.scale = nnx.Param(jnp.full((channels,), init_scale, jnp.float32))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
    return (x32 / jnp.maximum(norm, self.eps) * self.scale[...]).astype(self.dtype)
