"""The predictor: label maps and class probabilities of RGB images of any size, for one model.

Each image is padded bottom/right to a size bucket (a multiple of `bucket`, at least the training
crop) so that a folder of differently sized images compiles a handful of programs, predicted
with config.eval's chain as in evaluation (jaxseg.inference.chain: the mode, with the image's
true size, an ensemble partner, the dense CRF), and cropped back. An image whose padded canvas
has more than `max_canvas` pixels is predicted window by window instead (jaxseg.inference.tiling:
each window through the same chain, `tile_batch` windows per device call), so that device memory
is bounded by the window batch, not by the image.

Probabilities are the chain's output before the argmax when that is probability-valued
(multiscale, flip, the 'mean' ensemble, the CRF's marginals), else its softmax (the raw scores of
whole/slide without flip, of proposals, and of the 'product' ensemble, whose softmax is a
normalised score rather than a calibrated probability). Labels are the argmax of these
probabilities (computed on the device: the separately compiled label program may round a near
tie the other way, so `jaxseg predict --probs` takes its labels from the probabilities it writes).
"""
from collections.abc import Sequence
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.inference import chain
from jaxseg.inference import tiling


def padded_size(height: int, width: int, bucket: int,
                minimum: Sequence[int] = (1, 1)) -> tuple[int, int]:
  """(H, W) rounded up to multiples of `bucket`, at least `minimum`: few distinct shapes."""
  def up(size, least):
    return max(bucket * math.ceil(size / bucket), bucket * math.ceil(least / bucket))
  return up(height, minimum[0]), up(width, minimum[1])


def default_tile_stride(tile: Sequence[int]) -> tuple[int, int]:
  """2/3 of the window, rounded up: PSPNet's stride for its crop (473 -> 316)."""
  return tuple(math.ceil(2 * int(t) / 3) for t in tile)


