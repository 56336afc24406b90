"""Label maps as pictures: a dataset's palette and class names, colourised labels, overlays
and legends that list only the classes present."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from matplotlib import patches
import numpy as np

from jaxseg.data import classes

IGNORE_LABEL = classes.IGNORE_LABEL


def palette_for(dataset: str) -> np.ndarray:
  """(256, 3) uint8 colours of a dataset's labels (row 255: ignore); VOC's for unknown names."""
  try:
    return np.asarray(classes.dataset_spec(dataset).palette, np.uint8)
  except ValueError:
    return classes.voc_palette()


def class_names_for(dataset: str, num_classes: int | None = None) -> list[str]:
  """The dataset's class names; numbers when the dataset (or its class count) is unknown."""
  try:
    names = list(classes.dataset_spec(dataset).class_names)
  except ValueError:
    names = []
  if num_classes is not None and len(names) != num_classes:
    names = [str(i) for i in range(num_classes)]
  return names


def check_palette(palette: Any) -> np.ndarray:
  """`palette` as uint8 after checking it has a colour for every label 0..255."""
  palette = np.asarray(palette)
  if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) < 256:
    raise ValueError(f'palette must have shape (256, 3) (row i = colour of label i, row 255 = '
                     f'ignore), got {palette.shape}')
  return palette.astype(np.uint8)


def colorize(label: Any, palette: Any) -> np.ndarray:
  """uint8 (H, W, 3) colours of an integer label map (values 0..255, 255 = ignore)."""
  label = np.asarray(label)
  palette = check_palette(palette)
  if label.size and (label.min() < 0 or label.max() > 255):
    raise ValueError(f'label values must lie in 0..255 (255 = ignore), got {label.min()}..'
                     f'{label.max()}')
  return palette[label.astype(np.intp)]


def overlay(image: Any, label: Any, palette: Any, alpha: float = 0.5,
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


def present_classes(label_maps: Iterable[Any], num_classes: int) -> list[int]:
  """Sorted class ids (< num_classes) occurring in any of the label maps."""
  seen = set()
  for label in label_maps:
    if label is not None:
      seen.update(int(v) for v in np.unique(np.asarray(label)) if 0 <= v < num_classes)
  return sorted(seen)


def legend_handles(label_maps: Iterable[Any], class_names: Sequence[str], palette: Any,
                   ignore_label: int = IGNORE_LABEL) -> list[patches.Patch]:
  """Colour patches for the classes present in `label_maps` (and 'ignore' if it occurs)."""
  label_maps = [np.asarray(m) for m in label_maps if m is not None]
  palette = check_palette(palette)
  handles = [patches.Patch(facecolor=palette[c] / 255, edgecolor='black', linewidth=0.5,
                           label=class_names[c])
             for c in present_classes(label_maps, len(class_names))]
  if any((m == ignore_label).any() for m in label_maps):
    handles.append(patches.Patch(facecolor=palette[ignore_label] / 255, edgecolor='black',
                                 linewidth=0.5, label=f'ignore ({ignore_label})'))
  return handles
