"""Label maps as pictures: a dataset's palette and class names, colourised labels, overlays
(from jaxseg.data.classes, shared with prediction files) and legends that list only the classes
present."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from matplotlib import patches
import numpy as np

from jaxseg.data import classes
from jaxseg.data.classes import (check_palette, class_names_for, colorize, overlay,  # noqa: F401
                                 palette_for)

IGNORE_LABEL = classes.IGNORE_LABEL


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