@dataclasses.dataclass
class Predictor:
  """Label maps and probabilities of uint8 RGB images of any size, for one model and variables.

  The padded canvas is at least `min_size` (e.g. the training crop, a size the model surely
  accepts) and a multiple of `bucket`; one program is compiled per canvas size. The prediction
  is config.eval's chain (jaxseg.inference.chain): the mode, the ensemble partner
  (eval.ensemble_with) and the dense CRF (eval.crf); eval.mode='proposals' takes each image's
  proposals by its id (the file stem for `jaxseg predict`).

  Canvases of more than `max_canvas` pixels (None or 0: no limit) are tiled: windows of `tile`
  (None: config.eval.crop_size) every `tile_stride` (None: config.eval.stride for the eval crop,
  else default_tile_stride), `tile_batch` windows per device call; each window is predicted by
  the chain as an image of its own (its flip, CRF and partner work within the window).
  """
  config: ml_collections.ConfigDict
  model: Any
  variables: Any
  bucket: int = 64
  min_size: tuple[int, int] = (1, 1)
  max_canvas: int | None = tiling.MAX_CANVAS
  tile: tuple[int, int] | None = None
  tile_stride: tuple[int, int] | None = None
  tile_batch: int = 4

  def __post_init__(self):
    if self.bucket < 1:
      raise ValueError(f'bucket must be >= 1, got {self.bucket}')
    if self.tile_batch < 1:
      raise ValueError(f'--tile-batch {self.tile_batch} must be >= 1 (windows per device pass)')
    if self.max_canvas is not None and self.max_canvas < 0:
      raise ValueError(f'--max-canvas {self.max_canvas} must be >= 0 (0 = never tile)')
    flags = ('--tile', '--tile-stride')
    if self.tile is None:
      self.tile = tuple(int(v) for v in self.config.eval.crop_size)
      flags = ('config.eval.crop_size (the default --tile)', flags[1])
      if self.tile_stride is None:
        self.tile_stride = tuple(int(v) for v in self.config.eval.stride)
        flags = (flags[0], 'config.eval.stride (the default --tile-stride)')
    self.tile = tuple(int(v) for v in self.tile)
    if self.tile_stride is None:
      self.tile_stride = default_tile_stride(self.tile)
    self.tile_stride = tuple(int(v) for v in self.tile_stride)
    tiling.check_window(self.tile, self.tile_stride, self.max_canvas, flags)
    from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (TF: mean_pixel)
    partner = chain.load_partner(self.config)
    self._chain = chain.Chain.from_config(self.config, partner.config if partner else None)
    self._windows = chain.WindowSource(self.config) if self._chain.needs_windows else None
    self._are_probabilities = self._chain.gives_probabilities
    # The canvas past the image is the mean pixel rounded to uint8, as the eval pipeline pads.
    self._fill = np.round(pipeline.mean_pixel(self.config.data.normalization)).astype(np.uint8)
    device = jax.local_devices()[0]
    self.variables = jax.device_put(jax.device_get(self.variables), device)
    self._partner_variables = jax.device_put(partner.variables if partner else {}, device)
    partner_model = partner.model if partner else None
    pipeline_fn, are_probabilities = self._chain, self._are_probabilities

    def scores(variables, partner_variables, pixels, sizes, windows, valid):
      return pipeline_fn(self.model, variables, pixels, sizes, windows, valid, partner_model,
                         partner_variables).astype(jnp.float32)

    def probabilities(*args):
      return chain.probabilities(scores(*args), are_probabilities)

    self._scores = jax.jit(scores)
    self._probabilities = jax.jit(probabilities)
    self._labels = jax.jit(lambda *args: jnp.argmax(probabilities(*args), -1).astype(jnp.uint8))

  def is_tiled(self, height: int, width: int) -> bool:
    """Whether an image of this size is predicted by windows (its canvas exceeds max_canvas)."""
    ph, pw = padded_size(height, width, self.bucket, self.min_size)
    return bool(self.max_canvas) and ph * pw > self.max_canvas

  def __call__(self, image: np.ndarray, image_id: str | None = None) -> np.ndarray:
    """uint8 (H, W) class ids of a uint8 (H, W, 3) RGB image (`image_id`: for its proposals)."""
    image = np.asarray(image)
    height, width = image.shape[:2]
    if self.is_tiled(height, width):
      return np.argmax(self._tiled(image), axis=-1).astype(np.uint8)
    return np.asarray(self._run(self._labels, image, image_id))[0, :height, :width]

  def probabilities(self, image: np.ndarray, image_id: str | None = None) -> np.ndarray:
    """float32 (H, W, C) class probabilities (see the module docstring): argmax is __call__."""
    image = np.asarray(image)
    height, width = image.shape[:2]
    if self.is_tiled(height, width):
      return self._tiled(image)
    return np.asarray(self._run(self._probabilities, image, image_id))[0, :height, :width]

  def _run(self, program, image: np.ndarray, image_id: str | None) -> jax.Array:
    height, width = image.shape[:2]
    ph, pw = padded_size(height, width, self.bucket, self.min_size)
    canvas = np.empty((1, ph, pw, 3), np.uint8)
    canvas[:] = self._fill
    canvas[0, :height, :width] = image
    sizes = np.array([[height, width]], np.int32)
    if self._windows is not None:
      windows, valid = self._windows.windows(image_id or '', image, height, width)
      windows, valid = windows[None], valid[None]
    else:
      windows, valid = chain.no_windows(1)
    return program(self.variables, self._partner_variables, canvas, sizes, windows, valid)

  def _tiled(self, image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    if self._windows is not None:
      raise ValueError(
          f'the image is {height}x{width}, a canvas of more than --max-canvas {self.max_canvas:,} '
          "pixels, and eval.mode='proposals' cannot be tiled (its proposal windows span the "
          'whole image): pass a larger --max-canvas (0 = no limit)')
    windows, valid = chain.no_windows(self.tile_batch)

    def scores_fn(tiles, sizes):
      return self._scores(self.variables, self._partner_variables, tiles, sizes, windows, valid)

    return tiling.predict_tiled(scores_fn, image, self._fill, self.tile, self.tile_stride,
                                self.tile_batch, self._are_probabilities)


def predictor_from_config(config: ml_collections.ConfigDict, model: Any, variables: Any,
                          bucket: int = 64, **tiling_options: Any) -> Predictor:
  """A Predictor whose canvas is at least the training crop (a size the model accepts).

  `tiling_options`: max_canvas, tile, tile_stride, tile_batch of Predictor.
  """
  return Predictor(config, model, variables, bucket=bucket,
                   min_size=tuple(int(v) for v in config.data.crop_size), **tiling_options)
