"""Convolutions formulated for speed on XLA:CPU: matmuls, col2im, custom VJPs and their block sizes.

XLA:CPU's convolution is fast for the forward pass and the input gradient of ordinary 3x3 convs,
but slow (20-60x off the matmul rate) for some shapes the papers' networks are made of, while
its matmuls are fast. Measured on a 2-core Xeon (BENCHMARKS.md):
  - the kernel gradient of every conv (XLA lowers it as a conv with batch and features swapped);
  - 1x1 convs (ResNet bottlenecks, FCN fc7 and score layers), forward and backward;
  - large kernels on small maps (FCN/DeconvNet fc6: 7x7 on 10x10), which are mostly padding;
  - transposed convs: strided ones (FCN upsampling) multiply the 1-in-s^2 dilated zeros, and
    DeconvNet's fc6_deconv (7x7, 4096 -> 512 on a 4x4 map padded to 16x16) takes a minute.
So on the CPU `conv2d` / `conv_transpose` write these as matmuls: 1x1 -> one dot; large kernels
on small maps -> im2col patches @ kernel; transposed convs -> x @ kernel, then the per-tap
products are added into place ("col2im"), touching no zeros; and every other conv keeps XLA's
forward and input gradient with a custom VJP whose kernel gradient is patches^T @ dy. Values are
the same convolution up to float summation order.

Which back-end runs these is `jaxseg.ops.conv`'s choice (`set_conv_impl`); this module only holds
the formulations and the size heuristics that pick among them.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.ops import geometry
from jaxseg.ops.geometry import Array, Pads

# Largest im2col patch tensor (bytes) materialised for a big-kernel forward (fc6).
PATCH_BYTES = 256 * 2**20
# im2col patches per block of output rows in the kernel gradient (cache-sized).
BLOCK_BYTES = 3 * 2**20


def _taps(x, kernel_hw, strides, pads, rates, out_hw):
  """Yields (i, j, slice of the padded x that tap (i, j) of the kernel reads), (N, OH, OW, C)."""
  if any(p for pair in pads for p in pair):
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  rh, rw = rates
  for i in range(kernel_hw[0]):
    for j in range(kernel_hw[1]):
      yield i, j, geometry.strided_slice(x, (i * rh, j * rw), strides, out_hw)


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
  return geometry.lax_conv(x, kernel, strides, pads, rates, precision)


def _conv_matmul_grad_fwd(x, kernel, strides, pads, rates, precision):
  return geometry.lax_conv(x, kernel, strides, pads, rates, precision), (x, kernel)


def _conv_matmul_grad_bwd(strides, pads, rates, precision, residuals, dy):
  x, kernel = residuals
  if _use_dy_patches(x, kernel, strides, pads, rates):
    dx, dk = _grads_from_dy_patches(x, kernel, dy, pads, rates, precision)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)
  _, input_vjp = jax.vjp(
      lambda x: geometry.lax_conv(x, kernel, strides, pads, rates, precision), x)
  dx, = input_vjp(dy)
  dk = _kernel_grad(x, dy, kernel.shape, strides, pads, rates, precision)
  return dx, dk.astype(kernel.dtype)


_conv_matmul_grad.defvjp(_conv_matmul_grad_fwd, _conv_matmul_grad_bwd)


def conv2d(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads,
           rates: tuple[int, int], precision) -> Array:
  """`conv.conv2d`'s numbers (static int strides, pads, rates) by the fastest CPU formulation."""
  kh, kw, c, o = kernel.shape
  n, h, w, _ = x.shape
  out_hw = tuple(geometry.conv_out_size(*a) for a in zip((h, w), (kh, kw), strides, rates, pads))
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


def use_fold(x: Array, kernel: Array, strides: tuple[int, int]) -> bool:
  """Whether `conv_transpose` beats XLA:CPU: strided, or a big kernel whose products fit."""
  kh, kw, o, _ = kernel.shape
  n, h, w, _ = x.shape
  fold_bytes = n * h * w * kh * kw * o * x.dtype.itemsize
  return strides != (1, 1) or (kh * kw >= 25 and fold_bytes <= PATCH_BYTES)


def conv_transpose(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads,
                   full_hw: tuple[int, int], precision) -> Array:
  """`conv.conv_transpose`'s numbers by col2im (static int strides and pads).

  Every input cell times the whole kernel, added into place: no zeros touched. `full_hw` is the
  uncropped output size, (h - 1) * s + k per dim; `pads` are cropped from it.
  """
  kh, kw, o, c = kernel.shape
  n, h, w, _ = x.shape
  y = _matmul(x, kernel.reshape(kh * kw * o, c).T, precision).reshape(n, h, w, kh, kw, o)
  out = _fold(y, strides, full_hw)
  return out[:, pads[0][0]:full_hw[0] - pads[0][1], pads[1][0]:full_hw[1] - pads[1][1]]
