"""Convolution entry points and layers, and the one switch choosing how they are computed.

`conv2d` / `conv_transpose` (torch's conv2d / conv_transpose2d numbers on NHWC arrays) and the
Linen layers `Conv` / `ConvTranspose` (nn.Conv's / nn.ConvTranspose's parameters) that the models
use. Each computes its convolution one of two ways, picked while tracing:
  - 'auto' (the default): on the CPU, the matmul formulations of `jaxseg.ops.xla_cpu`, which avoid
    XLA:CPU's slow convolution shapes; on other backends (GPU/TPU: cuDNN, MXU) lax's convolution.
  - 'lax': lax's convolution everywhere.
`JAXSEG_CONV_IMPL=lax` (read at import) or `set_conv_impl('lax')` picks 'lax'.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.ops import geometry, xla_cpu
from jaxseg.ops.geometry import Array, Pads, Pair, Padding

CONV_IMPLS = ('auto', 'lax')
_CONV_IMPL = [os.environ.get('JAXSEG_CONV_IMPL', 'auto')]


def set_conv_impl(impl: str) -> None:
  """'auto' (matmul formulations on the CPU, lax elsewhere) or 'lax' (lax everywhere)."""
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv impl must be one of {CONV_IMPLS}, got {impl!r}')
  if impl != _CONV_IMPL[0]:
    # The choice is made while tracing; jit reuses traces of functions it has seen (jitting
    # the same train step again would silently keep the old formulation), so drop them.
    jax.clear_caches()
  _CONV_IMPL[0] = impl


def conv_impl() -> str:
  """The current convolution implementation: 'auto' or 'lax'."""
  return _CONV_IMPL[0]


def _use_matmul_forms() -> bool:
  if _CONV_IMPL[0] not in CONV_IMPLS:
    raise ValueError(f'JAXSEG_CONV_IMPL must be one of {CONV_IMPLS}, got {_CONV_IMPL[0]!r}')
  return _CONV_IMPL[0] == 'auto' and jax.default_backend() == 'cpu'


def conv2d(x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
           padding: Sequence[Sequence[int]] = ((0, 0), (0, 0)), rates: Sequence[int] = (1, 1),
           precision: Any = None) -> Array:
  """Cross-correlation of NHWC x with an HWIO kernel (lax.conv_general_dilated's numbers).

  Args:
    x: (N, H, W, C).
    kernel: (kh, kw, C, O).
    strides, rates: per spatial dim (rates = kernel dilation).
    padding: ((top, bottom), (left, right)), non-negative.
    precision: matmul/conv precision.

  Returns:
    (N, OH, OW, O) with OH = (H + top + bottom - rate * (kh - 1) - 1) // stride + 1.
  """
  strides, rates = tuple(strides), tuple(rates)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  if not _use_matmul_forms():
    return geometry.lax_conv(x, kernel, strides, pads, rates, precision)
  return xla_cpu.conv2d(x, kernel, strides, pads, rates, precision)


def conv_transpose(x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
                   padding: Sequence[Sequence[int]] = ((0, 0), (0, 0)),
                   precision: Any = None) -> Array:
  """torch's conv_transpose2d (Caffe's Deconvolution) for NHWC x, without output_padding.

  Args:
    x: (N, h, w, C).
    kernel: (kh, kw, O, C): Flax `nn.ConvTranspose(transpose_kernel=True)`'s layout, i.e. torch's
      (C, O, kh, kw) weight transposed by (2, 3, 1, 0).
    strides: (s_h, s_w).
    padding: torch's `padding`, cropped from each side: ((top, bottom), (left, right)).
    precision: matmul/conv precision.

  Returns:
    (N, (h - 1) * s_h + kh - top - bottom, (w - 1) * s_w + kw - left - right, O).
  """
  strides = tuple(strides)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  kh, kw, _, _ = kernel.shape
  _, h, w, _ = x.shape
  full = ((h - 1) * strides[0] + kh, (w - 1) * strides[1] + kw)
  out_hw = (full[0] - sum(pads[0]), full[1] - sum(pads[1]))
  if min(out_hw) < 1 or any(p < 0 for pair in pads for p in pair):
    raise ValueError(f'conv_transpose: padding {pads} must be >= 0 and leave a non-empty output '
                     f'(full size {full})')
  if _use_matmul_forms() and xla_cpu.use_fold(x, kernel, strides):
    return xla_cpu.conv_transpose(x, kernel, strides, pads, full, precision)
  # The gradient of a convolution: a conv of the (dilated) input with the flipped kernel.
  flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
  conv_pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), pads))
  if strides == (1, 1) and all(p >= 0 for pair in conv_pads for p in pair):
    return conv2d(x, flipped, (1, 1), conv_pads, (1, 1), precision)
  return lax.conv_general_dilated(x, flipped, (1, 1), conv_pads, lhs_dilation=strides,
                                  dimension_numbers=geometry.CONV_DIMS, precision=precision)


def _conv_padding(padding: Padding, size: Sequence[int], kernel_hw: Sequence[int],
                  strides: Sequence[int], rates: Sequence[int], where: str) -> Pads:
  """nn.Conv's padding spec ('SAME', 'VALID', int, (ph, pw) or pairs) -> explicit pairs."""
  if isinstance(padding, str):
    if padding.upper() not in ('SAME', 'VALID'):
      raise ValueError(f"{where}: padding must be 'SAME', 'VALID', an int or pairs, "
                       f'got {padding!r}')
    dilated = [r * (k - 1) + 1 for k, r in zip(kernel_hw, rates)]
    return tuple(lax.padtype_to_pads(tuple(size), dilated, tuple(strides), padding.upper()))
  return geometry.explicit_pairs(padding, where)


