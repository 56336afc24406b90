"""Max pooling, and DeconvNet's max pooling with switches and its scatter-free unpooling.

- `max_pool`: the models' max pooling (nn.max_pool's values) with a fused gradient.
- `max_pool_with_argmax` / `max_unpool`: DeconvNet's pooling switches. Switches follow PyTorch's
  `return_indices` convention (int32 flat index h * W + w into each input plane), ties go to the
  first maximum in row-major window order and NaN wins, as in PyTorch's kernel. `max_unpool` is a
  compare-and-select on the upsampled grid, not a scatter, so it needs non-overlapping windows
  (strides >= window, as DeconvNet's 2x2/2 pooling); overlapping windows raise a ValueError.

Padding is 'VALID', 'SAME' (TF/XLA) or PyTorch's explicit padding, with PyTorch's ceil mode. Max
pooling with padding or ceil mode copies the input once (padded with -inf); 'VALID' does not.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseg.ops import geometry
from jaxseg.ops.geometry import Array, Pads, Pair, Padding


def _explicit_pads(padding: Padding, size: Sequence[int], window: Sequence[int],
                   strides: Sequence[int], where: str) -> Pads:
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
  pads = geometry.explicit_pairs(padding, where)
  for (lo, hi), k in zip(pads, window):
    if not (0 <= lo <= k // 2 and 0 <= hi <= k // 2):
      raise ValueError(f'{where}: padding {padding!r} must be between 0 and half the window '
                       f'{tuple(window)} (as in PyTorch), got {pads}')
  return pads


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


def _pooling(x: Array, window: Pair, strides: Pair | None, padding: Padding, ceil_mode: bool,
             where: str):
  """Checks a pooling's arguments -> (window, strides, pads, out_hw), all static int pairs."""
  geometry.check_nhwc(x, f'{where}: x')
  window = geometry.as_pair(window, f'{where}: window')
  strides = window if strides is None else geometry.as_pair(strides, f'{where}: strides')
  if ceil_mode and isinstance(padding, str) and padding.upper() == 'SAME':
    raise ValueError(f"{where}: ceil_mode=True needs 'VALID' or explicit padding; "
                     "'SAME' already covers the whole input")
  size = x.shape[1:3]
  pads = _explicit_pads(padding, size, window, strides, where)
  out_hw, pads = _pool_geometry(size, window, strides, pads, ceil_mode, where)
  return window, strides, pads, out_hw


def _lowest(dtype) -> Any:
  if jnp.issubdtype(dtype, jnp.floating):
    return -jnp.inf
  if jnp.issubdtype(dtype, jnp.integer):
    return jnp.iinfo(dtype).min
  raise ValueError(f'max_pool_with_argmax: unsupported dtype {dtype}')


@functools.partial(jax.jit, static_argnames=('window', 'strides', 'pads', 'out_hw'))
def _max_pool_with_argmax(x, window, strides, pads, out_hw):
  _, h, w, _ = x.shape
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
      v = geometry.strided_slice(x, (i, j), strides, out_hw)
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
  window, strides, pads, out_hw = _pooling(x, window, strides, padding, ceil_mode,
                                           'max_pool_with_argmax')
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
  _, h, w, _ = x.shape
  (kh, kw), (sh, sw), ((pt, pb), (pl, pr)), (oh, ow) = window, strides, pads, y.shape[1:3]
  x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=_lowest(x.dtype))
  hp, wp = x.shape[1:3]
  zero = jnp.zeros((), dy.dtype)
  taken = dx = None
  for i in range(kh):
    for j in range(kw):
      v = geometry.strided_slice(x, (i, j), strides, (oh, ow))
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
  window, strides, pads, _ = _pooling(x, window, strides, padding, ceil_mode, 'max_pool')
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
  geometry.check_nhwc(pooled, 'max_unpool: pooled')
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
  window = geometry.as_pair(window, 'max_unpool: window')
  strides = window if strides is None else geometry.as_pair(strides, 'max_unpool: strides')
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
