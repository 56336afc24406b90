"""Image files in and label files out: reading any photo as RGB, listing inputs, label PNGs."""
from collections.abc import Iterable
import pathlib

import numpy as np
import PIL.Image
import PIL.ImageOps

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
