"""Segmentation ops the papers need: atrous convolution and max pooling with switches.

All ops take NHWC arrays, are jit-compiled (static geometry is resolved in Python, then a jitted
kernel runs, so they also inline into an outer `jax.jit`) and are differentiable.

- `atrous_conv` / `AtrousConv`: dilated ("atrous", PSPNet/DeepLab) convolution whose padding keeps
  the spatial size for any rate: pad = rate * (k - 1) // 2 on each side for odd k, the same numbers
  as torch `conv2d(padding=dilation, dilation=dilation)` for 3x3 (and torchvision ResNet, stride 2).
  Max pooling with padding or ceil mode copies the input once (padded with -inf); 'VALID' does not.
- `max_pool_with_argmax` / `max_unpool`: DeconvNet's pooling switches. Switches follow PyTorch's
  `return_indices` convention (int32 flat index h * W + w into each input plane), ties go to the
  first maximum in row-major window order and NaN wins, as in PyTorch's kernel. `max_unpool` is a
  compare-and-select on the upsampled grid, not a scatter, so it needs non-overlapping windows
  (strides >= window, as DeconvNet's 2x2/2 pooling); overlapping windows raise a ValueError.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Pair = Union[int, Sequence[int]]
# 'VALID', 'SAME', an int (both sides of both dims), (ph, pw), or ((top, bottom), (left, right)).
Padding = Union[str, int, Sequence[int], Sequence[Sequence[int]]]
_CONV_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _pair(value: Pair, name: str) -> tuple[int, int]:
  """An int or a length-2 sequence of positive ints -> (int, int)."""
  if isinstance(value, (int, np.integer)):
    value = (value, value)
  value = tuple(value)
  if len(value) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in value):
    raise ValueError(f'{name} must be a positive int or a pair of positive ints, got {value!r}')
  return int(value[0]), int(value[1])


def _check_nhwc(x: Any, name: str) -> None:
  if jnp.ndim(x) != 4:
    raise ValueError(f'{name} must be NHWC (rank 4), got shape {jnp.shape(x)}')


# ----------------------------------------------------------------------------------------------
# Atrous convolution
# ----------------------------------------------------------------------------------------------


def _same_pads(kernel_hw: Sequence[int], rates: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """Padding keeping the size at stride 1: symmetric for odd k, one more at the end for even k."""
  pads = []
  for k, r in zip(kernel_hw, rates):
    total = r * (k - 1)
    pads.append((total // 2, total - total // 2))
  return tuple(pads)


@functools.partial(jax.jit, static_argnames=('strides', 'rates', 'pads', 'dtype', 'precision'))
def _atrous_conv(x, kernel, bias, strides, rates, pads, dtype, precision):
  x = x.astype(dtype)
  kernel = kernel.astype(dtype)
  y = lax.conv_general_dilated(
      x, kernel, window_strides=strides, padding=pads, rhs_dilation=rates,
      dimension_numbers=_CONV_DIMS, precision=precision)
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
  _check_nhwc(x, 'atrous_conv: x')
  if jnp.ndim(kernel) != 4:
    raise ValueError(f'atrous_conv: kernel must be HWIO (rank 4), got shape {jnp.shape(kernel)}')
  if kernel.shape[2] != x.shape[3]:
    raise ValueError(f'atrous_conv: kernel expects {kernel.shape[2]} input channels '
                     f'(HWIO shape {kernel.shape}) but x has {x.shape[3]} (shape {x.shape})')
  if bias is not None and jnp.shape(bias) != (kernel.shape[3],):
    raise ValueError(f'atrous_conv: bias must have shape ({kernel.shape[3]},), '
                     f'got {jnp.shape(bias)}')
  rates = _pair(rate, 'atrous_conv: rate')
  strides = _pair(stride, 'atrous_conv: stride')
  if dtype is None:
    dtype = jnp.result_type(*(a for a in (x, kernel, bias) if a is not None))
  pads = _same_pads(kernel.shape[:2], rates)
  return _atrous_conv(x, kernel, bias, strides, rates, pads, jnp.dtype(dtype), precision)


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
    _check_nhwc(x, f'AtrousConv {self.name}: x')
    kh, kw = _pair(tuple(self.kernel_size), f'AtrousConv {self.name}: kernel_size')
    kernel = self.param('kernel', self.kernel_init, (kh, kw, x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    return atrous_conv(x, kernel, self.rate, bias, self.strides, dtype=self.dtype,
                       precision=self.precision)


# ----------------------------------------------------------------------------------------------
# Max pooling with switches
# ----------------------------------------------------------------------------------------------


def _explicit_pads(padding: Padding, size: Sequence[int], window: Sequence[int],
                   strides: Sequence[int], where: str) -> tuple[tuple[int, int], ...]:
  """Resolves a padding spec to ((top, bottom), (left, right))."""
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == 'VALID':
      return ((0, 0), (0, 0))
    if mode == 'SAME':  # TF/XLA 'SAME': ceil(size / stride) windows, extra padding at the end.
      pads = []
      for n, k, s in zip(size, window, strides):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
      return tuple(pads)
    raise ValueError(f"{where}: padding must be 'VALID', 'SAME', an int or pairs, got {padding!r}")
  if isinstance(padding, (int, np.integer)):
    pads = ((padding, padding), (padding, padding))
  else:
    padding = tuple(padding)
    if len(padding) == 2 and all(isinstance(p, (int, np.integer)) for p in padding):
      pads = ((padding[0], padding[0]), (padding[1], padding[1]))
    elif len(padding) == 2 and all(len(tuple(p)) == 2 for p in padding):
      pads = tuple(tuple(p) for p in padding)
    else:
      raise ValueError(f'{where}: padding must be an int, (ph, pw) or ((top, bottom), '
                       f'(left, right)), got {padding!r}')
  for (lo, hi), k in zip(pads, window):
    if not (0 <= lo <= k // 2 and 0 <= hi <= k // 2):
      raise ValueError(f'{where}: padding {padding!r} must be between 0 and half the window '
                       f'{tuple(window)} (as in PyTorch), got {pads}')
  return tuple((int(lo), int(hi)) for lo, hi in pads)


def _pool_geometry(size: Sequence[int], window: Sequence[int], strides: Sequence[int],
                   pads: Sequence[Sequence[int]], ceil_mode: bool, where: str):
  """Output size and the (possibly ceil-extended) padding, with PyTorch's ceil-mode rule."""
  outs, full_pads = [], []
  for n, k, s, (lo, hi) in zip(size, window, strides, pads):
    span = n + lo + hi - k
    if span < 0:
      raise ValueError(f'{where}: window {tuple(window)} is larger than the padded input '
                       f'{tuple(size)} with padding {tuple(pads)}')
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + lo:  # The last window must start inside the input.
      out -= 1
    outs.append(out)
    full_pads.append((lo, hi + max((out - 1) * s + k - (n + lo + hi), 0)))
  return tuple(outs), tuple(full_pads)


