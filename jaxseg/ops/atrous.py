"""Atrous (dilated) convolution, as PSPNet and DeepLab use it: `atrous_conv` and `AtrousConv`.

The padding keeps the spatial size for any rate: pad = rate * (k - 1) // 2 on each side for odd k,
the same numbers as torch `conv2d(padding=dilation, dilation=dilation)` for 3x3 (and torchvision
ResNet, stride 2). The convolution itself is `conv.conv2d`, whichever implementation it picks.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.ops import conv, geometry
from jaxseg.ops.geometry import Array, Pair


def _same_pads(kernel_hw: Sequence[int], rates: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """Padding keeping the size at stride 1: symmetric for odd k, one more at the end for even k."""
  pads = []
  for k, r in zip(kernel_hw, rates):
    total = r * (k - 1)
    pads.append((total // 2, total - total // 2))
  return tuple(pads)


@functools.partial(jax.jit, static_argnames=('strides', 'rates', 'pads', 'dtype', 'precision',
                                             'impl'))
def _atrous_conv(x, kernel, bias, strides, rates, pads, dtype, precision, impl):
  del impl  # Static: a jit cache key, so set_conv_impl() takes effect.
  x = x.astype(dtype)
  kernel = kernel.astype(dtype)
  y = conv.conv2d(x, kernel, strides, pads, rates, precision)
  if bias is not None:
    y = y + bias.astype(dtype)
  return y


def atrous_conv(x: Array, kernel: Array, rate: Pair = 1, bias: Array | None = None,
                stride: Pair = 1, *, dtype: Any = None, precision: Any = None) -> Array:
  """Dilated 2-D convolution whose padding keeps the spatial size (ceil(H / stride) out).

  Args:
    x: (N, H, W, Cin) input.
    kernel: (kh, kw, Cin, Cout) HWIO kernel (nn.Conv's layout).
    rate: dilation rate, int or (rate_h, rate_w).
    bias: optional (Cout,) bias.
    stride: int or (stride_h, stride_w); for odd kernels the padding is rate * (k - 1) // 2 on
      both sides, as torch conv2d / torchvision ResNet.
    dtype: computation dtype; None promotes the dtypes of x, kernel and bias.
    precision: passed to lax.conv_general_dilated.

  Returns:
    (N, ceil(H / stride_h), ceil(W / stride_w), Cout) array of dtype `dtype`.
  """
  geometry.check_nhwc(x, 'atrous_conv: x')
  if jnp.ndim(kernel) != 4:
    raise ValueError(f'atrous_conv: kernel must be HWIO (rank 4), got shape {jnp.shape(kernel)}')
  if kernel.shape[2] != x.shape[3]:
    raise ValueError(f'atrous_conv: kernel expects {kernel.shape[2]} input channels '
                     f'(HWIO shape {kernel.shape}) but x has {x.shape[3]} (shape {x.shape})')
  if bias is not None and jnp.shape(bias) != (kernel.shape[3],):
    raise ValueError(f'atrous_conv: bias must have shape ({kernel.shape[3]},), '
                     f'got {jnp.shape(bias)}')
  rates = geometry.as_pair(rate, 'atrous_conv: rate')
  strides = geometry.as_pair(stride, 'atrous_conv: stride')
  if dtype is None:
    dtype = jnp.result_type(*(a for a in (x, kernel, bias) if a is not None))
  pads = _same_pads(kernel.shape[:2], rates)
  return _atrous_conv(x, kernel, bias, strides, rates, pads, jnp.dtype(dtype), precision,
                      conv.conv_impl())


class AtrousConv(nn.Module):
  """`atrous_conv` as a Linen layer; params 'kernel' (HWIO) and 'bias' exactly like nn.Conv.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    rate: dilation rate (int or pair).
    strides: stride (int or pair).
    use_bias: whether to add a 'bias' param.
    dtype: computation dtype (None: promote input and params, as nn.Conv).
    param_dtype: dtype of the params.
    precision: conv precision.
    kernel_init, bias_init: initialisers (nn.Conv's defaults).
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  rate: Pair = 1
  strides: Pair = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Array] = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    geometry.check_nhwc(x, f'AtrousConv {self.name}: x')
    kh, kw = geometry.as_pair(tuple(self.kernel_size), f'AtrousConv {self.name}: kernel_size')
    kernel = self.param('kernel', self.kernel_init, (kh, kw, x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    return atrous_conv(x, kernel, self.rate, bias, self.strides, dtype=self.dtype,
                       precision=self.precision)
