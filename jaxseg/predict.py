"""Prediction on arbitrary image files: raw label PNGs and colour overlays.

`jaxseg predict --workdir DIR --input IMAGES... --output OUT` writes, per input image,
  OUT/<name>.png          palette-mode PNG: pixel values are class ids, the palette is the
                          dataset's (so viewers show colours, while np.array(Image.open(...))
                          gives the ids);
  OUT/<name>_overlay.png  the image blended with the colourised prediction.
Images of any size and mode are accepted (grayscale, RGBA, palette... converted to RGB; EXIF
rotation applied). Each is padded bottom/right to a size bucket (a multiple of `bucket`, at least
the training crop) so that a folder of differently sized images compiles a handful of programs,
predicted with config.eval's mode, and cropped back. Unreadable files are reported by name and
skipped; the others are still written.
"""
from collections.abc import Iterable, Sequence
import dataclasses
import math
import pathlib
import sys
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import PIL.Image
import PIL.ImageOps

from jaxseg import evaluate

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def load_rgb(path: str | pathlib.Path) -> np.ndarray:
  """uint8 (H, W, 3) RGB pixels of any image file PIL reads (raises OSError/ValueError)."""
  with PIL.Image.open(path) as image:
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):  # 16-bit/float grayscale: rescale.
      pixels = np.asarray(image, np.float64)
      top = pixels.max() if pixels.size else 0
      scale = 255.0 / top if top > 255 else 1.0
      image = PIL.Image.fromarray(np.clip(pixels * scale, 0, 255).astype(np.uint8))
    if image.mode in ('RGBA', 'LA') or (image.mode == 'P' and 'transparency' in image.info):
      image = image.convert('RGBA')
      background = PIL.Image.new('RGBA', image.size, (255, 255, 255, 255))
      image = PIL.Image.alpha_composite(background, image)  # Transparent -> white.
    pixels = np.asarray(image.convert('RGB'), np.uint8)
  if pixels.ndim != 3 or min(pixels.shape[:2]) < 1:
    raise ValueError(f'image has shape {pixels.shape}')
  return pixels


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

    def predict(variables, images):
      infer = evaluate.config_inference_fn(evaluate.model_apply_fn(self.model, variables), config)
      return jnp.argmax(infer(images), axis=-1).astype(jnp.uint8)

    self._normalize = lambda x: pipeline.normalize(x, method)
    self._predict = jax.jit(predict)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) class ids of a uint8 (H, W, 3) RGB image."""
    height, width = image.shape[:2]
    ph, pw = padded_size(height, width, self.bucket, self.min_size)
    # Normalise, then pad with 0 = the mean pixel, as the eval pipeline pads.
    x = np.zeros((1, ph, pw, 3), np.float32)
    x[0, :height, :width] = np.asarray(self._normalize(image))
    return np.asarray(self._predict(self.variables, x))[0, :height, :width]


def colourise(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
  return np.asarray(palette, np.uint8).reshape(-1, 3)[label]


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray,
            alpha: float = 0.5) -> np.ndarray:
  """The image blended with the colourised label map (alpha = label weight)."""
  blend = (1 - alpha) * image.astype(np.float32) + alpha * colourise(label, palette)
  return np.clip(np.round(blend), 0, 255).astype(np.uint8)


def save_label_png(path: str | pathlib.Path, label: np.ndarray, palette: np.ndarray) -> None:
  """Palette-mode PNG whose pixel values are the class ids."""
  image = PIL.Image.fromarray(np.asarray(label, np.uint8), mode='P')
  colours = np.zeros((256, 3), np.uint8)
  palette = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
  colours[:len(palette)] = palette
  image.putpalette(colours.ravel().tolist())
  image.save(path)


def expand_inputs(inputs: Iterable[str]) -> list[pathlib.Path]:
  """Files as given; folders replaced by their image files (sorted)."""
  paths = []
  for item in inputs:
    path = pathlib.Path(item)
    if path.is_dir():
      paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
      paths.append(path)
  return paths


def _unique_stem(path: pathlib.Path, used: set[str]) -> str:
  stem, k = path.stem, 1
  while stem in used:
    stem, k = f'{path.stem}_{k}', k + 1
  used.add(stem)
  return stem


def predict_files(predictor: Predictor, inputs: Iterable[str | pathlib.Path],
                  output: str | pathlib.Path, palette: np.ndarray,
                  log: TextIO = sys.stdout, errors: TextIO = sys.stderr) -> dict[str, Any]:
  """Writes label and overlay PNGs for every readable input; reports the others by name.

  Returns {'written': [label png paths], 'failed': [(input, reason)]}.
  """
  output = pathlib.Path(output)
  output.mkdir(parents=True, exist_ok=True)
  written, failed, used = [], [], set()
  paths = expand_inputs(str(i) for i in inputs)
  for path in paths:
    try:
      image = load_rgb(path)
    except Exception as e:  # pylint: disable=broad-except  Any unreadable file: report, go on.
      reason = f'{type(e).__name__}: {e}'
      failed.append((str(path), reason))
      print(f'error: cannot read {path}: {reason}', file=errors)
      continue
    try:
      label = predictor(image)
    except Exception as e:  # pylint: disable=broad-except  E.g. a model-size constraint.
      reason = f'{type(e).__name__}: {e}'
      failed.append((str(path), reason))
      print(f'error: cannot predict {path}: {reason}', file=errors)
      continue
    stem = _unique_stem(path, used)
    label_path = output / f'{stem}.png'
    save_label_png(label_path, label, palette)
    PIL.Image.fromarray(overlay(image, label, palette)).save(output / f'{stem}_overlay.png')
    written.append(str(label_path))
    print(f'{path} -> {label_path} ({image.shape[0]}x{image.shape[1]})', file=log)
  print(f'predicted {len(written)} of {len(paths)} images into {output}'
        + (f'; {len(failed)} failed: {", ".join(p for p, _ in failed)}' if failed else ''),
        file=log)
  return {'written': written, 'failed': failed}


def palette_of(config: ml_collections.ConfigDict) -> np.ndarray:
  """The dataset's (256, 3) palette; the VOC colour map for unknown datasets."""
  from jaxseg.data import classes  # pylint: disable=g-import-not-at-top
  try:
    return np.asarray(classes.dataset_spec(config.data.dataset).palette)
  except ValueError:
    return classes.voc_palette()


def predictor_from_config(config: ml_collections.ConfigDict, model: Any, variables: Any,
                          bucket: int = 64) -> Predictor:
  """A Predictor whose canvas is at least the training crop (a size the model accepts)."""
  return Predictor(config, model, variables, bucket=bucket,
                   min_size=tuple(int(v) for v in config.data.crop_size))