def _lowest(dtype) -> Any:
  if jnp.issubdtype(dtype, jnp.floating):
    return -jnp.inf
  if jnp.issubdtype(dtype, jnp.integer):
    return jnp.iinfo(dtype).min
  raise ValueError(f'max_pool_with_argmax: unsupported dtype {dtype}')


@functools.partial(jax.jit, static_argnames=('window', 'strides', 'pads', 'out_hw'))
def _max_pool_with_argmax(x, window, strides, pads, out_hw):
  n, h, w, c = x.shape
  (kh, kw), (sh, sw), (oh, ow) = window, strides, out_hw
  (pt, pb), (pl, pr) = pads
  padded = any(p for pair in pads for p in pair)
  if padded:
    x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=_lowest(x.dtype))
  rows = np.arange(oh) * sh - pt  # First input row / column of every window.
  cols = np.arange(ow) * sw - pl
  is_float = jnp.issubdtype(x.dtype, jnp.floating)
  best = offset = None
  seen_valid = np.zeros((oh, ow), bool)
  # Visit the window offsets in row-major order, keeping the running max and its offset: a strict
  # '>' keeps the first maximum on ties. Each step reads one strided slice (output-sized).
  for i in range(kh):
    for j in range(kw):
      v = lax.slice(x, (0, i, j, 0), (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                    (1, sh, sw, 1))
      flat = i * w + j  # Offset of this window element in the flat input plane.
      valid = (((rows + i >= 0) & (rows + i < h))[:, None]
               & ((cols + j >= 0) & (cols + j < w))[None, :])
      if best is None:
        best, offset = v, jnp.full(v.shape, flat, jnp.int32)
      else:
        take = v > best
        if is_float:
          take = take | jnp.isnan(v)  # NaN wins, as PyTorch.
        # Padding (-inf) never wins a comparison; but if the running max still sits in padding
        # the first real element must replace it, even an input -inf (static mask).
        first_valid = valid & ~seen_valid
        if padded and first_valid.any():
          take = take | first_valid[None, :, :, None]
        best = jnp.where(take, v, best)
        offset = jnp.where(take, flat, offset)
      seen_valid |= valid
  base = (rows[:, None] * w + cols[None, :]).astype(np.int32)
  return best, offset + base[None, :, :, None]


def max_pool_with_argmax(x: Array, window: Pair = (2, 2), strides: Pair | None = (2, 2),
                         padding: Padding = 'VALID', ceil_mode: bool = False
                         ) -> tuple[Array, Array]:
  """Max pooling that also returns the switches (argmax positions), as PyTorch's return_indices.

  Args:
    x: (N, H, W, C) input (float or int).
    window: pooling window (kh, kw) or int.
    strides: pooling strides; None means equal to `window`.
    padding: 'VALID', 'SAME' (TF/XLA), or explicit PyTorch-style padding: an int, (ph, pw) or
      ((top, bottom), (left, right)), each at most half the window; padded cells never win.
    ceil_mode: PyTorch/Caffe ceil mode for 'VALID' or explicit padding: count a last partial
      window, unless it would start in the padding. Not allowed with 'SAME'.

  Returns:
    (pooled, switches): pooled (N, OH, OW, C) with x's dtype, switches int32 of the same shape
    holding h * W + w of the chosen element in its (N, C) input plane. Ties pick the first
    maximum in row-major window order. Gradients flow to the chosen element.
  """
  _check_nhwc(x, 'max_pool_with_argmax: x')
  window = _pair(window, 'max_pool_with_argmax: window')
  strides = window if strides is None else _pair(strides, 'max_pool_with_argmax: strides')
  if ceil_mode and isinstance(padding, str) and padding.upper() == 'SAME':
    raise ValueError("max_pool_with_argmax: ceil_mode=True needs 'VALID' or explicit padding; "
                     "'SAME' already covers the whole input")
  size = x.shape[1:3]
  pads = _explicit_pads(padding, size, window, strides, 'max_pool_with_argmax')
  out_hw, pads = _pool_geometry(size, window, strides, pads, ceil_mode, 'max_pool_with_argmax')
  return _max_pool_with_argmax(x, window, strides, pads, out_hw)


@functools.partial(jax.jit, static_argnames=('strides', 'origin', 'output_hw'))
def _max_unpool(pooled, switches, strides, origin, output_hw):
  n, oh, ow, c = pooled.shape
  (sh, sw), (pt, pl), (h, w) = strides, origin, output_hw
  # Input-plane coordinates of every cell of the upsampled (oh*sh, ow*sw) grid, which starts at
  # (-pt, -pl); cells outside the plane get flat index -1 so that no switch can match them.
  r = (np.arange(oh)[:, None] * sh + np.arange(sh)[None, :] - pt)[:, :, None, None]
  q = (np.arange(ow)[:, None] * sw + np.arange(sw)[None, :] - pl)[None, None, :, :]
  inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
  grid = np.where(inside, r * w + q, -1).astype(np.int32)  # (oh, sh, ow, sw)
  # Each pooled value lands on the cell of its stride cell whose flat index equals its switch.
  hit = switches[:, :, None, :, None, :] == grid[None, :, :, :, :, None]
  up = jnp.where(hit, pooled[:, :, None, :, None, :], jnp.zeros((), pooled.dtype))
  up = up.reshape(n, oh * sh, ow * sw, c)
  # Crop (negative) or zero-pad the grid to the plane [0, h) x [0, w).
  zero = jnp.zeros((), pooled.dtype)
  return lax.pad(up, zero, ((0, 0, 0), (-pt, h - (oh * sh - pt), 0),
                            (-pl, w - (ow * sw - pl), 0), (0, 0, 0)))


def max_unpool(pooled: Array, switches: Array, output_shape: Sequence[int],
               window: Pair = (2, 2), strides: Pair | None = None,
               padding: Padding = 'VALID') -> Array:
  """Inverse of `max_pool_with_argmax`: zeros except pooled values at their switch positions.

  Written as a compare-and-select over the upsampled grid (no scatter), so the pooling must not
  overlap (strides >= window, e.g. DeconvNet's 2x2 stride 2); overlapping windows raise a
  ValueError. Gradients flow back to each pooled value from its switch position.

  Args:
    pooled: (N, OH, OW, C) pooled values.
    switches: int (N, OH, OW, C) switches from `max_pool_with_argmax` (h * W + w).
    output_shape: (H, W) of the map before pooling; the pooled size must equal the pooling output
      of (H, W) with these window/strides/padding, in floor or ceil mode.
    window, strides, padding: the pooling's geometry (strides None: equal to window).

  Returns:
    (N, H, W, C) array of pooled.dtype.
  """
  _check_nhwc(pooled, 'max_unpool: pooled')
  if jnp.shape(switches) != jnp.shape(pooled):
    raise ValueError(f'max_unpool: switches shape {jnp.shape(switches)} must equal pooled shape '
                     f'{jnp.shape(pooled)}')
  if not jnp.issubdtype(switches.dtype, jnp.integer):
    raise ValueError(f'max_unpool: switches must be integers, got dtype {switches.dtype}')
  output_hw = tuple(output_shape)
  if len(output_hw) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1
                                    for v in output_hw):
    raise ValueError(f'max_unpool: output_shape must be (H, W) of the pre-pool map, '
                     f'got {output_shape!r}')
  output_hw = (int(output_hw[0]), int(output_hw[1]))
  window = _pair(window, 'max_unpool: window')
  strides = window if strides is None else _pair(strides, 'max_unpool: strides')
  if any(s < k for s, k in zip(strides, window)):
    raise ValueError(f'max_unpool: overlapping pooling (window {window}, strides {strides}) is '
                     'not supported; the compare-and-select unpool needs strides >= window')
  pads = _explicit_pads(padding, output_hw, window, strides, 'max_unpool')
  expected = {_pool_geometry(output_hw, window, strides, pads, ceil, 'max_unpool')[0]
              for ceil in (False, True)}
  if pooled.shape[1:3] not in expected:
    raise ValueError(f'max_unpool: pooled spatial size {pooled.shape[1:3]} does not come from '
                     f'output_shape {output_hw} with window {window}, strides {strides}, padding '
                     f'{padding!r} (expected one of {sorted(expected)}); pass the pre-pool (H, W)')
  origin = (pads[0][0], pads[1][0])
  return _max_unpool(pooled, switches.astype(jnp.int32), strides, origin, output_hw)
