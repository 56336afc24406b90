"""Evaluation results as Markdown: scores, per-class IoU in the VOC leaderboard's layout (mean
first, one column per class, published rows below), per-image scores."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
from typing import Any

from jaxseg.data import classes
from jaxseg.visualize.published import PUBLISHED_VOC12_TEST
from jaxseg.visualize.workdir import SCORE_KEYS

DASH = '—'  # An empty cell: a number nobody published (or NaN).
_SCORE_TITLES = {'pixel_accuracy': 'pixel acc.', 'mean_accuracy': 'mean acc.',
                 'mean_iou': 'mean IoU', 'fw_iou': 'f.w. IoU'}


def _cell(value: float | None, digits: int = 1) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return DASH
  return f'{value:.{digits}f}'


def metrics_markdown(results: Mapping[str, Any]) -> str:
  """One-row Markdown table of pixel accuracy, mean accuracy, mean IoU and f.w. IoU (%)."""
  missing = [k for k in SCORE_KEYS if k not in results]
  if missing:
    raise ValueError(f'results lack {missing}: pass an eval result (jaxseg.inference.evaluate '
                     'or eval/<split>_step<N>.json)')
  head = '| ' + ' | '.join(_SCORE_TITLES[k] for k in SCORE_KEYS) + ' |'
  rule = '|' + '---:|' * len(SCORE_KEYS)
  row = '| ' + ' | '.join(_cell(100 * float(results[k])) for k in SCORE_KEYS) + ' |'
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
