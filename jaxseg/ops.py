"""Segmentation ops the papers need: atrous convolution and max pooling with switches.

All ops take NHWC arrays, are jit-compiled (static geometry is resolved in Python, then a jitted
kernel runs, so they also inline into an outer `jax.jit`) and are differentiable.

- `atrous_conv` / `AtrousConv`: dilated ("atrous", PSPNet/DeepLab) convolution whose padding keeps
  the spatial size for any rate: pad = rate * (k - 1) // 2 on each side for odd k, the same numbers
  as torch `conv2d(padding=dilation, dilation=dilation)` for 3x3 (and torchvision ResNet, stride 2).
  Max pooling with padding or ceil mode copies the input once (padded with -inf); 'VALID' does not.
- `max_pool`: the models' max pooling (nn.max_pool's values) with a fused gradient.
- `max_pool_with_argmax` / `max_unpool`: DeconvNet's pooling switches. Switches follow PyTorch's
  `return_indices` convention (int32 flat index h * W + w into each input plane), ties go to the
  first maximum in row-major window order and NaN wins, as in PyTorch's kernel. `max_unpool` is a
  compare-and-select on the upsampled grid, not a scatter, so it needs non-overlapping windows
  (strides >= window, as DeconvNet's 2x2/2 pooling); overlapping windows raise a ValueError.
"""
from __future__ import annotations

import functools
import os
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


@functools.partial(jax.jit, static_argnames=('strides', 'rates', 'pads', 'dtype', 'precision',
                                             'impl'))
def _atrous_conv(x, kernel, bias, strides, rates, pads, dtype, precision, impl):
  del impl  # Static: a jit cache key, so set_conv_impl() takes effect.
  x = x.astype(dtype)
  kernel = kernel.astype(dtype)
  y = conv2d(x, kernel, strides, pads, rates, precision)
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
  return _atrous_conv(x, kernel, bias, strides, rates, pads, jnp.dtype(dtype), precision,
                      _CONV_IMPL[0])


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
  return lax.reduce_window(x, jnp.array(_lowest(x.dtype), x.dtype), lax.max, (1, *window, 1),
                           (1, *strides, 1), ((0, 0), *pads, (0, 0)))


def _max_pool_fwd(x, window, strides, pads):
  y = _max_pool(x, window, strides, pads)
  return y, (x, y)


