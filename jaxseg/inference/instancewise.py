"""DeconvNet's instance-wise inference: the network on proposal windows, score maps aggregated.

Follows the loop over boxes_padded of HyeonwooNoh/DeconvNet inference/
generate_EDeconvNet_CRF_results.m (with inference/util/preprocess_image_bb.m), on windows that
`jaxseg.inference.proposals.select_windows` chose:
  1. the window's crop of the image padded with black pixels (padarray with zeros before the
     mean is subtracted: `outside` is that pixel normalised, e.g. normalize(0));
  2. resized to `window_size` (224 x 224) with MATLAB's imresize(..., 'bilinear');
  3. the network's raw scores (seg-score, the last layer of DeconvNet_inference_deploy.prototxt:
     no softmax) resized back to the window's size with imresize 'bilinear';
  4. aggregated into a zero canvas: 'max' = max(canvas, scores) over the window (the script,
     and the paper's eq. 3), so pixels no window covers stay 0 and negative scores never show;
     'mean' = the sum over the windows covering a pixel / their count (the paper's eq. 4;
     uncovered pixels 0).
The class probabilities are the softmax of the aggregated map (paper sec. 4.3), left to the
caller. The script reads its map back one row and one column early
(padded_prob_base(pad_offset_row:pad_offset_row+H-1, ...), the image starting at
pad_offset_row + 1), i.e. its prediction is shifted by one pixel down-right of the image; here the
scores stay where their windows were.

MATLAB's imresize 'bilinear' with output size [m n]: per axis, scale s = out / in, output sample
o (1-based) centred at u = o / s + (1 - 1 / s) / 2 on the input; the triangle kernel, widened to
s * tri(s * x) when shrinking (antialiasing, MATLAB's default); weights normalised to sum 1; taps
outside the input reflected symmetrically (index 0 -> 1, in + 1 -> in). It equals cv2 INTER_LINEAR
when enlarging and is a triangle filter (not cv2's box INTER_AREA) when shrinking.
jax.image.scale_and_translate is not used: it treats the crop's edge as the canvas's (reading
pixels past the crop) and renormalises instead of reflecting at the edge.

Static shapes: each axis of the resize is a dense (window_size, canvas) or (canvas, window_size)
weight matrix built from the traced window, so one compiled program serves every window of a
canvas size and window count; the windows of the batch run `batch` at a time (lax.scan, one
compiled body; chunks without a valid window are skipped with lax.cond).
"""
from collections.abc import Callable, Sequence
import math

import jax
import jax.numpy as jnp

ApplyFn = Callable[[jax.Array], jax.Array]
AGGREGATES = ('max', 'mean')
_HIGHEST = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------------------ MATLAB imresize bilinear
def _kernel(x: jax.Array, scale: jax.Array) -> jax.Array:
  """imresize's bilinear kernel at offsets x, antialiased (s * tri(s * x)) when scale < 1."""
  s = jnp.minimum(scale, 1.0)
  return s * jnp.maximum(1.0 - jnp.abs(s * x), 0.0)


def _centre(o: jax.Array, scale: jax.Array) -> jax.Array:
  """0-based input position of 0-based output sample o (imresize: u = o / s + (1 - 1/s) / 2)."""
  return (o + 0.5) / scale - 0.5


def _resize_weights(out_pos: jax.Array, in_pos: jax.Array, in_len: jax.Array,
                    out_len: jax.Array, max_ratio: float) -> jax.Array:
  """imresize weights of output samples `out_pos` on input samples `in_pos` (broadcast).

  Positions are 0-based within the output and input axis (in_len, out_len samples); entries
  outside [0, in_len) or [0, out_len) are 0. Taps past the input's ends are reflected onto it
  (a tap reaches at most in_len / out_len samples past an end, so one reflection suffices);
  the normaliser sums the kernel over all taps, `max_ratio` bounding in_len / out_len.
  """
  in_len = in_len.astype(jnp.float32)
  out_len = out_len.astype(jnp.float32)
  scale = out_len / in_len
  o = out_pos.astype(jnp.float32)
  j = in_pos.astype(jnp.float32)
  u = _centre(o, scale)
  weights = (_kernel(u - j, scale) + _kernel(u + 1.0 + j, scale)
             + _kernel(u - (2.0 * in_len - 1.0 - j), scale))
  taps = 2 * math.ceil(max(max_ratio, 1.0)) + 3
  half = jnp.maximum(1.0 / scale, 1.0)
  first = jnp.floor(u - half)
  offsets = jnp.arange(taps, dtype=jnp.float32).reshape((taps,) + (1,) * u.ndim)
  norm = jnp.sum(_kernel(u[None] - (first[None] + offsets), scale), axis=0)
  inside = (j >= 0) & (j < in_len) & (o >= 0) & (o < out_len)
  return jnp.where(inside, weights / norm, 0.0)


