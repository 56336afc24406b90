"""Inference modes: how a model's forward pass becomes a prediction of a whole image.

Each mode is a pure function of `apply_fn(images) -> logits` with static shapes, so a whole
inference is one compiled program per image size:
  whole       one forward pass over the (padded) image.
  slide       windows of eval.crop_size every eval.stride (the last window of a row/column is
              aligned to the edge; images smaller than the window are padded with zeros, the
              normalised mean), logits averaged where windows overlap.
  multiscale  for each of eval.scales: bilinear resize, predict (whole if the scaled image fits
              in one window, else slide), resize the logits back, softmax; probabilities averaged
              over scales (and horizontal flips when eval.flip).
"""
from collections.abc import Callable, Sequence
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

ApplyFn = Callable[[jax.Array], jax.Array]
MODES = ('whole', 'slide', 'multiscale')


def whole(apply_fn: ApplyFn, images: jax.Array) -> jax.Array:
  """Logits of one forward pass."""
  return apply_fn(images)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
  """Window offsets along one axis covering [0, size); the last one ends at the edge."""
  if crop <= 0 or stride <= 0:
    raise ValueError(f'slide window crop {crop} and stride {stride} must be positive')
  if stride > crop:
    raise ValueError(f'slide stride {stride} > crop {crop} would skip pixels')
  if size <= crop:
    return [0]
  count = math.ceil((size - crop) / stride) + 1
  return sorted({min(i * stride, size - crop) for i in range(count)})


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


def _resize(x: jax.Array, height: int, width: int) -> jax.Array:
  # Bilinear with half-pixel centres and no antialiasing, as cv2/PyTorch (align_corners=False).
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), 'linear', antialias=False)


def multiscale(apply_fn: ApplyFn, images: jax.Array, scales: Sequence[float], flip: bool,
               crop: Sequence[int], stride: Sequence[int]) -> jax.Array:
  """Class probabilities (B, H, W, C) averaged over scales and (optionally) flips."""
  if not scales:
    raise ValueError('eval.scales is empty; give at least one scale, e.g. (1.0,)')
  _, height, width, _ = images.shape
  total, terms = None, 0
  for scale in scales:
    sh, sw = max(1, round(height * scale)), max(1, round(width * scale))
    scaled = images if (sh, sw) == (height, width) else _resize(images, sh, sw)
    fits = sh <= crop[0] and sw <= crop[1]
    predict = apply_fn if fits else functools.partial(slide, apply_fn, crop=crop, stride=stride)
    for flipped in ((False, True) if flip else (False,)):
      x = scaled[:, :, ::-1] if flipped else scaled
      logits = predict(x)
      if flipped:
        logits = logits[:, :, ::-1]
      if (sh, sw) != (height, width):
        logits = _resize(logits, height, width)
      probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
      total = probs if total is None else total + probs
      terms += 1
  return total / terms


def inference_fn(apply_fn: ApplyFn, mode: str, crop: Sequence[int] = (473, 473),
                 stride: Sequence[int] = (316, 316), scales: Sequence[float] = (1.0,),
                 flip: bool = False) -> ApplyFn:
  """images -> scores (B, H, W, C) whose argmax is the prediction, for one eval mode.

  'whole' and 'slide' return logits (or, with flip, probabilities averaged with the flipped
  pass); 'multiscale' returns probabilities averaged over `scales` and flips.
  """
  crop, stride, scales = tuple(crop), tuple(stride), tuple(scales)
  if mode == 'whole':
    base = apply_fn
  elif mode == 'slide':
    base = functools.partial(slide, apply_fn, crop=crop, stride=stride)
  elif mode == 'multiscale':
    return functools.partial(multiscale, apply_fn, scales=scales, flip=flip, crop=crop,
                             stride=stride)
  else:
    raise ValueError(f'unknown eval.mode {mode!r}; use one of {", ".join(MODES)}')
  if not flip:
    return base
  # Flip in whole/slide mode: a one-scale multiscale whose per-scale predictor is `base`.
  return functools.partial(multiscale, base, scales=(1.0,), flip=True, crop=(1 << 30,) * 2,
                           stride=stride)


def config_inference_fn(apply_fn: ApplyFn, config: ml_collections.ConfigDict) -> ApplyFn:
  """`inference_fn` with the settings of config.eval."""
  return inference_fn(apply_fn, config.eval.mode, config.eval.crop_size, config.eval.stride,
                      config.eval.scales, config.eval.flip)


def model_apply_fn(model: Any, variables: Any) -> ApplyFn:
  """images -> float32 logits of a Flax model in inference mode (running BN statistics)."""
  def apply(images):
    out = model.apply(variables, images, train=False)
    if isinstance(out, (tuple, list)):  # (logits, aux_logits) models.
      out = out[0]
    return out.astype(jnp.float32)
  return apply
