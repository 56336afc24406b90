"""The predictor: label maps of RGB images of any size, for one model and its variables.

Each image is padded bottom/right to a size bucket (a multiple of `bucket`, at least the training
crop) so that a folder of differently sized images compiles a handful of programs, predicted
with config.eval's chain as in evaluation (jaxseg.inference.chain: the mode, with the image's
true size, an ensemble partner, the dense CRF), and cropped back.
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


def padded_size(height: int, width: int, bucket: int,
                minimum: Sequence[int] = (1, 1)) -> tuple[int, int]:
  """(H, W) rounded up to multiples of `bucket`, at least `minimum`: few distinct shapes."""
  def up(size, least):
    return max(bucket * math.ceil(size / bucket), bucket * math.ceil(least / bucket))
  return up(height, minimum[0]), up(width, minimum[1])


@dataclasses.dataclass
class Predictor:
  """Label maps of uint8 RGB images of any size, for one model and its variables.

  The padded canvas is at least `min_size` (e.g. the training crop, a size the model surely
  accepts) and a multiple of `bucket`; one program is compiled per canvas size. The prediction
  is config.eval's chain (jaxseg.inference.chain): the mode, the ensemble partner
  (eval.ensemble_with) and the dense CRF (eval.crf); eval.mode='proposals' takes each image's
  proposals by its id (the file stem for `jaxseg predict`).
  """
  config: ml_collections.ConfigDict
  model: Any
  variables: Any
  bucket: int = 64
  min_size: tuple[int, int] = (1, 1)

  def __post_init__(self):
    if self.bucket < 1:
      raise ValueError(f'bucket must be >= 1, got {self.bucket}')
    from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (TF: mean_pixel)
    partner = chain.load_partner(self.config)
    self._chain = chain.Chain.from_config(self.config, partner.config if partner else None)
    self._windows = chain.WindowSource(self.config) if self._chain.needs_windows else None
    # The canvas past the image is the mean pixel rounded to uint8, as the eval pipeline pads.
    self._fill = np.round(pipeline.mean_pixel(self.config.data.normalization)).astype(np.uint8)
    device = jax.local_devices()[0]
    self.variables = jax.device_put(jax.device_get(self.variables), device)
    self._partner_variables = jax.device_put(partner.variables if partner else {}, device)
    partner_model = partner.model if partner else None
    pipeline_fn = self._chain

    def predict(variables, partner_variables, pixels, sizes, windows, valid):
      out = pipeline_fn(self.model, variables, pixels, sizes, windows, valid, partner_model,
                        partner_variables)
      return jnp.argmax(out, axis=-1).astype(jnp.uint8)

    self._predict = jax.jit(predict)

  def __call__(self, image: np.ndarray, image_id: str | None = None) -> np.ndarray:
    """uint8 (H, W) class ids of a uint8 (H, W, 3) RGB image (`image_id`: for its proposals)."""
    image = np.asarray(image)
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
    out = self._predict(self.variables, self._partner_variables, canvas, sizes, windows, valid)
    return np.asarray(out)[0, :height, :width]


def predictor_from_config(config: ml_collections.ConfigDict, model: Any, variables: Any,
                          bucket: int = 64) -> Predictor:
  """A Predictor whose canvas is at least the training crop (a size the model accepts)."""
  return Predictor(config, model, variables, bucket=bucket,
                   min_size=tuple(int(v) for v in config.data.crop_size))