def crop_matrix(start: jax.Array, length: jax.Array, canvas: int, size: int,
                max_length: int) -> jax.Array:
  """(..., size, canvas): row o resamples the window [start, start + length) of a canvas axis to
  `size` samples (imresize 'bilinear'); canvas positions outside the window get 0."""
  out_pos = jnp.arange(size)[:, None]
  in_pos = jnp.arange(canvas)[None, :] - start[..., None, None]
  return _resize_weights(out_pos, in_pos, length[..., None, None], jnp.asarray(size),
                         max_length / size)


def paste_matrix(start: jax.Array, length: jax.Array, canvas: int, size: int) -> jax.Array:
  """(..., canvas, size): resamples `size` samples to the window [start, start + length) of a
  canvas axis (imresize 'bilinear'); canvas rows outside the window are 0."""
  out_pos = jnp.arange(canvas)[:, None] - start[..., None, None]
  in_pos = jnp.arange(size)[None, :]
  return _resize_weights(out_pos, in_pos, jnp.asarray(size), length[..., None, None],
                         float(size))


# ---------------------------------------------------------------------------------- instance-wise
def _clip_windows(windows: jax.Array, valid: jax.Array, sizes: jax.Array):
  """Windows clipped to the original's padded canvas (rows +- width, columns +- height)."""
  h, w = sizes[:, None, 0], sizes[:, None, 1]
  y0 = jnp.clip(windows[..., 0], -w, h + w)
  x0 = jnp.clip(windows[..., 1], -h, w + h)
  y1 = jnp.clip(windows[..., 2], -w, h + w)
  x1 = jnp.clip(windows[..., 3], -h, w + h)
  valid = valid & (y1 > y0) & (x1 > x0)
  return jnp.stack([y0, x0, y1, x1], axis=-1), valid


