"""Pictures and tables of segmentation data and results: what notebooks and `jaxseg report` show.

Sections, top to bottom:
  label images   palettes (the dataset's, from jaxseg.data.classes), label -> colour, overlays,
                 legends listing only the classes present
  workdir        metrics.jsonl, config.json and eval/<split>_step<N>.json of a training run
  figures        training curves, per-class IoU bars, confusion matrix, image/truth/prediction
                 grids, class frequencies, augmentation, DeconvNet switches, PSPNet bins
  tables         metrics and per-class IoU as Markdown, the latter in the layout of the VOC
                 leaderboard (mean first, one column per class) with published rows
  data and models  examples by id, predictions of a checkpoint, augmentation of a pair, stage
                 shapes and parameter counts

Every figure function returns a `matplotlib.figure.Figure` built without pyplot (no global
state): `fig.savefig(path)` renders with Agg whatever the interactive backend, so the same code
runs headless in `jaxseg report`, in CI and inline in Jupyter. Heavy dependencies (JAX models,
TensorFlow datasets, checkpoints) are imported inside the functions that need them.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import json
import math
import pathlib
import re
from typing import Any

import matplotlib
import matplotlib.colors
from matplotlib import patches
import matplotlib.ticker
from matplotlib.figure import Figure
import numpy as np

from jaxseg.data import classes

IGNORE_LABEL = classes.IGNORE_LABEL
METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
EVAL_DIR = 'eval'
_EVAL_NAME = re.compile(r'^(?P<split>.+)_step(?P<step>\d+)\.json$')
_SCORE_KEYS = ('pixel_accuracy', 'mean_accuracy', 'mean_iou', 'fw_iou')
_SCORE_TITLES = {'pixel_accuracy': 'pixel acc.', 'mean_accuracy': 'mean acc.',
                 'mean_iou': 'mean IoU', 'fw_iou': 'f.w. IoU'}
DASH = '—'
_NUMERIC_KEYS = _SCORE_KEYS + ('iou', 'loss', 'lr', 'images_per_sec', 'grad_norm')


# ================================================================ label images
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


def _check_palette(palette: Any) -> np.ndarray:
  palette = np.asarray(palette)
  if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) < 256:
    raise ValueError(f'palette must have shape (256, 3) (row i = colour of label i, row 255 = '
                     f'ignore), got {palette.shape}')
  return palette.astype(np.uint8)


def colorize(label: Any, palette: Any) -> np.ndarray:
  """uint8 (H, W, 3) colours of an integer label map (values 0..255, 255 = ignore)."""
  label = np.asarray(label)
  palette = _check_palette(palette)
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
  palette = _check_palette(palette)
  handles = [patches.Patch(facecolor=palette[c] / 255, edgecolor='black', linewidth=0.5,
                           label=class_names[c])
             for c in present_classes(label_maps, len(class_names))]
  if any((m == ignore_label).any() for m in label_maps):
    handles.append(patches.Patch(facecolor=palette[ignore_label] / 255, edgecolor='black',
                                 linewidth=0.5, label=f'ignore ({ignore_label})'))
  return handles


# ================================================================ workdir
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def resolve_path(path: str | pathlib.Path) -> pathlib.Path:
  """`path` as given if it exists or is absolute, else relative to the repository root.

  Notebooks run in notebooks/, the CLI anywhere: 'workdirs/demo' means the same folder for both.
  """
  path = pathlib.Path(path).expanduser()
  if path.is_absolute() or path.exists():
    return path
  return REPO_ROOT / path


def _workdir(workdir: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(workdir)
  if not path.is_dir():
    raise FileNotFoundError(f'workdir {path} does not exist (train one with `jaxseg train '
                            f'--config ... --workdir {path}` or `jaxseg demo`)')
  return path


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
  """The records of workdir/metrics.jsonl, in file order (JSON null read as NaN)."""
  path = _workdir(workdir) / METRICS_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{path} does not exist: the workdir has no training log yet')
  records = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}:{number} is not valid JSON ({e.msg}); fix or delete that '
                       'line') from None
    if not isinstance(record, dict) or 'step' not in record or 'split' not in record:
      raise ValueError(f'{path}:{number} lacks "step"/"split": not a jaxseg metrics record')
    records.append(_nan_for_none(record))
  return records


def split_records(records: Sequence[Mapping[str, Any]]
                  ) -> tuple[list[Mapping[str, Any]], dict[str, list[Mapping[str, Any]]]]:
  """(train records, {eval split: records}) from `read_metrics`, each sorted by step."""
  train, evals = [], {}
  for record in sorted(records, key=lambda r: r['step']):
    if record['split'] == 'train':
      train.append(record)
    else:
      evals.setdefault(record['split'], []).append(record)
  return train, evals


def read_config(workdir: str | pathlib.Path) -> Any:
  """The resolved config the workdir was trained with (workdir/config.json), locked."""
  from jaxseg import config_loading  # pylint: disable=g-import-not-at-top
  path = _workdir(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{path} does not exist: not a jaxseg workdir (train writes it)')
  return config_loading.from_json_file(path)


def eval_files(workdir: str | pathlib.Path) -> list[tuple[str, int, pathlib.Path]]:
  """(split, step, path) of every workdir/eval/<split>_step<N>.json, sorted by split and step."""
  folder = _workdir(workdir) / EVAL_DIR
  found = []
  for path in folder.glob('*.json') if folder.is_dir() else ():
    match = _EVAL_NAME.match(path.name)
    if match:
      found.append((match['split'], int(match['step']), path))
  return sorted(found, key=lambda t: (t[0], t[1]))


def load_eval(workdir: str | pathlib.Path, split: str | None = None,
              step: int | None = None) -> dict[str, Any]:
  """An eval/<split>_step<N>.json as a dict (NaN for null, confusion_matrix as an array).

  Default split: the one named by config.json's data.eval_split if it was evaluated, else any;
  default step: the latest.
  """
  files = eval_files(workdir)
  if not files:
    raise FileNotFoundError(f'{pathlib.Path(workdir) / EVAL_DIR} holds no <split>_step<N>.json: '
                            f'run `jaxseg eval --workdir {workdir}` first')
  splits = sorted({s for s, _, _ in files})
  if split is None:
    preferred = None
    config_path = pathlib.Path(workdir) / CONFIG_FILE
    if config_path.is_file():
      preferred = json.loads(config_path.read_text()).get('data', {}).get('eval_split')
    split = preferred if preferred in splits else splits[0]
  candidates = [(s, n, p) for s, n, p in files if s == split and (step is None or n == step)]
  if not candidates:
    have = ', '.join(f'{s}_step{n}' for s, n, _ in files)
    raise ValueError(f'no eval results for split {split!r}'
                     + (f' at step {step}' if step is not None else '') + f'; have: {have}')
  _, found_step, path = candidates[-1]
  results = _nan_for_none(json.loads(path.read_text()))
  results.setdefault('step', found_step)
  results.setdefault('split', split)
  if 'confusion_matrix' in results:
    results['confusion_matrix'] = np.asarray(results['confusion_matrix'], np.int64)
  results['path'] = str(path)
  return results


def _nan_for_none(value: Any) -> Any:
  """JSON's null (written for NaN) back to NaN in score fields and in lists of numbers."""
  if isinstance(value, dict):
    return {k: math.nan if v is None and k in _NUMERIC_KEYS else _nan_for_none(v)
            for k, v in value.items()}
  if isinstance(value, list):
    if value and all(v is None or isinstance(v, (int, float)) for v in value):
      return [math.nan if v is None else v for v in value]
    return [_nan_for_none(v) for v in value]
  return value


