"""Predictions written as files: label PNGs and overlays for image files or dataset examples.

`jaxseg predict --workdir DIR --input IMAGES... --output OUT` writes, per input image,
  OUT/<name>.png          palette-mode PNG: pixel values are class ids, the palette is the
                          dataset's (so viewers show colours, while np.array(Image.open(...))
                          gives the ids);
  OUT/<name>_overlay.png  the image blended with the colourised prediction.
Images of any size and mode are accepted (grayscale, RGBA, palette... converted to RGB; EXIF
rotation applied) up to `max_pixels` pixels (--max-pixels, default images.MAX_PIXELS: larger
ones, e.g. decompression bombs, are refused from their header). Unreadable files are reported by
name and skipped; the others are still written. Nothing is written when an output would replace
one of the inputs (e.g. --output is the input folder and an input is a .png): the user's images
are never overwritten. Bad paths (an --output that is a file, an input folder without images)
fail before anything is read (`plan_outputs`). `write_examples` does the same for a dataset
split's first examples, with the ground truth beside (what `jaxseg demo` shows).
"""
from collections.abc import Iterable
import pathlib
import sys
from typing import Any, TextIO

import ml_collections
import numpy as np
import PIL.Image

from jaxseg.data import classes
from jaxseg.inference import images
from jaxseg.inference.predictor import Predictor


def _unique_stem(path: pathlib.Path, used: set[str]) -> str:
  stem, k = path.stem, 1
  while stem in used:
    stem, k = f'{path.stem}_{k}', k + 1
  used.add(stem)
  return stem


def _refuse_overwriting_inputs(paths: list[pathlib.Path], stems: list[str],
                               output: pathlib.Path) -> None:
  """ValueError naming the inputs that an output PNG would replace (before anything is written)."""
  inputs = {pathlib.Path(p).resolve() for p in paths}
  clashes = sorted(str(output / name) for stem in stems
                   for name in (f'{stem}.png', f'{stem}_overlay.png')
                   if (output / name).resolve() in inputs)
  if clashes:
    shown = ', '.join(clashes[:3]) + (f' and {len(clashes) - 3} more' if len(clashes) > 3 else '')
    raise ValueError(f'--output {output} would overwrite input image(s) {shown} with label maps; '
                     'nothing was written. Choose an --output folder that holds no inputs.')


def plan_outputs(inputs: Iterable[str | pathlib.Path], output: str | pathlib.Path
                 ) -> tuple[list[pathlib.Path], list[str]]:
  """(input image paths, their output stems), after checking every path; nothing is written.

  Raises:
    ValueError: --output is (or lies under) a file, an input folder holds no images, or an
      output PNG would replace an input.
  """
  output = pathlib.Path(output)
  for part in (output, *output.parents):
    if part.exists():
      if not part.is_dir():
        where = 'is a file' if part == output else f'lies under the file {part}'
        raise ValueError(f'--output {output} {where}; give a folder for the label PNGs (it is '
                         'created if missing)')
      break
  paths = images.expand_inputs(str(i) for i in inputs)
  used: set[str] = set()
  stems = [_unique_stem(path, used) for path in paths]
  _refuse_overwriting_inputs(paths, stems, output)
  return paths, stems


def predict_files(predictor: Predictor, inputs: Iterable[str | pathlib.Path],
                  output: str | pathlib.Path, palette: np.ndarray,
                  log: TextIO | None = None, errors: TextIO | None = None,
                  max_pixels: int | None = images.MAX_PIXELS) -> dict[str, Any]:
  """Writes label and overlay PNGs for every readable input; reports the others by name.

  `log` and `errors` default to sys.stdout and sys.stderr as they are at the call. Images of more
  than `max_pixels` pixels (None: no limit) are reported and skipped.

  Returns {'written': [label png paths], 'failed': [(input, reason)]}.
  """
  log = sys.stdout if log is None else log
  errors = sys.stderr if errors is None else errors
  output = pathlib.Path(output)
  paths, stems = plan_outputs(inputs, output)
  try:
    output.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f'--output {output}: cannot create the folder: {e.strerror or e}') from e
  written, failed = [], []
  for path, stem in zip(paths, stems):
    try:
      image = images.load_rgb(path, max_pixels)
    except Exception as e:  # pylint: disable=broad-except  Any unreadable file: report, go on.
      reason = f'{type(e).__name__}: {e}'
      failed.append((str(path), reason))
      print(f'error: cannot read {path}: {reason}', file=errors)
      continue
    try:
      label = predictor(image, path.stem)
    except Exception as e:  # pylint: disable=broad-except  E.g. a model-size constraint.
      reason = f'{type(e).__name__}: {e}'
      failed.append((str(path), reason))
      print(f'error: cannot predict {path}: {reason}', file=errors)
      continue
    label_path = output / f'{stem}.png'
    images.save_label_png(label_path, label, palette)
    PIL.Image.fromarray(classes.overlay(image, label, palette)).save(
        output / f'{stem}_overlay.png')
    written.append(str(label_path))
    print(f'{path} -> {label_path} ({image.shape[0]}x{image.shape[1]})', file=log)
  print(f'predicted {len(written)} of {len(paths)} images into {output}'
        + (f'; {len(failed)} failed: {", ".join(p for p, _ in failed)}' if failed else ''),
        file=log)
  return {'written': written, 'failed': failed}


def write_examples(config: ml_collections.ConfigDict, predictor: Predictor,
                   output: pathlib.Path, count: int, split: str | None = None) -> list[str]:
  """<id>.png, <id>_overlay.png, <id>_image.png and <id>_truth.png for a split's first examples."""
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TF)
  builder = pipeline.load_builder(config)
  palette = classes.palette_for(config.data.dataset)
  output.mkdir(parents=True, exist_ok=True)
  written = []
  ds = builder.as_dataset(split=f'{split or config.data.eval_split}[:{count}]')
  for example in ds.as_numpy_iterator():
    name = example['id'].decode() if 'id' in example else str(len(written))
    image = example['image']
    label = predictor(image, name)
    images.save_label_png(output / f'{name}.png', label, palette)
    PIL.Image.fromarray(classes.overlay(image, label, palette)).save(
        output / f'{name}_overlay.png')
    PIL.Image.fromarray(image).save(output / f'{name}_image.png')
    images.save_label_png(output / f'{name}_truth.png', np.asarray(example['label']), palette)
    written.append(name)
  return written
