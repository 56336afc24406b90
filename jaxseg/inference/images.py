"""Image files in and label files out: reading any photo as RGB, listing inputs, label PNGs."""
from collections.abc import Iterable
import contextlib
import pathlib
from typing import Iterator
import warnings

import numpy as np
import PIL.Image
import PIL.ImageOps

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
# The most pixels an image may have (`jaxseg predict --max-pixels`): PIL's own error threshold
# (2 x PIL.Image.MAX_IMAGE_PIXELS), about 13,400 x 13,400. A decompression bomb, a small file that
# decodes to gigabytes, is refused from its header before any pixel is decoded.
MAX_PIXELS = 178_956_970


@contextlib.contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
  """PIL's own decompression-bomb check at `max_pixels` (None: off) inside the block.

  PIL checks in Image.open and for each frame of a GIF, TIFF, ... as it reads them: it raises
  beyond 2 x PIL.Image.MAX_IMAGE_PIXELS and warns beyond that global, so the global is set to
  half of `max_pixels` and the warning is silenced.
  """
  saved = PIL.Image.MAX_IMAGE_PIXELS
  PIL.Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max_pixels / 2
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', PIL.Image.DecompressionBombWarning)
      yield
  finally:
    PIL.Image.MAX_IMAGE_PIXELS = saved


def load_rgb(path: str | pathlib.Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
  """uint8 (H, W, 3) RGB pixels of any image file PIL reads (raises OSError/ValueError).

  An image (or a frame) of more than `max_pixels` pixels (None: no limit) is a ValueError,
  raised from the file's header before its pixels are decoded.
  """
  with _pixel_limit(None):  # Reads the header only; the size is checked below, naming the flag.
    opened = PIL.Image.open(path)
  with opened as image:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
      raise ValueError(
          f'image is {width}x{height} = {width * height:,} pixels, more than the limit of '
          f'{max_pixels:,} (--max-pixels; a guard against decompression bombs, small files that '
          f'decode to gigabytes). If you trust the file, pass --max-pixels {width * height} or '
          'more.')
    try:
      with _pixel_limit(max_pixels):  # Frames of GIF, TIFF, ... are checked as PIL reads them.
        return _to_rgb(image)
    except PIL.Image.DecompressionBombError as e:
      raise ValueError(f'a frame of the image has more than {max_pixels:,} pixels (--max-pixels; '
                       'a guard against decompression bombs). If you trust the file, pass a '
                       'larger --max-pixels.') from e


def _to_rgb(image: PIL.Image.Image) -> np.ndarray:
  """The RGB pixels of an opened image (EXIF rotation applied, transparency on white)."""
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
  """Files as given; folders replaced by their image files (sorted, by IMAGE_SUFFIXES).

  Raises:
    ValueError: naming a folder that holds no image file, and the suffixes looked for.
  """
  paths = []
  for item in inputs:
    path = pathlib.Path(item)
    if path.is_dir():
      found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
      if not found:
        others = sorted(p.name for p in path.iterdir())
        held = (f'it holds {len(others)} other entries, e.g. {", ".join(others[:3])}' if others
                else 'it is empty')
        raise ValueError(f'--input folder {path} holds no image files ({held}); images are '
                         f'found by suffix: {" ".join(IMAGE_SUFFIXES)} (any case).')
      paths += found
    else:
      paths.append(path)
  return paths