class _ConvLayer(nn.Module):
  """Attributes and parameters shared by Conv and ConvTranspose (nn.Conv's names and defaults)."""
  features: int
  kernel_size: Sequence[int]
  strides: Pair = 1
  padding: Padding = 0
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Array] = nn.initializers.zeros_init()

  def _params(self, x: Array, kernel_shape: tuple[int, ...]) -> tuple[Array, Array, Array | None]:
    """'kernel' and 'bias' (when use_bias), promoted with x to the compute dtype."""
    kernel = self.param('kernel', self.kernel_init, kernel_shape, self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    return nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)

  def _checked(self, x: Array) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """Checks x, kernel_size and strides -> (error-message prefix, kernel (kh, kw), strides)."""
    where = f'{type(self).__name__} {self.name}'
    geometry.check_nhwc(x, f'{where}: x')
    kernel_hw = geometry.as_pair(tuple(self.kernel_size), f'{where}: kernel_size')
    return where, kernel_hw, geometry.as_pair(self.strides, f'{where}: strides')


class Conv(_ConvLayer):
  """`nn.Conv` (2-D, NHWC) computed by `conv2d`: same params ('kernel' HWIO, 'bias'), same numbers.

  Attributes are nn.Conv's: features, kernel_size, strides, padding ('SAME', 'VALID', an int,
  (ph, pw) or ((top, bottom), (left, right))), kernel_dilation, use_bias, dtype, param_dtype,
  precision, kernel_init, bias_init.
  """
  padding: Padding = 'SAME'
  kernel_dilation: Pair = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    where, kernel_hw, strides = self._checked(x)
    rates = geometry.as_pair(self.kernel_dilation, f'{where}: kernel_dilation')
    pads = _conv_padding(self.padding, x.shape[1:3], kernel_hw, strides, rates, where)
    x, kernel, bias = self._params(x, kernel_hw + (x.shape[-1], self.features))
    y = conv2d(x, kernel, strides, pads, rates, self.precision)
    return y if bias is None else y + bias


class ConvTranspose(_ConvLayer):
  """Caffe's Deconvolution / torch's ConvTranspose2d, computed by `conv_transpose`.

  Params are `nn.ConvTranspose(transpose_kernel=True)`'s: 'kernel' (kh, kw, features, in) and
  'bias'. `padding` is torch's (cropped from each side of the full (h - 1) * s + k output): an
  int, (ph, pw) or ((top, bottom), (left, right)). Equal to nn.ConvTranspose(transpose_kernel=
  True) with padding 'VALID' when padding is 0 (and kernel >= stride), or with explicit padding
  k - 1 - p at stride 1.
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    where, kernel_hw, strides = self._checked(x)
    if isinstance(self.padding, str):
      raise ValueError(f"{where}: padding is torch's crop (int or pairs), got {self.padding!r}")
    pads = _conv_padding(self.padding, x.shape[1:3], kernel_hw, strides, (1, 1), where)
    x, kernel, bias = self._params(x, kernel_hw + (self.features, x.shape[-1]))
    y = conv_transpose(x, kernel, strides, pads, self.precision)
    return y if bias is None else y + bias