def worst_images(per_image: Sequence[Mapping[str, Any]], count: int = 4) -> list[dict[str, Any]]:
  """The `count` entries of an eval's per_image list with the lowest IoU (NaN/None skipped)."""
  scored = [dict(p) for p in per_image
            if p.get('iou') is not None and not math.isnan(float(p['iou']))]
  return sorted(scored, key=lambda p: (float(p['iou']), str(p.get('id'))))[:max(count, 0)]


# ================================================================ figures
def _percent(x: float) -> str:
  return 'n/a' if x is None or math.isnan(x) else f'{100 * x:.1f}'


def plot_training_curves(records: Sequence[Mapping[str, Any]], title: str = '') -> Figure:
  """Train loss, learning rate and eval mean IoU / pixel accuracy over steps (metrics.jsonl)."""
  train, evals = split_records(records)
  fig = Figure(figsize=(13, 3.6), layout='constrained')
  ax_loss, ax_lr, ax_eval = fig.subplots(1, 3)

  def series(rows, key):
    pairs = [(r['step'], r[key]) for r in rows if key in r and not math.isnan(r[key])]
    return [p[0] for p in pairs], [p[1] for p in pairs]

  steps, loss = series(train, 'loss')
  ax_loss.plot(steps, loss, marker='.' if len(steps) < 30 else None, color='tab:blue')
  ax_loss.set(title='training loss', xlabel='step', ylabel='cross-entropy (interval mean)')
  steps, lr = series(train, 'lr')
  ax_lr.plot(steps, lr, marker='.' if len(steps) < 30 else None, color='tab:orange')
  ax_lr.set(title='learning rate', xlabel='step', ylabel='learning rate')
  ax_lr.ticklabel_format(axis='y', style='sci', scilimits=(-3, 3))
  for ax in (ax_loss, ax_lr):
    if not train:
      ax.text(0.5, 0.5, 'no training records', ha='center', va='center', transform=ax.transAxes)
  for colour, (split, rows) in zip(('tab:green', 'tab:purple', 'tab:brown'), evals.items()):
    steps, miou = series(rows, 'mean_iou')
    ax_eval.plot(steps, [100 * v for v in miou], marker='o', color=colour,
                 label=f'{split} mean IoU')
    steps, acc = series(rows, 'pixel_accuracy')
    ax_eval.plot(steps, [100 * v for v in acc], marker='s', linestyle='--', color=colour,
                 alpha=0.6, label=f'{split} pixel acc.')
  if evals:
    ax_eval.legend(fontsize='small', loc='lower right')
    ax_eval.set_ylim(0, 100)
  else:
    ax_eval.text(0.5, 0.5, 'no evaluation yet', ha='center', va='center',
                 transform=ax_eval.transAxes)
  ax_eval.set(title='evaluation', xlabel='step', ylabel='%')
  for ax in (ax_loss, ax_lr, ax_eval):
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  return fig


def plot_per_class_iou(per_class_iou: Sequence[float], class_names: Sequence[str],
                       palette: Any = None, title: str = 'Per-class IoU') -> Figure:
  """Horizontal bars of IoU (%) per class in class order, coloured by the palette, mean marked."""
  iou = np.asarray(per_class_iou, np.float64)
  if len(iou) != len(class_names):
    raise ValueError(f'{len(iou)} IoU values for {len(class_names)} class names')
  colours = (_check_palette(palette)[:len(iou)] / 255 if palette is not None
             else ['tab:blue'] * len(iou))
  fig = Figure(figsize=(7, 0.8 + 0.32 * len(iou)), layout='constrained')
  ax = fig.subplots()
  y = np.arange(len(iou))
  ax.barh(y, np.nan_to_num(100 * iou), color=colours, edgecolor='black', linewidth=0.6)
  for i, v in enumerate(iou):
    ax.text((0 if math.isnan(v) else 100 * v) + 1, i,
            'absent' if math.isnan(v) else f'{100 * v:.1f}', va='center', fontsize='small',
            bbox=dict(facecolor='white', edgecolor='none', alpha=0.8, pad=1))
  mean = np.nanmean(iou) if np.isfinite(iou).any() else math.nan
  if not math.isnan(mean):
    ax.axvline(100 * mean, color='black', linestyle='--', linewidth=1,
               label=f'mean IoU {100 * mean:.1f}%')
    ax.legend(loc='lower right', fontsize='small')
  ax.set_yticks(y, list(class_names))
  ax.invert_yaxis()
  ax.set_xlim(0, 108)
  ax.set(xlabel='IoU (%)', title=title)
  ax.grid(axis='x', alpha=0.3)
  return fig


