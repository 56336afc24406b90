"""The layout and geometry every op shares: NHWC inputs, HWIO kernels, sizes and padding specs.

Argument checks (`as_pair`, `check_nhwc`), explicit padding pairs (`explicit_pairs`), convolution
output sizes, the strided slice a window offset reads, and lax's convolution in this layout, which
both the ops' dispatch and the XLA:CPU formulations call.
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Pair = Union[int, Sequence[int]]
# 'VALID', 'SAME', an int (both sides of both dims), (ph, pw), or ((top, bottom), (left, right)).
Padding = Union[str, int, Sequence[int], Sequence[Sequence[int]]]
Pads = tuple[tuple[int, int], tuple[int, int]]
CONV_DIMS = ('NHWC', 'HWIO', 'NHWC')


def as_pair(value: Pair, name: str) -> tuple[int, int]:
  """An int or a length-2 sequence of positive ints -> (int, int)."""
  if isinstance(value, (int, np.integer)):
    value = (value, value)
  value = tuple(value)
  if len(value) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in value):
    raise ValueError(f'{name} must be a positive int or a pair of positive ints, got {value!r}')
  return int(value[0]), int(value[1])


def check_nhwc(x: Any, name: str) -> None:
  if jnp.ndim(x) != 4:
    raise ValueError(f'{name} must be NHWC (rank 4), got shape {jnp.shape(x)}')


def explicit_pairs(padding: Padding, where: str) -> Pads:
  """An int, (ph, pw) or ((top, bottom), (left, right)) -> ((top, bottom), (left, right))."""
  if isinstance(padding, (int, np.integer)):
    return ((int(padding),) * 2,) * 2
  padding = tuple(padding)
  if len(padding) == 2 and all(isinstance(p, (int, np.integer)) for p in padding):
    return tuple((int(p), int(p)) for p in padding)
  if len(padding) == 2 and all(len(tuple(p)) == 2 for p in padding):
    return tuple((int(lo), int(hi)) for lo, hi in padding)
  raise ValueError(f'{where}: padding must be an int, (ph, pw) or ((top, bottom), (left, right)), '
                   f'got {padding!r}')


def conv_out_size(n: int, k: int, s: int, r: int, pad: tuple[int, int]) -> int:
  """Output length of a conv: input n, kernel k, stride s, dilation r, padding (lo, hi)."""
  return (n + pad[0] + pad[1] - r * (k - 1) - 1) // s + 1


def strided_slice(x: Array, start_hw: Sequence[int], strides: Sequence[int],
                  out_hw: Sequence[int]) -> Array:
  """x[:, h0::sh, w0::sw] cut to out_hw (N, OH, OW, C): what one window offset reads."""
  n, _, _, c = x.shape
  (h0, w0), (sh, sw), (oh, ow) = start_hw, strides, out_hw
  return lax.slice(x, (0, h0, w0, 0), (n, h0 + (oh - 1) * sh + 1, w0 + (ow - 1) * sw + 1, c),
                   (1, sh, sw, 1))


def lax_conv(x, kernel, strides, pads, rates, precision):
  """lax.conv_general_dilated for NHWC x and an HWIO kernel, with kernel dilation `rates`."""
  return lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=rates,
                                  dimension_numbers=CONV_DIMS, precision=precision)
