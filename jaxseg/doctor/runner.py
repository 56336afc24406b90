"""Running the doctor's checks: one record per check, a failure never stops the others.

A check is a function `check(ctx) -> Outcome`; `run_checks` times each, turns an exception into
a failed record carrying the error and its traceback, prints progress as it goes, and returns the
records. `format_table` and `write_json` present them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxseg.doctor import forms


@dataclasses.dataclass
class Outcome:
  """What a check returns: whether it passed, a one-line summary and its numbers."""
  ok: bool
  message: str
  details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Record:
  """One check's result as reported: {name, ok, seconds, message, details}."""
  name: str
  ok: bool
  seconds: float
  message: str
  details: dict[str, Any]


@dataclasses.dataclass
class Context:
  """What every check may use.

  Attributes:
    form: the sizes (forms.FULL or forms.QUICK).
    device: the device checked (the first local one).
    tmp: a scratch folder for workdirs and checkpoints, deleted after the run.
    data_dir: TFDS data_dir of the training-loop check's dataset.
    measured: bare-step measurements by (config, devices, model), shared between checks.
  """
  form: forms.Form
  device: jax.Device
  tmp: pathlib.Path
  data_dir: str
  measured: dict[Any, Any] = dataclasses.field(default_factory=dict)


Check = Callable[[Context], Outcome]


def run_check(name: str, check: Check, ctx: Context) -> Record:
  """Runs one check; an exception becomes a failed record with the error text."""
  start = time.perf_counter()
  try:
    outcome = check(ctx)
  except Exception as e:  # pylint: disable=broad-except  The report must go on; this is it.
    text = str(e).strip() or type(e).__name__
    return Record(name, False, time.perf_counter() - start,
                  f'{type(e).__name__}: {text.splitlines()[0]}',
                  {'error': f'{type(e).__name__}: {text}', 'traceback': traceback.format_exc()})
  return Record(name, bool(outcome.ok), time.perf_counter() - start, outcome.message,
                outcome.details)


def run_checks(plan: Sequence[tuple[str, Check]], ctx: Context,
               log: Callable[[str], None] = lambda line: print(line, flush=True)
               ) -> list[Record]:
  """Runs the checks in order, logging each as it starts and ends."""
  records = []
  for i, (name, check) in enumerate(plan, 1):
    log(f'[doctor {i}/{len(plan)}] {name} ...')
    record = run_check(name, check, ctx)
    log(f'[doctor {i}/{len(plan)}] {name}: {"ok" if record.ok else "FAILED"} '
        f'({record.seconds:.1f} s) {record.message}')
    records.append(record)
  return records


def format_table(records: Sequence[Record]) -> str:
  """A plain-text table: check, result, seconds, summary."""
  width = max([len('check')] + [len(r.name) for r in records])
  lines = [f'{"check":<{width}}  result  seconds  summary']
  for r in records:
    lines.append(f'{r.name:<{width}}  {"ok" if r.ok else "FAILED":<6}  {r.seconds:7.1f}  '
                 f'{r.message}')
  failed = [r.name for r in records if not r.ok]
  lines.append(f'{len(records) - len(failed)} of {len(records)} checks passed'
               + (f'; failed: {", ".join(failed)}' if failed else ''))
  return '\n'.join(lines)


def _json_value(value: Any) -> Any:
  """JSON-ready copies of numbers, arrays, paths and dataclasses in the details."""
  if isinstance(value, dict):
    return {str(k): _json_value(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_value(v) for v in value]
  if isinstance(value, (bool, str)) or value is None:
    return value
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return value if math.isfinite(value) else None
  if isinstance(value, np.ndarray):
    return _json_value(value.tolist())
  return str(value)


def write_json(path: str | pathlib.Path, records: Sequence[Record],
               header: dict[str, Any]) -> None:
  """{**header, 'ok', 'seconds', 'records': [{name, ok, seconds, message, details}, ...]}."""
  payload = dict(header, ok=all(r.ok for r in records),
                 seconds=sum(r.seconds for r in records),
                 records=[dataclasses.asdict(r) for r in records])
  pathlib.Path(path).write_text(json.dumps(_json_value(payload), indent=1) + '\n')