def normalize_confusion(cm: Any) -> np.ndarray:
  """Rows divided by their sums (fraction of each true class's pixels); NaN rows for absent."""
  cm = np.asarray(cm, np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'confusion matrix must be square, got shape {cm.shape}')
  totals = cm.sum(1, keepdims=True)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(totals > 0, cm / totals, np.nan)


def plot_confusion_matrix(cm: Any, class_names: Sequence[str],
                          title: str = 'Confusion matrix (rows normalised)') -> Figure:
  """Heatmap of the row-normalised confusion matrix (rows: truth, columns: prediction)."""
  norm = normalize_confusion(cm)
  n = len(norm)
  if len(class_names) != n:
    raise ValueError(f'{len(class_names)} class names for a {n}x{n} confusion matrix')
  size = max(4.5, 0.42 * n + 2.5)
  fig = Figure(figsize=(size + 1, size), layout='constrained')
  ax = fig.subplots()
  cmap = matplotlib.colormaps['Blues'].with_extremes(bad='lightgrey')  # Absent classes.
  image = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0, vmax=1)
  if n <= 25:
    for i in range(n):
      for j in range(n):
        v = norm[i, j]
        if not math.isnan(v) and round(100 * v) > 0:
          ax.text(j, i, f'{100 * v:.0f}', ha='center', va='center',
                  fontsize=8 if n <= 12 else 6, color='white' if v > 0.5 else 'black')
  ax.set_xticks(range(n), list(class_names), rotation=60 if n > 8 else 30, ha='right',
                rotation_mode='anchor')
  ax.set_yticks(range(n), list(class_names))
  ax.set(xlabel='predicted class', ylabel='true class', title=title)
  bar = fig.colorbar(image, ax=ax, shrink=0.8)
  bar.set_label('fraction of the true class\'s pixels')
  return fig


def _show(ax, picture, title: str = '') -> None:
  ax.imshow(picture, interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize='medium')


def plot_segmentations(images: Sequence[Any], labels: Sequence[Any] | None,
                       predictions: Sequence[Any] | None, class_names: Sequence[str],
                       palette: Any, row_titles: Sequence[str] | None = None, title: str = '',
                       ignore_label: int = IGNORE_LABEL) -> Figure:
  """One row per example: image, ground truth, prediction, prediction over the image.

  `labels` or `predictions` may be None (their columns are left out). The legend lists only the
  classes present in the shown label maps.
  """
  if not len(images):
    raise ValueError('no images to show')
  for name, maps in (('labels', labels), ('predictions', predictions)):
    if maps is not None and len(maps) != len(images):
      raise ValueError(f'{len(images)} images but {len(maps)} {name}')
  palette = _check_palette(palette)
  columns = [('image', None)]
  if labels is not None:
    columns.append(('ground truth', 'label'))
  if predictions is not None:
    columns += [('prediction', 'pred'), ('prediction overlay', 'overlay')]
  elif labels is not None:
    columns.append(('ground-truth overlay', 'truth_overlay'))
  rows = len(images)
  fig = Figure(figsize=(2.6 * len(columns) + 1.8, 2.6 * rows + 0.6), layout='constrained')
  axes = np.asarray(fig.subplots(rows, len(columns), squeeze=False))
  for r in range(rows):
    image = np.asarray(images[r])
    label = None if labels is None else np.asarray(labels[r])
    pred = None if predictions is None else np.asarray(predictions[r])
    pictures = {None: image, 'label': label, 'pred': pred}
    for c, (heading, key) in enumerate(columns):
      if key in ('label', 'pred'):
        picture = colorize(pictures[key], palette)
      elif key == 'overlay':
        picture = overlay(image, pred, palette, ignore_label=ignore_label)
      elif key == 'truth_overlay':
        picture = overlay(image, label, palette, ignore_label=ignore_label)
      else:
        picture = image
      _show(axes[r, c], picture, heading if r == 0 else '')
    if row_titles is not None:
      axes[r, 0].set_ylabel(row_titles[r], fontsize='small')
  maps = [m for group in (labels, predictions) if group is not None for m in group]
  handles = legend_handles(maps, class_names, palette, ignore_label)
  if handles:
    fig.legend(handles=handles, loc='outside right upper', fontsize='small', title='classes')
  if title:
    fig.suptitle(title)
  return fig


def plot_pairs(images: Sequence[Any], labels: Sequence[Any], class_names: Sequence[str],
               palette: Any, titles: Sequence[str] | None = None, title: str = '',
               ignore_label: int = IGNORE_LABEL) -> Figure:
  """Images (top row) over their colourised masks (bottom row), e.g. samples or augmentations."""
  if len(images) != len(labels) or not len(images):
    raise ValueError(f'need as many labels as images (and at least one), got {len(images)} '
                     f'images and {len(labels)} labels')
  palette = _check_palette(palette)
  n = len(images)
  fig = Figure(figsize=(2.4 * n + 1.8, 5.2), layout='constrained')
  axes = np.asarray(fig.subplots(2, n, squeeze=False))
  for i in range(n):
    image, label = np.asarray(images[i]), np.asarray(labels[i])
    heading = titles[i] if titles is not None else ''
    _show(axes[0, i], image, f'{heading}\n{image.shape[0]}x{image.shape[1]}'.strip())
    _show(axes[1, i], colorize(label, palette))
  axes[0, 0].set_ylabel('image')
  axes[1, 0].set_ylabel('mask')
  handles = legend_handles(labels, class_names, palette, ignore_label)
  fig.legend(handles=handles, loc='outside right upper', fontsize='small', title='classes')
  if title:
    fig.suptitle(title)
  return fig


