"""Predictions written as files: label PNGs and overlays for image files or dataset examples.

`jaxseg predict --workdir DIR --input IMAGES... --output OUT` writes, per input image,
  OUT/<name>.png          palette-mode PNG: pixel values are class ids, the palette is the
                          dataset's (so viewers show colours, while np.array(Image.open(...))
                          gives the ids);
  OUT/<name>_overlay.png  the image blended with the colourised prediction;
and with --probs (the predictor's class probabilities, jaxseg.inference.predictor):
  all: OUT/<name>_probs.npy       float32 (H, W, C) probabilities. float32, not float16: float16
                                  keeps 3 digits (its step near 0.5 is 0.0005), so two classes
                                  that differ by less tie in the file and its argmax would no
                                  longer be the label PNG; and confidences near 1 (0.9996 vs
                                  0.9999) merge. 4 bytes x C per pixel (21 MB for a 500 x 500
                                  VOC image, 21 classes); np.load(..., mmap_mode='r') reads parts.
  max: OUT/<name>_confidence.npy  float32 (H, W) probability of the predicted class;
       OUT/<name>_confidence.png  that confidence as an RGB heat map (matplotlib's 'inferno', 0
                                  black .. 1 pale yellow, the same scale for every image).
The label PNG is then the argmax of the probabilities written. Images of any size and mode are
accepted (grayscale, RGBA, palette... converted to RGB; EXIF rotation applied) up to `max_pixels`
pixels (--max-pixels, default images.MAX_PIXELS: larger ones, e.g. decompression bombs, are
refused from their header). Unreadable files are reported by name and skipped; the others are
still written. Nothing is written when an output would replace one of the inputs (e.g. --output
is the input folder and an input is a .png): the user's images are never overwritten. Bad paths
(an --output that is a file, an input folder without images) fail before anything is read
(`plan_outputs`). Over many files a progress bar (tqdm) runs on stderr when it is a terminal;
otherwise one summary line is printed there at the end. `write_examples` does the same for a
dataset split's first examples, with the ground truth beside (what `jaxseg demo` shows).
"""
from collections.abc import Iterable
import functools
import pathlib
import sys
import time
from typing import Any, Protocol, TextIO

import matplotlib
import ml_collections
import numpy as np
import PIL.Image
import tqdm

from jaxseg.data import classes
from jaxseg.inference import images
from jaxseg.inference.predictor import Predictor

PROBS = ('all', 'max')  # --probs: every class's probability, or the predicted class's.
HEATMAP = 'inferno'  # Perceptually uniform and readable in grayscale print.


class ImagePredictor(Protocol):
  """What predict_files needs: a jaxseg.inference.Predictor or any model with these methods."""

  def __call__(self, image: np.ndarray, image_id: str | None = None) -> np.ndarray:
    """uint8 (H, W) class ids of a uint8 (H, W, 3) RGB image."""

  def probabilities(self, image: np.ndarray, image_id: str | None = None) -> np.ndarray:
    """float32 (H, W, C) class probabilities (only called for --probs)."""


def output_names(stem: str, probs: str | None = None) -> list[str]:
  """The files predict_files writes for one input (`probs`: None, 'all' or 'max')."""
  names = [f'{stem}.png', f'{stem}_overlay.png']
  if probs == 'all':
    names.append(f'{stem}_probs.npy')
  elif probs == 'max':
    names += [f'{stem}_confidence.npy', f'{stem}_confidence.png']
  elif probs is not None:
    raise ValueError(f'--probs {probs!r} is unknown; use one of {", ".join(PROBS)}')
  return names


@functools.lru_cache(maxsize=4)
def _colour_table(name: str) -> np.ndarray:
  """uint8 (256, 3) RGB of a matplotlib colormap (the registry only: no pyplot state)."""
  rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
  return np.round(rgba[:, :3] * 255).astype(np.uint8)


def heat_map(values: np.ndarray, name: str = HEATMAP) -> np.ndarray:
  """uint8 (H, W, 3) RGB of values in [0, 1] (clipped) through colormap `name`."""
  index = np.round(np.clip(np.asarray(values, np.float32), 0.0, 1.0) * 255).astype(np.uint8)
  return _colour_table(name)[index]


def _unique_stem(path: pathlib.Path, used: set[str]) -> str:
  stem, k = path.stem, 1
  while stem in used:
    stem, k = f'{path.stem}_{k}', k + 1
  used.add(stem)
  return stem


def _refuse_overwriting_inputs(paths: list[pathlib.Path], stems: list[str],
                               output: pathlib.Path, probs: str | None = None) -> None:
  """ValueError naming the inputs that an output file would replace (before anything is written)."""
  inputs = {pathlib.Path(p).resolve() for p in paths}
  clashes = sorted(str(output / name) for stem in stems for name in output_names(stem, probs)
                   if (output / name).resolve() in inputs)
  if clashes:
    shown = ', '.join(clashes[:3]) + (f' and {len(clashes) - 3} more' if len(clashes) > 3 else '')
    raise ValueError(f'--output {output} would overwrite input image(s) {shown} with label maps; '
                     'nothing was written. Choose an --output folder that holds no inputs.')


