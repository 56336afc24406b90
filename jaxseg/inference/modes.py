"""Inference modes: how a model's forward pass becomes a prediction of a whole image.

Every mode is `infer(images, sizes) -> scores (B, H, W, C)` whose argmax is the prediction, a pure
function of `apply_fn(images) -> logits` with static shapes: one compiled program per canvas size.
`images` are normalised (the mean pixel is 0) and padded bottom/right to a common canvas (H, W);
`sizes` int32 (B, 2) holds each image's true (height, width).
  whole       one forward pass over the padded canvas (sizes unused).
  slide       windows of eval.crop_size every eval.stride over the canvas (the last window of a
              row/column is aligned to the edge; canvases smaller than the window are padded with
              zeros, the normalised mean), logits averaged where windows overlap (sizes unused).
  multiscale  PSPNet's test procedure, per image at its true size: hszhao/semseg tool/test.py
              (test, scale_process, net_process). For each of eval.scales the long side becomes
              round(scale * eval.base_size) (base_size 0: round(scale * the image's long side)),
              the short side keeps the aspect (round), resized with cv2 INTER_LINEAR; the scaled
              image is padded, centred, to at least the crop with the mean; windows of the crop
              every eval.stride (the last aligned to the edge) give softmax probabilities
              (averaged with the flipped window's when eval.flip), summed and divided by the
              window count per pixel; the padding is cropped off, the probabilities resized
              (INTER_LINEAR) back to the image's size and averaged over scales.
With flip, 'whole' and 'slide' return probabilities averaged with the flipped pass's.

multiscale with traced sizes and static shapes: every cv2 resize and crop is a two-tap gather
along each axis whose indices and weights are computed from the traced sizes (positions past the
valid size get weight 0, i.e. the mean pad); every scale runs the largest window grid any image
can need (from base_size x scale, or the canvas x scale when base_size is 0) with per-image
window starts (dynamic_slice) and weight 0 for windows an image does not have, so the result is
test.py's for every image size. A window step that no image of the batch needs is skipped
(lax.cond).

The authors' Caffe evaluation (hszhao/PSPNet evaluation/eval_sub.m, scale_process.m,
caffe_process.m) differs from test.py, which is followed here: the long side is base_size x
scale + 1; images up to the crop and short sides are padded bottom/right ('post'), not centred;
the flip is averaged on the logits before one softmax, not on the probabilities; MATLAB's
imresize antialiases when shrinking; the resized probabilities are renormalised to sum 1.
"""
from collections.abc import Callable, Sequence
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

ApplyFn = Callable[[jax.Array], jax.Array]
InferFn = Callable[[jax.Array, jax.Array], jax.Array]
MODES = ('whole', 'slide', 'multiscale')


def whole(apply_fn: ApplyFn, images: jax.Array) -> jax.Array:
  """Logits of one forward pass."""
  return apply_fn(images)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
  """Window offsets along one axis covering [0, size); the last one ends at the edge."""
  _check_window(crop, stride)
  if size <= crop:
    return [0]
  count = math.ceil((size - crop) / stride) + 1
  return sorted({min(i * stride, size - crop) for i in range(count)})


def _check_window(crop: int, stride: int) -> None:
  if crop <= 0 or stride <= 0:
    raise ValueError(f'eval.crop_size {crop} and eval.stride {stride} must be positive')
  if stride > crop:
    raise ValueError(f'window stride {stride} > crop {crop} would skip pixels; set '
                     'eval.stride <= eval.crop_size')


def slide(apply_fn: ApplyFn, images: jax.Array, crop: Sequence[int],
          stride: Sequence[int]) -> jax.Array:
  """Sliding-window logits (B, H, W, C), averaged over overlapping windows."""
  batch, height, width, _ = images.shape
  ch, cw = crop
  pad_h, pad_w = max(ch - height, 0), max(cw - width, 0)
  if pad_h or pad_w:  # Smaller than a window: pad bottom/right, crop the logits back below.
    images = jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  full_h, full_w = height + pad_h, width + pad_w
  starts = [(y, x) for y in window_starts(full_h, ch, stride[0])
            for x in window_starts(full_w, cw, stride[1])]
  windows = jnp.stack([images[:, y:y + ch, x:x + cw] for y, x in starts])
  # lax.map: one window batch in memory at a time, one compiled body.
  logits = jax.lax.map(apply_fn, windows)
  total = jnp.zeros((batch, full_h, full_w, logits.shape[-1]), logits.dtype)
  count = np.zeros((full_h, full_w), np.float32)
  for k, (y, x) in enumerate(starts):
    total = total.at[:, y:y + ch, x:x + cw].add(logits[k])
    count[y:y + ch, x:x + cw] += 1
  return (total / count[None, :, :, None])[:, :height, :width]