def plot_class_frequencies(counts: Sequence[int], class_names: Sequence[str], palette: Any = None,
                           ignored: int = 0, title: str = 'Class pixel frequencies') -> Figure:
  """Share of labelled pixels per class (%, log scale) in class colours; ignored share noted."""
  counts = np.asarray(counts, np.float64)
  if len(counts) != len(class_names):
    raise ValueError(f'{len(counts)} counts for {len(class_names)} class names')
  total = counts.sum()
  if total <= 0:
    raise ValueError('no labelled pixels to count')
  share = 100 * counts / total
  colours = (_check_palette(palette)[:len(counts)] / 255 if palette is not None
             else ['tab:blue'] * len(counts))
  fig = Figure(figsize=(max(6, 0.45 * len(counts) + 2), 4), layout='constrained')
  ax = fig.subplots()
  x = np.arange(len(counts))
  ax.bar(x, np.where(share > 0, share, np.nan), color=colours, edgecolor='black', linewidth=0.6)
  for i, s in enumerate(share):
    ax.text(i, s if s > 0 else 1e-3, f'{s:.2g}', ha='center', va='bottom', fontsize='small')
  ax.set_yscale('log')
  ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f'{v:g}'))
  ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xticks(x, list(class_names), rotation=45 if len(counts) > 6 else 0,
                ha='right' if len(counts) > 6 else 'center')
  ax.set_ylabel('% of labelled pixels (log scale)')
  ignored_share = 100 * ignored / (total + ignored)
  ax.set_title(f'{title} ({int(total):,} labelled pixels; {ignored_share:.1f}% ignored)')
  ax.grid(axis='y', alpha=0.3, which='both')
  return fig


def switch_offsets(switches: Any, input_width: int) -> np.ndarray:
  """Position of each max inside its 2x2 window, 0..3 = (dy, dx) (0,0) (0,1) (1,0) (1,1).

  `switches` are `jaxseg.ops.max_pool_with_argmax`'s flat indices h * W + w into the pre-pool
  plane of width `input_width`, shape (..., h, w, C) for a 2x2 stride-2 pool.
  """
  switches = np.asarray(switches)
  rows = np.arange(switches.shape[-3]).reshape(-1, 1, 1)
  cols = np.arange(switches.shape[-2]).reshape(1, -1, 1)
  dy = switches // input_width - 2 * rows
  dx = switches % input_width - 2 * cols
  if dy.min() < 0 or dy.max() > 1 or dx.min() < 0 or dx.max() > 1:
    raise ValueError('switches do not index a 2x2 stride-2 window of a plane of width '
                     f'{input_width}')
  return (2 * dy + dx).astype(np.int32)


def _busiest_window(activation: np.ndarray, size: int) -> tuple[int, int]:
  """Top-left (even) corner of the size x size window whose activation varies most (an edge)."""
  h, w = activation.shape
  size = min(size, h, w)
  best, corner = -1.0, (0, 0)
  for y in range(0, h - size + 1, 2):
    for x in range(0, w - size + 1, 2):
      total = float(activation[y:y + size, x:x + size].std())
      if total > best:
        best, corner = total, (y, x)
  return corner


def plot_unpooling(image: Any, before: Any, switches: Any, unpooled: Any,
                   channel: int | None = None, zoom: int = 16, title: str = '') -> Figure:
  """DeconvNet's switches for one channel of a 2x2 pooling layer: whole map, then a zoom.

  Args:
    image: uint8 (H, W, 3) input.
    before: (h, w, C) activation entering the pool.
    switches: (h/2, w/2, C) switches of that pool (flat indices, jaxseg.ops convention).
    unpooled: (h, w, C) `max_unpool(pooled, switches)`: maxima back in place, zeros elsewhere.
    channel: the channel shown (default: the one with the most varied activation).
    zoom: side of the zoomed window (pre-pool pixels), placed where the channel varies most.
  """
  before_all = np.asarray(before)
  if channel is None:
    channel = int(np.argmax(before_all.reshape(-1, before_all.shape[-1]).std(0)))
  before = before_all[..., channel]
  unpooled = np.asarray(unpooled)[..., channel]
  offsets = switch_offsets(np.asarray(switches)[None], before.shape[1])[0][..., channel]
  offsets_full = np.repeat(np.repeat(offsets, 2, 0), 2, 1)[:before.shape[0], :before.shape[1]]
  image = np.asarray(image)
  y, x = _busiest_window(before, zoom)
  zoom = min(zoom, *before.shape)
  window = (slice(y, y + zoom), slice(x, x + zoom))
  scale = image.shape[0] / before.shape[0]
  cmap = matplotlib.colors.ListedColormap(['#1b9e77', '#d95f02', '#7570b3', '#e7298a'])
  vmax = float(np.abs(before).max()) or 1.0
  fig = Figure(figsize=(14, 7.2), layout='constrained')
  axes = fig.subplots(2, 4)
  for row, crop in enumerate((None, window)):
    pic = image if crop is None else image[int(y * scale):int((y + zoom) * scale),
                                           int(x * scale):int((x + zoom) * scale)]
    where = '' if crop is None else f' (zoom {zoom}x{zoom})'
    _show(axes[row, 0], pic, 'input image' + where)
    for ax, data, heading in ((axes[row, 1], before, f'activation, channel {channel}'),
                              (axes[row, 3], unpooled, 'unpooled: maxima back in place')):
      ax.imshow(data if crop is None else data[crop], cmap='magma', vmin=0, vmax=vmax,
                interpolation='nearest')
      ax.set_title(heading + where, fontsize='medium')
    axes[row, 2].imshow(offsets_full if crop is None else offsets_full[crop], cmap=cmap,
                        vmin=-0.5, vmax=3.5, interpolation='nearest')
    axes[row, 2].set_title('switch: position of each 2x2 max' + where, fontsize='medium')
    for ax in axes[row]:
      ax.set_xticks([])
      ax.set_yticks([])
      if crop is not None and ax is not axes[row, 0]:  # The 2x2 pooling windows.
        for k in range(0, zoom + 1, 2):
          ax.axhline(k - 0.5, color='white', linewidth=0.4, alpha=0.6)
          ax.axvline(k - 0.5, color='white', linewidth=0.4, alpha=0.6)
  for ax, s in zip(axes[0], (scale, 1, 1, 1)):
    ax.add_patch(patches.Rectangle((x * s - 0.5, y * s - 0.5), zoom * s, zoom * s,
                                   fill=False, edgecolor='cyan', linewidth=1.5))
  fig.legend(handles=[patches.Patch(color=cmap(i), label=name) for i, name in
                      enumerate(('top-left', 'top-right', 'bottom-left', 'bottom-right'))],
             loc='outside lower center', ncols=4, fontsize='small', title='switch position')
  if title:
    fig.suptitle(title)
  return fig


