"""Tiled prediction: images too large for one pass, predicted window by window on the host.

An image whose padded canvas has more than `max_canvas` pixels (`jaxseg predict --max-canvas`,
default MAX_CANVAS) is cut into windows of `tile` pixels every `stride` (the last window of a
row/column aligned to the image's edge, as modes.slide; an image smaller than the window along an
axis is padded with the fill pixel there). Each batch of `batch` windows is one device call of
`scores_fn`, and the scores are summed on the host and divided by the number of windows covering
each pixel. Device memory is bounded by one window batch, whatever the image's size; the host
holds the image's (H, W, C) float32 scores.

When `scores_fn` gives raw scores (logits), the averaged scores are turned into probabilities by
one softmax afterwards: the same as modes.slide (which averages logits) followed by a softmax, for
the same windows. Probability-valued scores are averaged as they are.
"""
from collections.abc import Callable, Sequence

import numpy as np

from jaxseg.inference import modes

# The most canvas pixels predicted in one pass (2048 x 2048). The benchmarks' images (VOC's up to
# 500 x 500, Cityscapes' 2048 x 1024) fit, so their predictions are exactly eval's; larger
# photos (a 12-megapixel phone picture, satellite and slide scans) are tiled. XLA's buffer
# assignment for one whole pass of PSPNet-101 (experiments/pspnet101_voc.py, float32, compiled
# for the CPU) needs 0.29 GiB of temporaries at 473 x 473, 0.82 at 1024 x 1024 and 2.07 at
# 2048 x 2048 (+ 0.29 GiB of weights): within a 16 GB accelerator with room for multi-scale's
# 1.75x and the (H, W, classes) score maps; 4096 x 4096 would be about 4x that.
MAX_CANVAS = 2048 * 2048

# (K, th, tw, 3) uint8 windows, (K, 2) int32 true sizes -> (K, th, tw, C) float32 scores.
ScoresFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def check_window(tile: Sequence[int], stride: Sequence[int], max_canvas: int | None,
                 flags: tuple[str, str] = ('--tile', '--tile-stride')) -> None:
  """ValueError naming `flags` (where the window and stride came from) for a window that is not
  two positive sizes, a stride that would skip pixels, or a window of more pixels than one pass
  may hold (`max_canvas`; None or 0: any)."""
  tile_flag, stride_flag = flags
  for flag, value in ((tile_flag, tile), (stride_flag, stride)):
    if len(value) != 2 or min(value) < 1:
      raise ValueError(f'{flag} {" ".join(str(v) for v in value)}: give two positive sizes '
                       '(height width)')
  (th, tw), (sh, sw) = tile, stride
  if sh > th or sw > tw:
    raise ValueError(f'the window stride {sh}x{sw} ({stride_flag}) is larger than the window '
                     f'{th}x{tw} ({tile_flag}): pixels between windows would never be predicted; '
                     'give a stride no larger than the window')
  if max_canvas and th * tw > max_canvas:
    raise ValueError(f'the window {th}x{tw} ({tile_flag}) is {th * tw:,} pixels, more than '
                     f'--max-canvas {max_canvas:,} (the most pixels predicted in one pass): give a '
                     'smaller window or a larger --max-canvas')


def window_grid(height: int, width: int, tile: Sequence[int], stride: Sequence[int]
                ) -> tuple[list[int], list[int]]:
  """Window starts along rows and columns (modes.window_starts) covering an image."""
  return (modes.window_starts(height, int(tile[0]), int(stride[0])),
          modes.window_starts(width, int(tile[1]), int(stride[1])))


def num_windows(height: int, width: int, tile: Sequence[int], stride: Sequence[int]) -> int:
  rows, cols = window_grid(height, width, tile, stride)
  return len(rows) * len(cols)


def softmax(scores: np.ndarray) -> np.ndarray:
  """float32 softmax over the last axis, in place of `scores` when it is float32."""
  scores = np.asarray(scores, np.float32)
  scores -= scores.max(axis=-1, keepdims=True)
  np.exp(scores, out=scores)
  scores /= scores.sum(axis=-1, keepdims=True)
  return scores


def predict_tiled(scores_fn: ScoresFn, image: np.ndarray, fill: np.ndarray,
                  tile: Sequence[int], stride: Sequence[int], batch: int,
                  are_probabilities: bool) -> np.ndarray:
  """float32 (H, W, C) class probabilities of a uint8 (H, W, 3) image, window by window.

  `scores_fn` is called on batches of exactly `batch` windows (the last batch is filled up with
  copies of the fill window, whose scores are dropped), so it compiles once.
  """
  if batch < 1:
    raise ValueError(f'--tile-batch {batch} must be >= 1 (windows per device pass)')
  image = np.asarray(image)
  height, width = image.shape[:2]
  th, tw = int(tile[0]), int(tile[1])
  rows, cols = window_grid(height, width, tile, stride)
  starts = [(y, x) for y in rows for x in cols]
  total = None
  windows = np.empty((batch, th, tw, 3), np.uint8)
  sizes = np.empty((batch, 2), np.int32)
  for first in range(0, len(starts), batch):
    chunk = starts[first:first + batch]
    windows[:] = fill
    sizes[:] = (th, tw)
    for k, (y, x) in enumerate(chunk):
      crop = image[y:y + th, x:x + tw]
      windows[k, :crop.shape[0], :crop.shape[1]] = crop
      sizes[k] = crop.shape[:2]
    scores = np.asarray(scores_fn(windows, sizes), np.float32)
    if scores.shape[:3] != (batch, th, tw):
      raise ValueError(f'the model gives scores of shape {scores.shape[1:3]} for windows of '
                       f'{th}x{tw}; tiled prediction needs scores at the window size')
    if total is None:
      total = np.zeros((height, width, scores.shape[-1]), np.float32)
    for k, (y, x) in enumerate(chunk):
      h, w = sizes[k]
      total[y:y + h, x:x + w] += scores[k, :h, :w]
  # Windows form a product grid: the count at (y, x) is rows covering y x columns covering x.
  count_y, count_x = np.zeros(height, np.float32), np.zeros(width, np.float32)
  for y in rows:
    count_y[y:y + th] += 1
  for x in cols:
    count_x[x:x + tw] += 1
  total /= (count_y[:, None] * count_x[None, :])[..., None]
  return total if are_probabilities else softmax(total)