# ---------------------------------------------------------------- multiscale (semseg test.py)
def _round_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  """round(num / den) of int32 arrays, ties to even as Python's round, exactly."""
  quot = num // den
  twice_rem = 2 * (num - quot * den)
  up = (twice_rem > den) | ((twice_rem == den) & (quot % 2 == 1))
  return quot + up.astype(num.dtype)


def _linear_taps(length: int, out_size: jax.Array, in_size: jax.Array,
                 out_offset: jax.Array | int = 0, in_offset: jax.Array | int = 0):
  """cv2.resize INTER_LINEAR from `in_size` to `out_size` samples along one axis, as gathers.

  Output position p (of `length`) holds resized sample p - out_offset, read from input positions
  in_offset + [0, in_size): returns (low, high, w_low, w_high), each (length,); positions outside
  [out_offset, out_offset + out_size) get weights 0. cv2's source coordinate is
  (o + 0.5) * in / out - 0.5, clamped to the first/last sample; it is computed here as an exact
  fraction of integers.
  """
  o = jnp.arange(length, dtype=jnp.int32) - out_offset
  num = (2 * o + 1) * in_size - out_size
  den = 2 * out_size
  low = num // den
  frac = (num - low * den).astype(jnp.float32) / den.astype(jnp.float32)
  clamp = (low < 0) | (low >= in_size - 1)
  frac = jnp.where(clamp, 0.0, frac)
  low = jnp.clip(low, 0, in_size - 1)
  high = jnp.minimum(low + 1, in_size - 1)
  inside = (o >= 0) & (o < out_size)
  return (low + in_offset, high + in_offset, jnp.where(inside, 1.0 - frac, 0.0),
          jnp.where(inside, frac, 0.0))


def _gather_axis(x: jax.Array, axis: int, taps) -> jax.Array:
  """Two-tap interpolation of one image's array (no batch axis) along `axis`."""
  low, high, w_low, w_high = taps
  shape = [1] * x.ndim
  shape[axis] = -1
  return (jnp.take(x, low, axis, mode='clip') * w_low.reshape(shape)
          + jnp.take(x, high, axis, mode='clip') * w_high.reshape(shape))


def _axis_grid(bound: int, crop: int, stride: int, new: jax.Array):
  """Static (padded length, window count) for sizes up to `bound`, and per image (B,) the padded
  length, the centred offset and the window count (semseg's scale_process)."""
  padded = max(bound, crop)
  windows = math.ceil((padded - crop) / stride) + 1
  new_padded = jnp.maximum(new, crop)
  offset = (new_padded - new) // 2  # int(pad / 2): the extra pixel of an odd pad goes last.
  count = (new_padded - crop + stride - 1) // stride + 1
  return padded, windows, new_padded, offset, count


def _window_counts(starts: jax.Array, used: jax.Array, length: int, crop: int) -> jax.Array:
  """(B, length) number of used windows covering each position of one axis."""
  pos = jnp.arange(length)[None, None, :]
  cover = (pos >= starts[:, :, None]) & (pos < starts[:, :, None] + crop) & used[:, :, None]
  return cover.sum(axis=1).astype(jnp.float32)