def instancewise(apply_fn: ApplyFn, images: jax.Array, sizes: jax.Array, windows: jax.Array,
                 valid: jax.Array, window_size: Sequence[int] = (224, 224),
                 aggregate: str = 'max', batch: int = 8,
                 outside: jax.Array | Sequence[float] | None = None) -> jax.Array:
  """Aggregated window scores (B, H, W, C) of DeconvNet's instance-wise inference.

  Args:
    apply_fn: normalised windows (n, wh, ww, 3) -> logits (n, wh, ww, C).
    images: normalised (B, H, W, 3), each image at the top left of the canvas.
    sizes: int32 (B, 2) true (height, width) of each image (0 for padded examples).
    windows: int32 (B, K, 4) (y0, x0, y1, x1), end-exclusive, image coordinates; they may
      reach past the image (clipped to the original's padded canvas: rows -width..height+width,
      columns -height..width+height).
    valid: bool (B, K); invalid windows contribute nothing.
    window_size: (wh, ww) every crop is resized to (DeconvNet: 224 x 224).
    aggregate: 'max' (the original code) or 'mean' (the paper's eq. 4).
    batch: windows per forward pass (memory is bounded by this many windows).
    outside: (3,) normalised value of pixels outside the image; None = zeros (the mean pixel).
      The original pads with black: pass jaxseg.data.pipeline.normalize(np.zeros(3), method).
  Returns:
    float32 scores; 0 where no valid window covers a pixel and past each image's true size.
  """
  if aggregate not in AGGREGATES:
    raise ValueError(f'unknown eval.aggregate {aggregate!r}; use one of {AGGREGATES}')
  if batch < 1:
    raise ValueError(f'window batch {batch} must be >= 1')
  images = jnp.asarray(images, jnp.float32)
  num, canvas_h, canvas_w, channels = images.shape
  wh, ww = (int(v) for v in window_size)
  windows = jnp.asarray(windows, jnp.int32)
  valid = jnp.asarray(valid, bool)
  if windows.ndim != 3 or windows.shape[0] != num or windows.shape[2] != 4:
    raise ValueError(f'windows must be int32 (B, K, 4) with B = {num}; got {windows.shape}')
  if valid.shape != windows.shape[:2]:
    raise ValueError(f'valid must be (B, K) = {windows.shape[:2]}; got {valid.shape}')
  sizes = jnp.asarray(sizes, jnp.int32)
  fill = (jnp.zeros((channels,), jnp.float32) if outside is None
          else jnp.asarray(outside, jnp.float32).reshape(channels))

  out = jax.eval_shape(apply_fn, jax.ShapeDtypeStruct((batch, wh, ww, channels), jnp.float32))
  if tuple(out.shape[1:3]) != (wh, ww):
    raise ValueError(f'instance-wise inference needs logits at the window size {(wh, ww)}; the '
                     f'model gives {tuple(out.shape[1:3])} (eval.proposal_size)')
  classes = out.shape[-1]

  # Pixels outside each image read `fill`: resize (image - fill) masked to the image, add fill
  # back (every weight row sums to 1).
  rows = jnp.arange(canvas_h)[None, :, None] < sizes[:, None, None, 0]
  cols = jnp.arange(canvas_w)[None, None, :] < sizes[:, None, None, 1]
  inside = (rows & cols)[..., None]
  shifted = jnp.where(inside, images - fill, 0.0)

  windows, valid = _clip_windows(windows, valid, sizes)
  count_k = windows.shape[1]
  flat_w = windows.reshape(num * count_k, 4)
  flat_v = valid.reshape(num * count_k)
  owner = jnp.repeat(jnp.arange(num, dtype=jnp.int32), count_k)
  order = jnp.argsort(~flat_v, stable=True)  # Valid windows first: trailing chunks are skipped.
  flat_w, flat_v, owner = flat_w[order], flat_v[order], owner[order]
  chunks = -(-(num * count_k) // batch)
  pad = chunks * batch - num * count_k
  flat_w = jnp.pad(flat_w, ((0, pad), (0, 0)))
  flat_v = jnp.pad(flat_v, (0, pad))
  owner = jnp.pad(owner, (0, pad))
  max_h, max_w = canvas_h + 2 * canvas_w, canvas_w + 2 * canvas_h  # The padded canvas.

  def forward(acc, win, use, who):
    y0, x0, y1, x1 = win[:, 0], win[:, 1], win[:, 2], win[:, 3]
    len_y, len_x = jnp.maximum(y1 - y0, 1), jnp.maximum(x1 - x0, 1)
    crop_y = crop_matrix(y0, len_y, canvas_h, wh, max_h)  # (n, wh, H)
    crop_x = crop_matrix(x0, len_x, canvas_w, ww, max_w)  # (n, ww, W)
    source = shifted[who]
    crops = jnp.einsum('noh,nhwc->nowc', crop_y, source, precision=_HIGHEST)
    crops = jnp.einsum('npw,nowc->nopc', crop_x, crops, precision=_HIGHEST) + fill
    scores = apply_fn(crops).astype(jnp.float32)
    paste_y = paste_matrix(y0, len_y, canvas_h, wh)  # (n, H, wh)
    paste_x = paste_matrix(x0, len_x, canvas_w, ww)  # (n, W, ww)
    back = jnp.einsum('nho,nopc->nhpc', paste_y, scores, precision=_HIGHEST)
    back = jnp.einsum('nwp,nhpc->nhwc', paste_x, back, precision=_HIGHEST)
    pos_y, pos_x = jnp.arange(canvas_h)[None, :], jnp.arange(canvas_w)[None, :]
    in_y = (pos_y >= y0[:, None]) & (pos_y < y1[:, None])
    in_x = (pos_x >= x0[:, None]) & (pos_x < x1[:, None])
    region = (in_y[:, :, None] & in_x[:, None, :] & use[:, None, None])[..., None]
    total, count = acc
    if aggregate == 'max':  # The canvas starts at 0, so 0 outside the region changes nothing.
      total = total.at[who].max(jnp.where(region, back, 0.0))
    else:
      total = total.at[who].add(jnp.where(region, back, 0.0))
      count = count.at[who].add(region[..., 0].astype(jnp.float32))
    return total, count

  def step(acc, chunk):
    win, use, who = chunk
    return jax.lax.cond(jnp.any(use), forward, lambda a, *_: a, acc, win, use, who), None

  total = jnp.zeros_like(images, jnp.float32, (num, canvas_h, canvas_w, classes))
  count = jnp.zeros_like(images, jnp.float32, (num, canvas_h, canvas_w))
  xs = (flat_w.reshape(chunks, batch, 4), flat_v.reshape(chunks, batch),
        owner.reshape(chunks, batch))
  (total, count), _ = jax.lax.scan(step, (total, count), xs)
  if aggregate == 'mean':
    total = total / jnp.maximum(count, 1.0)[..., None]
  return jnp.where(inside, total, 0.0)