def bin_edges(size: int, bins: int) -> list[tuple[int, int]]:
  """[start, end) of each adaptive-average-pooling bin along one axis (as torch and PSPNet)."""
  if size < 1 or bins < 1:
    raise ValueError(f'need positive size and bins, got {size} and {bins}')
  return [((i * size) // bins, -((-(i + 1) * size) // bins)) for i in range(bins)]


def plot_pyramid_bins(image: Any, feature: Any, pooled: Mapping[int, Any],
                      upsampled: Mapping[int, Any] | None = None,
                      title: str = 'PSPNet pyramid pooling') -> Figure:
  """Each pyramid level: its bins drawn on the image, the pooled cells and (optionally) the
  upsampled map the level adds to the concatenation. Maps with 3 channels are shown as RGB
  (0-255), others by their channel mean.

  Args:
    image: uint8 (H, W, 3) input.
    feature: (h, w, C) map the module pools (layer4, output stride 8).
    pooled: {bins: (bins, bins, C)} adaptive average pool of `feature` per level.
    upsampled: {bins: (h, w, C)} each level resized back to (h, w).
  """
  image = np.asarray(image)
  feature = np.asarray(feature)
  levels = sorted(pooled)

  def picture(x):
    x = np.asarray(x, np.float32)
    return np.clip(x, 0, 255).astype(np.uint8) if x.shape[-1] == 3 else x.mean(-1)

  rows = 3 if upsampled is not None else 2
  fig = Figure(figsize=(2.7 * (len(levels) + 1), 2.9 * rows), layout='constrained')
  axes = np.asarray(fig.subplots(rows, len(levels) + 1, squeeze=False))
  _show(axes[0, 0], image, f'input {image.shape[0]}x{image.shape[1]}')
  _show(axes[1, 0], picture(feature), f'layer4-size map {feature.shape[0]}x{feature.shape[1]}')
  if upsampled is not None:
    axes[2, 0].axis('off')
  scale_y, scale_x = image.shape[0] / feature.shape[0], image.shape[1] / feature.shape[1]
  for k, b in enumerate(levels, 1):
    ax = axes[0, k]
    _show(ax, image, f'{b}x{b} bins')
    for start, end in bin_edges(feature.shape[0], b):
      for y in (start, end):
        ax.axhline(y * scale_y - 0.5, color='yellow', linewidth=1.2)
    for start, end in bin_edges(feature.shape[1], b):
      for x in (start, end):
        ax.axvline(x * scale_x - 0.5, color='yellow', linewidth=1.2)
    _show(axes[1, k], picture(pooled[b]), f'pooled {b}x{b}')
    if upsampled is not None:
      _show(axes[2, k], picture(upsampled[b]), f'upsampled to {feature.shape[0]}x'
            f'{feature.shape[1]}')
  fig.suptitle(title)
  return fig


# ================================================================ tables
@dataclasses.dataclass(frozen=True)
class PublishedResult:
  """A published PASCAL VOC 2012 *test* result: mean IoU and the per-class IoUs printed (%)."""
  name: str
  mean_iou: float
  per_class_iou: Mapping[str, float]  # VOC class name -> IoU %; classes not printed are absent.
  source: str


_VOC_OBJECTS = classes.VOC_CLASSES[1:]
# Only numbers found in a source are listed; the other cells print as a dash.
PUBLISHED_VOC12_TEST: dict[str, PublishedResult] = {
    # Per-class: Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions",
    # ICLR 2016, Table 2 (VOC 2012 test, the authors' public FCN-8s); mean 62.2 also in
    # Noh et al. 2015, Table 1. Background IoU is not printed there.
    'FCN-8s': PublishedResult('FCN-8s', 62.2, dict(zip(_VOC_OBJECTS, (
        76.8, 34.2, 68.9, 49.4, 60.3, 75.3, 74.7, 77.6, 21.4, 62.5, 46.8, 71.8, 63.9, 76.5,
        73.9, 45.2, 72.4, 37.4, 70.9, 55.1))),
        'Yu & Koltun, ICLR 2016, Table 2 (per class); Long et al., CVPR 2015'),
    # Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015:
    # DeconvNet alone 69.6, EDeconvNet+CRF (ensemble with FCN-8s + CRF) 72.5 (also the
    # authors' README). Per-class values (their Table 1) not verified here: left blank.
    'DeconvNet': PublishedResult('DeconvNet', 69.6, {}, 'Noh et al., ICCV 2015'),
    'EDeconvNet+CRF': PublishedResult('EDeconvNet+CRF', 72.5, {}, 'Noh et al., ICCV 2015'),
    # Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017, Table 6: ResNet-101 trained on
    # VOC 2012 (train_aug) without MS-COCO: 82.6; with MS-COCO pre-training: 85.4 (abstract).
    # Per-class values not verified here: left blank.
    'PSPNet': PublishedResult('PSPNet', 82.6, {}, 'Zhao et al., CVPR 2017, Table 6'),
    'PSPNet (COCO pre-trained)': PublishedResult('PSPNet (COCO pre-trained)', 85.4, {},
                                                 'Zhao et al., CVPR 2017'),
}


def _cell(value: float | None, digits: int = 1) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return DASH
  return f'{value:.{digits}f}'


def published_for(class_names: Sequence[str]) -> tuple[str, ...]:
  """Names of PUBLISHED_VOC12_TEST rows that apply: all for VOC's 21 classes, else none."""
  return tuple(PUBLISHED_VOC12_TEST) if tuple(class_names) == classes.VOC_CLASSES else ()


def metrics_markdown(results: Mapping[str, Any]) -> str:
  """One-row Markdown table of pixel accuracy, mean accuracy, mean IoU and f.w. IoU (%)."""
  missing = [k for k in _SCORE_KEYS if k not in results]
  if missing:
    raise ValueError(f'results lack {missing}: pass an eval result (jaxseg.evaluate.evaluate '
                     'or eval/<split>_step<N>.json)')
  head = '| ' + ' | '.join(_SCORE_TITLES[k] for k in _SCORE_KEYS) + ' |'
  rule = '|' + '---:|' * len(_SCORE_KEYS)
  row = '| ' + ' | '.join(_cell(100 * float(results[k])) for k in _SCORE_KEYS) + ' |'
  return '\n'.join([head, rule, row])


def leaderboard_markdown(rows: Mapping[str, Mapping[str, Any]], class_names: Sequence[str],
                         published: Sequence[str] = ()) -> str:
  """Per-class IoU (%) as the VOC leaderboard lays it out: method, mean, then one column a class.

  Args:
    rows: {method name: eval results with 'mean_iou' and 'per_class_iou' (fractions)}.
    class_names: column order (must be VOC's 21 classes when `published` is used).
    published: names from PUBLISHED_VOC12_TEST to add below (VOC 2012 test numbers; cells the
      papers do not print show a dash).
  """
  names = list(class_names)
  for method, results in rows.items():
    if len(results['per_class_iou']) != len(names):
      raise ValueError(f'{method}: {len(results["per_class_iou"])} per-class values for '
                       f'{len(names)} classes')
  if published and tuple(names) != classes.VOC_CLASSES:
    raise ValueError('published rows are PASCAL VOC 2012 results: class_names must be the 21 '
                     'VOC classes')
  unknown = [p for p in published if p not in PUBLISHED_VOC12_TEST]
  if unknown:
    raise ValueError(f'unknown published result(s) {unknown}; known: '
                     f'{", ".join(PUBLISHED_VOC12_TEST)}')
  lines = ['| method | mean | ' + ' | '.join(names) + ' |',
           '|---|---:|' + '---:|' * len(names)]
  for method, results in rows.items():
    cells = [_cell(100 * float(v)) for v in results['per_class_iou']]
    lines.append(f'| {method} | **{_cell(100 * float(results["mean_iou"]))}** | '
                 + ' | '.join(cells) + ' |')
  for key in published:
    paper = PUBLISHED_VOC12_TEST[key]
    cells = [_cell(paper.per_class_iou.get(n)) for n in names]
    lines.append(f'| {paper.name} (VOC12 test; {paper.source}) | **{_cell(paper.mean_iou)}** | '
                 + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def images_markdown(entries: Sequence[Mapping[str, Any]]) -> str:
  """Markdown table of per-image scores (e.g. `worst_images`): image id, mean IoU, pixel acc."""
  lines = ['| image | mean IoU | pixel acc. |', '|---|---:|---:|']
  lines += [f'| {e["id"]} | {_cell(100 * float(e["iou"]))} | '
            f'{_cell(100 * float(e.get("pixel_accuracy", math.nan)))} |' for e in entries]
  return '\n'.join(lines)


def per_class_markdown(results: Mapping[str, Any], class_names: Sequence[str]) -> str:
  """Vertical Markdown table: class, IoU (%), accuracy (%), one row per class."""
  iou = results['per_class_iou']
  acc = results.get('per_class_accuracy', [math.nan] * len(iou))
  if len(iou) != len(class_names):
    raise ValueError(f'{len(iou)} per-class values for {len(class_names)} classes')
  lines = ['| class | IoU | accuracy |', '|---|---:|---:|']
  lines += [f'| {n} | {_cell(100 * float(i))} | {_cell(100 * float(a))} |'
            for n, i, a in zip(class_names, iou, acc)]
  return '\n'.join(lines)


# ================================================================ data and models
def dataset_config(dataset: str = 'synthetic_shapes/tiny', data_dir: str = '',
                   manual_dir: str = '', **data_fields: Any) -> Any:
  """experiments/default.py's config pointed at a dataset (its class count and splits).

  Relative data_dir / manual_dir are resolved with `resolve_path`; '' keeps TFDS's defaults.
  """
  from jaxseg import config_loading  # pylint: disable=g-import-not-at-top
  data_dir = str(resolve_path(data_dir)) if data_dir else ''
  manual_dir = str(resolve_path(manual_dir)) if manual_dir else ''
  config = config_loading.load_config(config_loading.experiments_dir() / 'default.py')
  base = dataset.split('/')[0].split(':')[0]
  splits = {'voc2012_segmentation': ('train_aug', 'val'), 'camvid': ('train', 'val'),
            'synthetic_shapes': ('train', 'val')}
  train_split, eval_split = splits.get(base, ('train', 'val'))
  config.data.update(dict(dataset=dataset, data_dir=data_dir, manual_dir=manual_dir,
                          num_classes=classes.dataset_spec(dataset).num_classes,
                          train_split=train_split, eval_split=eval_split))
  config.data.update(data_fields)
  return config


def load_examples(config: Any, split: str | None = None, count: int | None = None,
                  ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Examples {'id', 'image' uint8 (H, W, 3), 'label' uint8 (H, W)} of a split, in split order.

  The first `count` examples, or those whose id is in `ids` (returned in the order of `ids`;
  ids that are not in the split are left out). Prepares the dataset on first use.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top
  split = split or config.data.eval_split
  builder = pipeline.load_builder(config)
  if split.split('[')[0] not in builder.info.splits:
    raise ValueError(f'{split!r} is not a split of {builder.name} (splits: '
                     f'{sorted(builder.info.splits)})')
  if ids is None:
    ds = builder.as_dataset(split=split if count is None else f'{split}[:{count}]',
                            shuffle_files=False)
  else:
    skip = {k: tfds.decode.SkipDecoding() for k in ('image', 'label')}
    wanted = tf.constant([str(i) for i in ids] or [''])
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=skip)
    ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex['id'], wanted)))
    features = builder.info.features
    ds = ds.map(lambda ex: dict(ex, image=features['image'].decode_example(ex['image']),
                                label=features['label'].decode_example(ex['label'])))
  examples = []
  for ex in ds.as_numpy_iterator():
    label = np.asarray(ex['label'])
    examples.append({'id': ex['id'].decode() if 'id' in ex else str(len(examples)),
                     'image': np.asarray(ex['image']),
                     'label': label[..., 0] if label.ndim == 3 else label})
  if ids is not None:
    order = {str(i): k for k, i in enumerate(ids)}
    examples.sort(key=lambda e: order[e['id']])
  return examples