def _max_pool_bwd(window, strides, pads, residuals, dy):
  """Routes dy to the first maximum of each window (row-major), as XLA's select_and_scatter.

  Written as one strided slice, compare and interior-padded add per window offset: all
  elementwise, so XLA fuses it into a single loop. JAX's own rule (a variadic reduce_window
  carrying materialised index iotas, then a scatter) is 7x slower on XLA:CPU (2x320x320x64).
  """
  x, y = residuals
  n, h, w, c = x.shape
  (kh, kw), (sh, sw), ((pt, pb), (pl, pr)), (oh, ow) = window, strides, pads, y.shape[1:3]
  x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=_lowest(x.dtype))
  hp, wp = x.shape[1:3]
  zero = jnp.zeros((), dy.dtype)
  taken = dx = None
  for i in range(kh):
    for j in range(kw):
      v = lax.slice(x, (0, i, j, 0), (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                    (1, sh, sw, 1))
      hit = v == y
      if taken is None:
        taken = hit
      else:
        hit, taken = hit & ~taken, taken | hit
      part = lax.pad(jnp.where(hit, dy, zero), zero,
                     ((0, 0, 0), (i, hp - i - (oh - 1) * sh - 1, sh - 1),
                      (j, wp - j - (ow - 1) * sw - 1, sw - 1), (0, 0, 0)))
      dx = part if dx is None else dx + part
  return (dx[:, pt:pt + h, pl:pl + w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
_max_pool_jit = jax.jit(_max_pool, static_argnums=(1, 2, 3))


def max_pool(x: Array, window: Pair = (2, 2), strides: Pair | None = None,
             padding: Padding = 'VALID', ceil_mode: bool = False) -> Array:
  """Max pooling (`nn.max_pool`'s values) with a fused, scatter-free gradient.

  Padding and ceil mode follow `max_pool_with_argmax`. The gradient goes to the first maximum of
  each window in row-major order (XLA's select_and_scatter rule); a window whose values are NaN
  passes no gradient.
  """
  _check_nhwc(x, 'max_pool: x')
  window = _pair(window, 'max_pool: window')
  strides = window if strides is None else _pair(strides, 'max_pool: strides')
  if ceil_mode and isinstance(padding, str) and padding.upper() == 'SAME':
    raise ValueError("max_pool: ceil_mode=True needs 'VALID' or explicit padding")
  size = x.shape[1:3]
  pads = _explicit_pads(padding, size, window, strides, 'max_pool')
  _, pads = _pool_geometry(size, window, strides, pads, ceil_mode, 'max_pool')
  return _max_pool_jit(x, window, strides, pads)


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


# ----------------------------------------------------------------------------------------------
# Convolutions, formulated for speed on XLA:CPU
# ----------------------------------------------------------------------------------------------
# XLA:CPU's convolution is fast for the forward pass and the input gradient of ordinary 3x3 convs,
# but slow (20-60x off the matmul rate) for some shapes the papers' networks are made of, while
# its matmuls are fast. Measured on a 2-core Xeon (BENCHMARKS.md):
#   - the kernel gradient of every conv (XLA lowers it as a conv with batch and features swapped);
#   - 1x1 convs (ResNet bottlenecks, FCN fc7 and score layers), forward and backward;
#   - large kernels on small maps (FCN/DeconvNet fc6: 7x7 on 10x10), which are mostly padding;
#   - transposed convs: strided ones (FCN upsampling) multiply the 1-in-s^2 dilated zeros, and
#     DeconvNet's fc6_deconv (7x7, 4096 -> 512 on a 4x4 map padded to 16x16) takes a minute.
# So on the CPU `conv2d` / `conv_transpose` write these as matmuls: 1x1 -> one dot; large kernels
# on small maps -> im2col patches @ kernel; transposed convs -> x @ kernel, then the per-tap
# products are added into place ("col2im"), touching no zeros; and every other conv keeps XLA's
# forward and input gradient with a custom VJP whose kernel gradient is patches^T @ dy. Values are
# the same convolution up to float summation order. Other backends (GPU/TPU: cuDNN, MXU) keep
# lax's convolution. `JAXSEG_CONV_IMPL=lax` (or `set_conv_impl('lax')`) forces lax everywhere.

CONV_IMPLS = ('auto', 'lax')
_CONV_IMPL = [os.environ.get('JAXSEG_CONV_IMPL', 'auto')]
# Largest im2col patch tensor (bytes) materialised for a big-kernel forward (fc6).
PATCH_BYTES = 256 * 2**20
# im2col patches per block of output rows in the kernel gradient (cache-sized).
BLOCK_BYTES = 3 * 2**20
Pads = tuple[tuple[int, int], tuple[int, int]]


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


def _lax_conv(x, kernel, strides, pads, rates, precision):
  return lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=rates,
                                  dimension_numbers=_CONV_DIMS, precision=precision)


def _conv_out_size(n: int, k: int, s: int, r: int, pad: tuple[int, int]) -> int:
  return (n + pad[0] + pad[1] - r * (k - 1) - 1) // s + 1


def _taps(x, kernel_hw, strides, pads, rates, out_hw):
  """Yields (i, j, slice of the padded x that tap (i, j) of the kernel reads), (N, OH, OW, C)."""
  if any(p for pair in pads for p in pair):
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  n, _, _, c = x.shape
  (sh, sw), (rh, rw), (oh, ow) = strides, rates, out_hw
  for i in range(kernel_hw[0]):
    for j in range(kernel_hw[1]):
      yield i, j, lax.slice(x, (0, i * rh, j * rw, 0),
                            (n, i * rh + (oh - 1) * sh + 1, j * rw + (ow - 1) * sw + 1, c),
                            (1, sh, sw, 1))


def _patches(x, kernel_hw, strides, pads, rates, out_hw):
  """im2col: (N, OH, OW, kh * kw * C), tap-major, matching kernel.reshape(kh * kw * C, O)."""
  return jnp.concatenate([t for _, _, t in _taps(x, kernel_hw, strides, pads, rates, out_hw)],
                         axis=-1)


def _matmul(a, b, precision):
  """a (..., K) @ b (K, M) as one 2-D dot: XLA:CPU then needs no transposing copies."""
  return jnp.dot(a.reshape(-1, a.shape[-1]), b, precision=precision).reshape(
      *a.shape[:-1], b.shape[-1])


def _contract_rows(a, b, precision, accumulate=None):
  """a (..., K)^T @ b (..., M) summed over all leading dims, as one 2-D dot -> (K, M)."""
  return jnp.dot(a.reshape(-1, a.shape[-1]).T, b.reshape(-1, b.shape[-1]), precision=precision,
                 preferred_element_type=accumulate)


def _kernel_grad(x, dy, kernel_shape, strides, pads, rates, precision):
  """d conv / d kernel as matmuls, patches^T @ dy, a block of output rows at a time.

  A loop over blocks of about BLOCK_BYTES of im2col patches keeps each block's patches in
  cache: 2-4x faster than one dot per kernel tap over the whole map or whole-map patches (which
  stream the activations through memory 9 times), and 2-6x faster than XLA:CPU's own.
  """
  kh, kw, c, o = kernel_shape
  n, _, _, _ = x.shape
  (sh, sw), (rh, rw) = strides, rates
  oh, ow = dy.shape[1:3]
  row_bytes = n * ow * kh * kw * c * x.dtype.itemsize
  rows = int(max(1, min(oh, BLOCK_BYTES // row_bytes)))
  blocks = -(-oh // rows)
  # Zero rows of dy past the end contribute nothing; pad x so every block's slice is in range.
  dy = jnp.pad(dy, ((0, 0), (0, blocks * rows - oh), (0, 0), (0, 0)))
  in_rows = (rows - 1) * sh + (kh - 1) * rh + 1  # Padded-input rows one block reads.
  total = (blocks - 1) * rows * sh + in_rows
  h_pad = x.shape[1] + pads[0][0] + pads[0][1]
  x = jnp.pad(x, ((0, 0), (pads[0][0], pads[0][1] + max(0, total - h_pad)), pads[1], (0, 0)))

  def block(grad, b):
    xb = lax.dynamic_slice_in_dim(x, b * rows * sh, in_rows, axis=1)
    dyb = lax.dynamic_slice_in_dim(dy, b * rows, rows, axis=1)
    patches = _patches(xb, (kh, kw), strides, ((0, 0), (0, 0)), rates, (rows, ow))
    return grad + _contract_rows(patches, dyb, precision, accumulate), None

  accumulate = jnp.promote_types(dy.dtype, jnp.float32)  # bfloat16 sums in float32.
  zeros = jnp.zeros((kh * kw * c, o), accumulate)
  if blocks == 1:
    grad, _ = block(zeros, 0)
  else:
    grad, _ = lax.scan(block, zeros, jnp.arange(blocks))
  return grad.reshape(kh, kw, c, o)


def _grads_from_dy_patches(x, kernel, dy, pads, rates, precision):
  """Both gradients of a stride-1 conv from one im2col of dy (k*k*O values per input cell).

  dx = patches(dy) @ flipped kernel and dkernel = x^T @ patches(dy): two large matmuls. The
  better choice when the conv narrows channels (C > O), as PSPNet's heads (4096 -> 512).
  """
  kh, kw, c, o = kernel.shape
  (rh, rw), (h, w) = rates, x.shape[1:3]
  dy_pads = ((rh * (kh - 1) - pads[0][0], rh * (kh - 1) - pads[0][1]),
             (rw * (kw - 1) - pads[1][0], rw * (kw - 1) - pads[1][1]))
  patches = _patches(dy, (kh, kw), (1, 1), dy_pads, rates, (h, w))  # Tap t' = k - 1 - t.
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2).reshape(kh * kw * o, c)
  dx = _matmul(patches, flipped, precision)
  dk = _contract_rows(x, patches, precision).reshape(c, kh, kw, o)
  return dx, jnp.flip(dk, (1, 2)).transpose(1, 2, 0, 3)


def _use_dy_patches(x, kernel, strides, pads, rates) -> bool:
  kh, kw, c, o = kernel.shape
  n, h, w, _ = x.shape
  fits = n * h * w * kh * kw * o * x.dtype.itemsize <= PATCH_BYTES
  in_range = all(r * (k - 1) >= max(p) for k, r, p in zip((kh, kw), rates, pads))
  return strides == (1, 1) and c >= 4 * o and fits and in_range


def _conv_output_taps(x, kernel, pads, rates, precision):
  """A stride-1 conv as one matmul to every tap's output, x @ (C, kh*kw*O), then shifted adds.

  For convs that narrow channels a lot (PSPNet's 4096 -> 512 head) the products are k*k*O values
  per cell, 8x fewer than im2col's k*k*C, and the single large matmul runs near the machine's
  matmul peak where XLA:CPU's convolution does not. Its autodiff is two large matmuls as well.
  """
  kh, kw, c, o = kernel.shape
  n, h, w, _ = x.shape
  (rh, rw), ((pt, pb), (pl, pr)) = rates, pads
  oh, ow = h + pt + pb - rh * (kh - 1), w + pl + pr - rw * (kw - 1)
  y = _matmul(x, kernel.transpose(2, 0, 1, 3).reshape(c, kh * kw * o), precision)
  # Output (a, b) adds tap (i, j)'s product at input (a + i*r - pt, b + j*r - pl).
  y = jnp.pad(y.reshape(n, h, w, kh, kw, o), ((0, 0), (pt, pb), (pl, pr), (0, 0), (0, 0), (0, 0)))
  out = None
  for i in range(kh):
    for j in range(kw):
      part = y[:, i * rh:i * rh + oh, j * rw:j * rw + ow, i, j]
      out = part if out is None else out + part
  return out


def _use_output_taps(x, kernel, strides, out_hw) -> bool:
  kh, kw, c, o = kernel.shape
  out_bytes = x.shape[0] * x.shape[1] * x.shape[2] * kh * kw * o * x.dtype.itemsize
  return strides == (1, 1) and c >= 8 * o and out_bytes <= PATCH_BYTES and min(out_hw) > 0


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_matmul_grad(x, kernel, strides, pads, rates, precision):
  """lax's convolution, with the kernel gradient computed as a matmul."""
  return _lax_conv(x, kernel, strides, pads, rates, precision)


def _conv_matmul_grad_fwd(x, kernel, strides, pads, rates, precision):
  return _lax_conv(x, kernel, strides, pads, rates, precision), (x, kernel)


def _conv_matmul_grad_bwd(strides, pads, rates, precision, residuals, dy):
  x, kernel = residuals
  if _use_dy_patches(x, kernel, strides, pads, rates):
    dx, dk = _grads_from_dy_patches(x, kernel, dy, pads, rates, precision)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)
  _, input_vjp = jax.vjp(lambda x: _lax_conv(x, kernel, strides, pads, rates, precision), x)
  dx, = input_vjp(dy)
  dk = _kernel_grad(x, dy, kernel.shape, strides, pads, rates, precision)
  return dx, dk.astype(kernel.dtype)


_conv_matmul_grad.defvjp(_conv_matmul_grad_fwd, _conv_matmul_grad_bwd)


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
    return _lax_conv(x, kernel, strides, pads, rates, precision)
  kh, kw, c, o = kernel.shape
  n, h, w, _ = x.shape
  out_hw = tuple(_conv_out_size(*a) for a in zip((h, w), (kh, kw), strides, rates, pads))
  if (kh, kw) == (1, 1):  # A matmul over channels, on the strided (and padded) grid.
    tap = next(t for _, _, t in _taps(x, (1, 1), strides, pads, rates, out_hw))
    return _matmul(tap, kernel[0, 0], precision)
  patch_bytes = n * out_hw[0] * out_hw[1] * kh * kw * c * x.dtype.itemsize
  if kh * kw >= 25 and patch_bytes <= PATCH_BYTES:  # Big kernel (fc6): im2col + one matmul.
    patches = _patches(x, (kh, kw), strides, pads, rates, out_hw)
    return _matmul(patches, kernel.reshape(kh * kw * c, o), precision)
  if _use_output_taps(x, kernel, strides, out_hw):  # Narrowing head (PSPNet cls 4096 -> 512).
    return _conv_output_taps(x, kernel, pads, rates, precision)
  return _conv_matmul_grad(x, kernel, strides, pads, rates, precision)


def _fold(y, strides, out_hw):
  """col2im: y (N, h, w, kh, kw, O) of per-tap products -> (N, (h-1)*s + kh, ..., O), summed.

  Tap (a, b) of input cell (i, j) lands on output (s_h * i + a, s_w * j + b). With q = a // s
  and r = a % s that is block i + q, offset r: the sum over q of block-shifted copies.
  """
  n, h, w, kh, kw, o = y.shape
  sh, sw = strides
  qh, qw = -(-kh // sh), -(-kw // sw)  # Blocks a kernel spans.
  y = jnp.pad(y, ((0, 0), (0, 0), (0, 0), (0, qh * sh - kh), (0, qw * sw - kw), (0, 0)))
  y = y.reshape(n, h, w, qh, sh, qw, sw, o)
  out = None
  for a in range(qh):
    for b in range(qw):
      # Block (i + a, j + b) of the (h + qh - 1, w + qw - 1) block grid gets y[:, i, j, a, :, b].
      part = jnp.pad(y[:, :, :, a, :, b, :, :],
                     ((0, 0), (a, qh - 1 - a), (b, qw - 1 - b), (0, 0), (0, 0), (0, 0)))
      out = part if out is None else out + part
  out = out.transpose(0, 1, 3, 2, 4, 5).reshape(n, (h + qh - 1) * sh, (w + qw - 1) * sw, o)
  return out[:, :out_hw[0], :out_hw[1]]


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
  kh, kw, o, c = kernel.shape
  n, h, w, _ = x.shape
  full = ((h - 1) * strides[0] + kh, (w - 1) * strides[1] + kw)
  out_hw = (full[0] - sum(pads[0]), full[1] - sum(pads[1]))
  if min(out_hw) < 1 or any(p < 0 for pair in pads for p in pair):
    raise ValueError(f'conv_transpose: padding {pads} must be >= 0 and leave a non-empty output '
                     f'(full size {full})')
  fold_bytes = n * h * w * kh * kw * o * x.dtype.itemsize
  use_fold = _use_matmul_forms() and (
      strides != (1, 1) or (kh * kw >= 25 and fold_bytes <= PATCH_BYTES))
  if use_fold:  # Every input cell times the whole kernel, added into place: no zeros touched.
    y = _matmul(x, kernel.reshape(kh * kw * o, c).T, precision).reshape(n, h, w, kh, kw, o)
    out = _fold(y, strides, full)
    return out[:, pads[0][0]:pads[0][0] + out_hw[0], pads[1][0]:pads[1][0] + out_hw[1]]
  # The gradient of a convolution: a conv of the (dilated) input with the flipped kernel.
  flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
  conv_pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), pads))
  if strides == (1, 1) and all(p >= 0 for pair in conv_pads for p in pair):
    return conv2d(x, flipped, (1, 1), conv_pads, (1, 1), precision)
  return lax.conv_general_dilated(x, flipped, (1, 1), conv_pads, lhs_dilation=strides,
                                  dimension_numbers=_CONV_DIMS, precision=precision)


def _conv_padding(padding: Padding, size: Sequence[int], kernel_hw: Sequence[int],
                  strides: Sequence[int], rates: Sequence[int], where: str) -> Pads:
  """nn.Conv's padding spec ('SAME', 'VALID', int, (ph, pw) or pairs) -> explicit pairs."""
  if isinstance(padding, str):
    if padding.upper() not in ('SAME', 'VALID'):
      raise ValueError(f"{where}: padding must be 'SAME', 'VALID', an int or pairs, "
                       f'got {padding!r}')
    dilated = [r * (k - 1) + 1 for k, r in zip(kernel_hw, rates)]
    return tuple(lax.padtype_to_pads(tuple(size), dilated, tuple(strides), padding.upper()))
  if isinstance(padding, (int, np.integer)):
    return ((int(padding),) * 2,) * 2
  padding = tuple(padding)
  if len(padding) == 2 and all(isinstance(p, (int, np.integer)) for p in padding):
    return tuple((int(p), int(p)) for p in padding)
  if len(padding) == 2 and all(len(tuple(p)) == 2 for p in padding):
    return tuple((int(lo), int(hi)) for lo, hi in padding)
  raise ValueError(f'{where}: padding must be an int, (ph, pw) or ((top, bottom), (left, right)), '
                   f'got {padding!r}')


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
    where = f'Conv {self.name}'
    _check_nhwc(x, f'{where}: x')
    kernel_hw = _pair(tuple(self.kernel_size), f'{where}: kernel_size')
    strides = _pair(self.strides, f'{where}: strides')
    rates = _pair(self.kernel_dilation, f'{where}: kernel_dilation')
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
    where = f'ConvTranspose {self.name}'
    _check_nhwc(x, f'{where}: x')
    kernel_hw = _pair(tuple(self.kernel_size), f'{where}: kernel_size')
    strides = _pair(self.strides, f'{where}: strides')
    if isinstance(self.padding, str):
      raise ValueError(f"{where}: padding is torch's crop (int or pairs), got {self.padding!r}")
    pads = _conv_padding(self.padding, x.shape[1:3], kernel_hw, strides, (1, 1), where)
    x, kernel, bias = self._params(x, kernel_hw + (self.features, x.shape[-1]))
    y = conv_transpose(x, kernel, strides, pads, self.precision)
    return y if bias is None else y + bias