def _scale_process(apply_fn: ApplyFn, images: jax.Array, heights: jax.Array, widths: jax.Array,
                   scale: float, base_size: int, flip: bool, crop: tuple[int, int],
                   stride: tuple[int, int]) -> jax.Array:
  """Probabilities (B, H, W, C) of one scale: semseg's resize + scale_process, per image."""
  batch, canvas_h, canvas_w, _ = images.shape
  (ch, cw), (sh, sw) = crop, stride
  if base_size > 0:
    long_side = round(scale * base_size)
    longs = jnp.full_like(heights, long_side)
    bound_h = bound_w = long_side  # The short side is at most the long side.
  else:
    longs = jnp.round(scale * jnp.maximum(heights, widths).astype(jnp.float32)).astype(jnp.int32)
    # The long side scales to <= scale * max(canvas); the short one to <= scale * its canvas + 1.
    most = math.ceil(scale * max(canvas_h, canvas_w))
    bound_h = min(most, math.ceil(scale * canvas_h) + 1)
    bound_w = min(most, math.ceil(scale * canvas_w) + 1)
  longs = jnp.maximum(longs, 1)
  tall = heights > widths
  new_h = jnp.maximum(jnp.where(tall, longs, _round_ratio(longs * heights, widths)), 1)
  new_w = jnp.maximum(jnp.where(tall, _round_ratio(longs * widths, heights), longs), 1)
  pad_h, grid_h, full_h, top, rows = _axis_grid(max(bound_h, 1), ch, sh, new_h)
  pad_w, grid_w, full_w, left, cols = _axis_grid(max(bound_w, 1), cw, sw, new_w)

  def place(image, h, w, nh, nw, y0, x0):
    # The image resized to (nh, nw) at (y0, x0) of a zero (= mean) canvas (pad_h, pad_w).
    image = _gather_axis(image, 0, _linear_taps(pad_h, nh, h, y0))
    return _gather_axis(image, 1, _linear_taps(pad_w, nw, w, x0))

  padded = jax.vmap(place)(images, heights, widths, new_h, new_w, top, left)

  # Window k along an axis starts at min(k * stride, full - crop); only k < count are used.
  ky, kx = jnp.arange(grid_h), jnp.arange(grid_w)
  starts_y = jnp.minimum(ky[None] * sh, (full_h - ch)[:, None])
  starts_x = jnp.minimum(kx[None] * sw, (full_w - cw)[:, None])
  used_y, used_x = ky[None] < rows[:, None], kx[None] < cols[:, None]

  window = jax.ShapeDtypeStruct((batch, ch, cw, images.shape[-1]), images.dtype)
  out = jax.eval_shape(apply_fn, window)
  if out.shape[1:3] != (ch, cw):
    raise ValueError(f'multiscale needs logits at the window size {(ch, cw)}; the model gives '
                     f'{out.shape[1:3]} for eval.crop_size {(ch, cw)}')
  classes = out.shape[-1]

  def probabilities(crops):
    if not flip:
      return jax.nn.softmax(apply_fn(crops).astype(jnp.float32), axis=-1)
    both = jax.nn.softmax(apply_fn(jnp.concatenate([crops, crops[:, :, ::-1]])).astype(
        jnp.float32), axis=-1)
    return 0.5 * (both[:batch] + both[batch:, :, ::-1])

  def step(total, k):
    iy, ix = k // grid_w, k % grid_w
    y0, x0 = starts_y[:, iy], starts_x[:, ix]
    used = used_y[:, iy] & used_x[:, ix]
    crops = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(
        im, (y, x, 0), (ch, cw, im.shape[-1])))(padded, y0, x0)
    # zeros_like keeps the crops' device-variance (shard_map), as both branches must.
    probs = jax.lax.cond(jnp.any(used), probabilities, lambda c: jnp.zeros_like(
        c, jnp.float32, (batch, ch, cw, classes)), crops)
    probs = probs * used[:, None, None, None]

    def add(t, p, y, x):
      return jax.lax.dynamic_update_slice(
          t, jax.lax.dynamic_slice(t, (y, x, 0), (ch, cw, classes)) + p, (y, x, 0))
    return jax.vmap(add)(total, probs, y0, x0), None

  total = jnp.zeros_like(padded, jnp.float32, (batch, pad_h, pad_w, classes))
  total, _ = jax.lax.scan(step, total, jnp.arange(grid_h * grid_w))
  # Windows form a product grid: the count at (y, x) is rows covering y x columns covering x.
  count = (_window_counts(starts_y, used_y, pad_h, ch)[:, :, None]
           * _window_counts(starts_x, used_x, pad_w, cw)[:, None, :])
  mean = total / jnp.maximum(count, 1.0)[..., None]

  def restore(probs, h, w, nh, nw, y0, x0):
    # Crop the padding off and resize (nh, nw) -> (h, w) onto the canvas (rows/cols past 0).
    probs = _gather_axis(probs, 0, _linear_taps(canvas_h, h, nh, 0, y0))
    return _gather_axis(probs, 1, _linear_taps(canvas_w, w, nw, 0, x0))

  return jax.vmap(restore)(mean, heights, widths, new_h, new_w, top, left)


