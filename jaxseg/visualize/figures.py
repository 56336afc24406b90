"""Figures of training runs, results, data and network mechanisms, from arrays.

Training curves, per-class IoU bars, confusion matrix, image/truth/prediction grids, image/mask
pairs, class frequencies, DeconvNet's switches, PSPNet's pyramid bins. Each function returns a
`matplotlib.figure.Figure` built without pyplot (no global state): `fig.savefig(path)` renders
with Agg whatever the interactive backend, so the same code runs headless in `jaxseg report`, in
CI and inline in Jupyter. Nothing here loads data or runs a model.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
from typing import Any

import matplotlib
import matplotlib.colors
from matplotlib import patches
import matplotlib.ticker
from matplotlib.figure import Figure
import numpy as np

from jaxseg.visualize.colour import IGNORE_LABEL, check_palette, colorize, legend_handles, overlay
from jaxseg.visualize.workdir import split_records


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
  colours = (check_palette(palette)[:len(iou)] / 255 if palette is not None
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
  palette = check_palette(palette)
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
  palette = check_palette(palette)
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
  colours = (check_palette(palette)[:len(counts)] / 255 if palette is not None
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
