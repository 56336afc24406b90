"""The predictor: label maps of RGB images of any size, for one model and its variables.

Each image is normalised, padded bottom/right to a size bucket (a multiple of `bucket`, at least
the training crop) so that a folder of differently sized images compiles a handful of programs,
predicted with config.eval's mode (jaxseg.inference.modes; multiscale is given the image's true
size, so it predicts exactly as in evaluation), and cropped back.
"""
from collections.abc import Sequence
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.inference import modes


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
  accepts) and a multiple of `bucket`; one program is compiled per canvas size.
  """
  config: ml_collections.ConfigDict
  model: Any
  variables: Any
  bucket: int = 64
  min_size: tuple[int, int] = (1, 1)

  def __post_init__(self):
    if self.bucket < 1:
      raise ValueError(f'bucket must be >= 1, got {self.bucket}')
    from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (TF: normalize)
    method = self.config.data.normalization
    pipeline.normalize(np.zeros((1, 1, 3), np.uint8), method)  # Validates the method name.
    device = jax.local_devices()[0]
    self.variables = jax.device_put(jax.device_get(self.variables), device)
    config = self.config

    def predict(variables, images, sizes):
      infer = modes.config_inference_fn(modes.model_apply_fn(self.model, variables), config)
      return jnp.argmax(infer(images, sizes), axis=-1).astype(jnp.uint8)

    self._normalize = lambda x: pipeline.normalize(x, method)
    self._predict = jax.jit(predict)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) class ids of a uint8 (H, W, 3) RGB image."""
    height, width = image.shape[:2]
    ph, pw = padded_size(height, width, self.bucket, self.min_size)
    # Normalise, then pad with 0 = the mean pixel, as the eval pipeline pads.
    x = np.zeros((1, ph, pw, 3), np.float32)
    x[0, :height, :width] = np.asarray(self._normalize(image))
    sizes = np.array([[height, width]], np.int32)
    return np.asarray(self._predict(self.variables, x, sizes))[0, :height, :width]


def predictor_from_config(config: ml_collections.ConfigDict, model: Any, variables: Any,
                          bucket: int = 64) -> Predictor:
  """A Predictor whose canvas is at least the training crop (a size the model accepts)."""
  return Predictor(config, model, variables, bucket=bucket,
                   min_size=tuple(int(v) for v in config.data.crop_size))