def class_pixel_counts(labels: Iterable[Any], num_classes: int,
                       ignore_label: int = IGNORE_LABEL) -> tuple[np.ndarray, int]:
  """(pixels per class (num_classes,), ignored pixels) over label maps."""
  counts = np.zeros(num_classes, np.int64)
  ignored = 0
  for label in labels:
    label = np.asarray(label).ravel()
    ignored += int((label == ignore_label).sum())
    valid = label[(label >= 0) & (label < num_classes)]
    counts += np.bincount(valid.astype(np.int64), minlength=num_classes)
  return counts, ignored


def augment_pair(config: Any, image: Any, label: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The training pipeline's joint augmentation of one pair (config.data's settings), for display.

  Returns the uint8 RGB crop (the mean pixel where the pipeline padded) and its int32 mask
  (255 where padded or rotated in).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top
  transform = pipeline.TrainAugment.from_config(config)
  out_image, out_label = transform(tf.constant(np.asarray(image), tf.float32),
                                   tf.constant(np.asarray(label), tf.int32),
                                   tf.constant([int(config.seed), int(seed)], tf.int64))
  pixels = pipeline.denormalize(out_image.numpy(), config.data.normalization)
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8), out_label.numpy()


@dataclasses.dataclass
class Restored:
  """A workdir's model at one checkpoint, ready to segment images."""
  config: Any
  model: Any
  variables: Any
  step: int
  predictor: Any  # jaxseg.predict.Predictor: uint8 (H, W, 3) -> uint8 (H, W) class ids.

  def predict(self, images: Iterable[Any]) -> list[np.ndarray]:
    return [self.predictor(np.asarray(image)) for image in images]