def multiscale(apply_fn: ApplyFn, images: jax.Array, sizes: jax.Array, scales: Sequence[float],
               flip: bool, crop: Sequence[int], stride: Sequence[int],
               base_size: int = 0) -> jax.Array:
  """Class probabilities (B, H, W, C) of semseg's test procedure (see the module docstring).

  images: normalised (mean pixel 0) (B, H, W, 3), each image at the top left of the canvas;
  sizes: int32 (B, 2) true (height, width) per image (0 for padded examples: treated as 1).
  Pixels past an image's size are never read, and are 0 in the output.
  """
  if not scales:
    raise ValueError('eval.scales is empty; give at least one scale, e.g. (1.0,)')
  if base_size < 0:
    raise ValueError(f'eval.base_size {base_size} must be >= 0 (0: the image\'s long side)')
  crop, stride = tuple(int(c) for c in crop), tuple(int(s) for s in stride)
  for c, s in zip(crop, stride):
    _check_window(c, s)
  sizes = jnp.maximum(jnp.asarray(sizes, jnp.int32), 1)
  total = None
  for scale in scales:
    probs = _scale_process(apply_fn, images, sizes[:, 0], sizes[:, 1], float(scale),
                           int(base_size), flip, crop, stride)
    total = probs if total is None else total + probs
  return total / len(scales)


def _flip_average(base: ApplyFn, images: jax.Array) -> jax.Array:
  """Probabilities averaged with those of the horizontally flipped canvas."""
  probs = jax.nn.softmax(base(images).astype(jnp.float32), axis=-1)
  mirrored = jax.nn.softmax(base(images[:, :, ::-1]).astype(jnp.float32), axis=-1)
  return 0.5 * (probs + mirrored[:, :, ::-1])


def inference_fn(apply_fn: ApplyFn, mode: str, crop: Sequence[int] = (473, 473),
                 stride: Sequence[int] = (316, 316), scales: Sequence[float] = (1.0,),
                 flip: bool = False, base_size: int = 0) -> InferFn:
  """infer(images, sizes) -> scores (B, H, W, C) whose argmax is the prediction, for one mode.

  images: normalised (B, H, W, 3), padded bottom/right; sizes: int32 (B, 2) each image's true
  (height, width). 'whole' and 'slide' return logits (or, with flip, probabilities averaged with
  the flipped pass) of the canvas; 'multiscale' returns semseg's probabilities (see above).
  """
  crop, stride, scales = tuple(crop), tuple(stride), tuple(scales)
  if mode == 'multiscale':
    def infer_multiscale(images, sizes):
      return multiscale(apply_fn, images, sizes, scales, flip, crop, stride, base_size)
    return infer_multiscale
  if mode == 'whole':
    base = apply_fn
  elif mode == 'slide':
    def base(images):
      return slide(apply_fn, images, crop, stride)
  else:
    raise ValueError(f'unknown eval.mode {mode!r}; use one of {", ".join(MODES)}')

  def infer(images, sizes):
    del sizes  # The canvas is predicted as one image.
    return _flip_average(base, images) if flip else base(images)
  return infer


def config_inference_fn(apply_fn: ApplyFn, config: ml_collections.ConfigDict) -> InferFn:
  """`inference_fn` with the settings of config.eval."""
  return inference_fn(apply_fn, config.eval.mode, config.eval.crop_size, config.eval.stride,
                      config.eval.scales, config.eval.flip, int(config.eval.base_size))


def model_apply_fn(model: Any, variables: Any) -> ApplyFn:
  """images -> float32 logits of a Flax model in inference mode (running BN statistics)."""
  def apply(images):
    out = model.apply(variables, images, train=False)
    if isinstance(out, (tuple, list)):  # (logits, aux_logits) models.
      out = out[0]
    return out.astype(jnp.float32)
  return apply
