"""A training run's files: workdir/metrics.jsonl, config.json and eval/<split>_step<N>.json.

Also `resolve_path`, so that notebooks (run in notebooks/) and the CLI (run anywhere) read the
same relative paths.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import math
import pathlib
import re
from typing import Any

import numpy as np

METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
EVAL_DIR = 'eval'
_EVAL_NAME = re.compile(r'^(?P<split>.+)_step(?P<step>\d+)\.json$')
SCORE_KEYS = ('pixel_accuracy', 'mean_accuracy', 'mean_iou', 'fw_iou')  # Of an eval result.
_NUMERIC_KEYS = SCORE_KEYS + ('iou', 'loss', 'lr', 'images_per_sec', 'grad_norm')
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]  # jaxseg/visualize/workdir.py


def resolve_path(path: str | pathlib.Path) -> pathlib.Path:
  """`path` as given if it exists or is absolute, else relative to the repository root.

  Notebooks run in notebooks/, the CLI anywhere: 'workdirs/demo' means the same folder for both.
  """
  path = pathlib.Path(path).expanduser()
  if path.is_absolute() or path.exists():
    return path
  return REPO_ROOT / path


def existing_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
  """`workdir` as a path; FileNotFoundError saying how to make one if it is missing."""
  path = pathlib.Path(workdir)
  if not path.is_dir():
    raise FileNotFoundError(f'workdir {path} does not exist (train one with `jaxseg train '
                            f'--config ... --workdir {path}` or `jaxseg demo`)')
  return path


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
  """The records of workdir/metrics.jsonl, in file order (JSON null read as NaN)."""
  path = existing_workdir(workdir) / METRICS_FILE
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
  path = existing_workdir(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{path} does not exist: not a jaxseg workdir (train writes it)')
  return config_loading.from_json_file(path)


def eval_files(workdir: str | pathlib.Path) -> list[tuple[str, int, pathlib.Path]]:
  """(split, step, path) of every workdir/eval/<split>_step<N>.json, sorted by split and step."""
  folder = existing_workdir(workdir) / EVAL_DIR
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