def restore(workdir: str | pathlib.Path, checkpoint: str | int = 'best') -> Restored:
  """The model of a workdir's checkpoint ('best', 'latest' or a step) with its saved config."""
  from jaxseg import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from jaxseg import config_loading, parallel, predict, train  # pylint: disable=g-import-not-at-top
  path = _workdir(workdir)
  if not (path / 'checkpoints').is_dir():
    raise FileNotFoundError(f'{path / "checkpoints"} does not exist: the workdir has no '
                            'checkpoint to predict with')
  variables, saved, step = checkpoint_lib.load_for_inference(path, parallel.create_mesh(),
                                                             checkpoint)
  config = config_loading.from_dict(saved.to_dict())
  model = train.build_model(config)
  return Restored(config, model, variables, step,
                  predict.predictor_from_config(config, model, variables))


def checkpoint_steps(workdir: str | pathlib.Path) -> list[int]:
  """Steps of the checkpoints kept in the workdir (empty if none)."""
  from jaxseg import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  path = _workdir(workdir)
  if not (path / 'checkpoints').is_dir():
    return []
  checkpointer = checkpoint_lib.Checkpointer(path, read_only=True)
  try:
    return checkpointer.all_steps()
  finally:
    checkpointer.close()


def restore_evaluated(workdir: str | pathlib.Path, results: Mapping[str, Any]) -> Restored:
  """The checkpoint an eval result was computed with if still kept, else the best one."""
  step = results.get('step')
  return restore(workdir, step if step in checkpoint_steps(workdir) else 'best')


def plot_predictions(restored: Restored, examples: Sequence[Mapping[str, Any]],
                     class_names: Sequence[str], palette: Any,
                     scores: Mapping[str, float] | None = None, title: str = '') -> Figure:
  """`plot_segmentations` of examples (from `load_examples`) with the restored model's output.

  `scores` ({id: IoU fraction}) adds each image's IoU to its row title.
  """
  if not examples:
    raise ValueError('no examples to predict')
  predictions = restored.predict(e['image'] for e in examples)
  titles = [e['id'] if scores is None or e['id'] not in scores
            else f'{e["id"]}\nIoU {_percent(scores[e["id"]])}%' for e in examples]
  return plot_segmentations([e['image'] for e in examples], [e['label'] for e in examples],
                            predictions, class_names, palette, row_titles=titles,
                            title=title or f'{restored.config.model.name} step {restored.step}')


def sample_image(path: str | pathlib.Path | None = None, size: int = 224) -> tuple[np.ndarray, str]:
  """(uint8 (size, size, 3) image, description): the file at `path` centre-cropped and resized,
  or, when there is none, a scene of the embedded synthetic dataset."""
  import PIL.Image  # pylint: disable=g-import-not-at-top
  if path is not None and pathlib.Path(path).is_file():
    with PIL.Image.open(path) as image:
      image = image.convert('RGB')
      side = min(image.size)
      left, top = (image.width - side) // 2, (image.height - side) // 2
      image = image.crop((left, top, left + side, top + side)).resize(
          (size, size), PIL.Image.BILINEAR)
      return np.asarray(image, np.uint8), pathlib.Path(path).name
  from jaxseg.data import synthetic  # pylint: disable=g-import-not-at-top
  image, _ = synthetic.render_scene(synthetic.scene_rng(0, 'val', 0), size, size)
  return image, 'synthetic_shapes scene (no image file found)'


def deconvnet_switches(image: Any, width: float = 1 / 8, seed: int = 0) -> dict[str, np.ndarray]:
  """DeconvNet's first encoder block and unpool1 on one image, with random weights.

  conv1_1 and conv1_2 (3x3, VGG16's He init, ReLU; BatchNorm at its initial identity is left
  out), then pool1 = `jaxseg.ops.max_pool_with_argmax` (2x2, stride 2, ceil mode, as the
  model) and `jaxseg.ops.max_unpool`, which DeconvNet's decoder applies at the mirrored layer.
  Run op by op: three small ops, nothing worth compiling a network for.

  Returns {'before': (H, W, C) activation entering pool1, 'pooled', 'switches' (flat indices
  h * W + w), 'unpooled' (H, W, C)}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxseg import ops  # pylint: disable=g-import-not-at-top
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top
  from jaxseg.models import vgg  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(pipeline.normalize(np.asarray(image)[None], 'imagenet'))
  channels = vgg.scale_channels(vgg.VGG16_BLOCKS[0][0], width)
  keys = jax.random.split(jax.random.PRNGKey(seed), 2)
  for key in keys:
    kernel = vgg.conv_init(key, (3, 3, x.shape[-1], channels))
    x = jax.nn.relu(jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  pooled, switches = ops.max_pool_with_argmax(x, (2, 2), (2, 2), padding='VALID',
                                              ceil_mode=True)
  unpooled = ops.max_unpool(pooled, switches, x.shape[1:3])
  return {k: np.asarray(v)[0] for k, v in (('before', x), ('pooled', pooled),
                                           ('switches', switches), ('unpooled', unpooled))}


def pspnet_feature_size(height: int, width: int) -> tuple[int, int]:
  """(h, w) of PSPNet's layer4 map (output stride 8) for an input, from shapes only."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxseg.models import pspnet, resnet  # pylint: disable=g-import-not-at-top
  backbone = resnet.ResNet((1, 1, 1, 1), pspnet.PSP_DILATIONS, 1 / 16)
  out, _ = jax.eval_shape(lambda x: backbone.init_with_output(jax.random.PRNGKey(0), x),
                          jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32))
  return tuple(out['layer4'].shape[1:3])