def plan_outputs(inputs: Iterable[str | pathlib.Path], output: str | pathlib.Path,
                 probs: str | None = None) -> tuple[list[pathlib.Path], list[str]]:
  """(input image paths, their output stems), after checking every path; nothing is written.

  Raises:
    ValueError: --probs is not None/'all'/'max', --output is (or lies under) a file, an input
      folder holds no images, or an output file would replace an input.
  """
  output_names('', probs)  # An unknown --probs fails first.
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
  _refuse_overwriting_inputs(paths, stems, output, probs)
  return paths, stems


def predict_files(predictor: ImagePredictor, inputs: Iterable[str | pathlib.Path],
                  output: str | pathlib.Path, palette: np.ndarray,
                  log: TextIO | None = None, errors: TextIO | None = None,
                  max_pixels: int | None = images.MAX_PIXELS, probs: str | None = None,
                  progress: bool = True) -> dict[str, Any]:
  """Writes label and overlay PNGs (and --probs files) for every readable input; reports the
  others by name.

  `log` and `errors` default to sys.stdout and sys.stderr as they are at the call. Images of more
  than `max_pixels` pixels (None: no limit) are reported and skipped. `probs` None, 'all' or
  'max' (see the module docstring): then the labels are the argmax of
  `predictor.probabilities`, which is the only call made per image. `progress`: a tqdm bar on
  `errors` when it is a terminal, else a summary line there at the end.

  Returns {'written': [label png paths], 'failed': [(input, reason)]}.
  """
  log = sys.stdout if log is None else log
  errors = sys.stderr if errors is None else errors
  output = pathlib.Path(output)
  paths, stems = plan_outputs(inputs, output, probs)
  try:
    output.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f'--output {output}: cannot create the folder: {e.strerror or e}') from e
  start = time.perf_counter()
  interactive = progress and errors.isatty()
  bar = tqdm.tqdm(total=len(paths), desc='predict', unit='image', file=errors,
                  disable=not interactive, dynamic_ncols=True)
  written, failed = [], []
  for path, stem in zip(paths, stems):
    bar.set_postfix_str(path.name, refresh=False)
    try:
      image = images.load_rgb(path, max_pixels)
    except Exception as e:  # pylint: disable=broad-except  Any unreadable file: report, go on.
      reason = f'{type(e).__name__}: {e}'
      failed.append((str(path), reason))
      bar.write(f'error: cannot read {path}: {reason}', file=errors)
      bar.update()
      continue
    try:
      if probs is None:
        label, scores = predictor(image, path.stem), None
      else:
        scores = np.asarray(predictor.probabilities(image, path.stem), np.float32)
        label = np.argmax(scores, axis=-1).astype(np.uint8)
    except Exception as e:  # pylint: disable=broad-except  E.g. a model-size constraint.
      reason = f'{type(e).__name__}: {e}'
      failed.append((str(path), reason))
      bar.write(f'error: cannot predict {path}: {reason}', file=errors)
      bar.update()
      continue
    label_path = output / f'{stem}.png'
    images.save_label_png(label_path, label, palette)
    PIL.Image.fromarray(classes.overlay(image, label, palette)).save(
        output / f'{stem}_overlay.png')
    if probs == 'all':
      np.save(output / f'{stem}_probs.npy', scores)
    elif probs == 'max':
      confidence = scores.max(axis=-1)
      np.save(output / f'{stem}_confidence.npy', confidence)
      PIL.Image.fromarray(heat_map(confidence)).save(output / f'{stem}_confidence.png')
    written.append(str(label_path))
    bar.write(f'{path} -> {label_path} ({image.shape[0]}x{image.shape[1]})', file=log)
    bar.update()
  bar.close()
  seconds = time.perf_counter() - start
  if progress and not interactive:
    print(f'predict: {len(paths)} images in {seconds:.1f} s '
          f'({seconds / max(len(paths), 1):.2f} s/image)', file=errors)
  print(f'predicted {len(written)} of {len(paths)} images into {output}'
        + (f'; {len(failed)} failed: {", ".join(p for p, _ in failed)}' if failed else ''),
        file=log)
  return {'written': written, 'failed': failed}


def write_examples(config: ml_collections.ConfigDict, predictor: Predictor,
                   output: pathlib.Path, count: int, split: str | None = None) -> list[str]:
  """<id>.png, <id>_overlay.png, <id>_image.png and <id>_truth.png for a split's first examples."""
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TF)
  builder = pipeline.load_builder(config)
  palette = classes.spec_for_data(config.data).palette
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