def pspnet_pyramid(image: Any, bins: Sequence[int] | None = None
                   ) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
  """What PSPNet's pyramid pooling module does, shown on colours instead of learnt features.

  The image is average-pooled to the size of PSPNet's layer4 map (output stride 8, e.g. 60x60
  for 473x473) as a stand-in for the features; each level then pools it into bins x bins cells
  and upsamples back (align_corners bilinear), with the model's own `adaptive_avg_pool` and
  `resize_bilinear`. Returns (feature (h, w, 3), {bins: pooled (bins, bins, 3)},
  {bins: upsampled (h, w, 3)}), float RGB 0-255.
  """
  from jaxseg.models import pspnet  # pylint: disable=g-import-not-at-top
  image = np.asarray(image, np.float32)[None]
  size = pspnet_feature_size(image.shape[1], image.shape[2])
  feature = pspnet.adaptive_avg_pool(image, size)
  pooled, upsampled = {}, {}
  for b in bins or pspnet.PSP_BINS:
    cells = pspnet.adaptive_avg_pool(feature, b)
    pooled[b] = np.asarray(cells)[0]
    upsampled[b] = np.asarray(pspnet.resize_bilinear(cells, size, align_corners=True))[0]
  return np.asarray(feature)[0], pooled, upsampled


@dataclasses.dataclass(frozen=True)
class Stage:
  """One module of a network: its path, output shape(s) and parameters (whole subtree)."""
  path: str
  shapes: tuple[tuple[str, tuple[int, ...]], ...]  # (output name, shape); name '' if one.
  params: int


def _count(tree: Any) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def parameter_count(model: Any, input_shape: Sequence[int] = (1, 224, 224, 3)) -> int:
  """Number of parameters of a Flax model, from shapes only (jax.eval_shape: no compute)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x),
                          jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  return _count(shapes.get('params', {}))


def stages(model: Any, input_shape: Sequence[int], max_depth: int = 2,
           skip: Sequence[str] = ('BatchNorm', 'Dropout')) -> list[Stage]:
  """Output shapes and parameter counts of a model's modules down to `max_depth`, in call order.

  Shapes come from `jax.eval_shape` over `init` with `capture_intermediates` (nothing is
  computed); modules whose class name is in `skip` are left out.
  """
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  order: dict[tuple[str, ...], int] = {}

  def keep(module, method_name):  # Called as each module returns: records the call order.
    if method_name != '__call__' or type(module).__name__ in skip:
      return False
    order.setdefault(tuple(module.path), len(order))
    return True

  def run(x):
    return model.init_with_output(jax.random.PRNGKey(0), x, capture_intermediates=keep)

  _, variables = jax.eval_shape(run, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  variables = flax.core.unfreeze(variables)
  params = variables.get('params', {})
  found = []

  def visit(tree, path):
    for name, value in tree.items():
      if name == '__call__':
        if 0 < len(path) <= max_depth:
          found.append((tuple(path), value[0]))
      elif isinstance(value, dict):
        visit(value, path + [name])

  visit(variables.get('intermediates', {}), [])

  def started(path):  # Outputs are recorded as calls return: a module starts at its first child.
    return min(n for p, n in order.items() if p[:len(path)] == path)

  found.sort(key=lambda item: (started(item[0]), len(item[0])))
  rows = []
  for path, output in found:
    sub = params
    for name in path:
      sub = sub.get(name, {}) if isinstance(sub, dict) else {}
    rows.append(Stage('/'.join(path), _flat_shapes(output), _count(sub)))
  return rows


def _flat_shapes(output: Any, prefix: str = '') -> tuple[tuple[str, tuple[int, ...]], ...]:
  if isinstance(output, Mapping):
    return tuple(item for key, value in output.items()
                 for item in _flat_shapes(value, f'{prefix}{key}.'))
  if isinstance(output, (tuple, list)):
    return tuple(item for k, value in enumerate(output)
                 for item in _flat_shapes(value, f'{prefix}{k}.'))
  return ((prefix.rstrip('.'), tuple(int(d) for d in output.shape)),)


PAPER_INPUTS = {'fcn32s': 500, 'fcn16s': 500, 'fcn8s': 500, 'deconvnet': 224, 'pspnet50': 473,
                'pspnet101': 473}  # FCN: VOC's largest side; DeconvNet and PSPNet: their crops.


def models_markdown(num_classes: int = 21, inputs: Mapping[str, int] | None = None) -> str:
  """Markdown table of every registered network at full width: input, parameters, constraint."""
  from jaxseg import models  # pylint: disable=g-import-not-at-top
  inputs = dict(PAPER_INPUTS if inputs is None else inputs)
  lines = ['| model | input | parameters | input sizes |', '|---|---|---:|---|']
  for name, size in inputs.items():
    count = parameter_count(models.create_model(name, num_classes), (1, size, size, 3))
    lines.append(f'| {name} | {size}x{size} | {count:,} | {models.model_input_constraint(name)} |')
  return '\n'.join(lines)


def stages_markdown(rows: Sequence[Stage]) -> str:
  """Markdown table of `stages`: module, output (H x W x C per output), parameters."""
  lines = ['| module | output | parameters |', '|---|---|---:|']
  for row in rows:
    outputs = '<br>'.join(f'{name + ": " if name else ""}{"x".join(map(str, shape[1:]))}'
                          for name, shape in row.shapes)
    lines.append(f'| {row.path} | {outputs} | {row.params:,} |')
  return '\n'.join(lines)
