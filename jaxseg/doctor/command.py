"""`jaxseg doctor`: the flags, the checks of each form in order, the table and the exit status.

  jaxseg doctor [--quick] [--json OUT] [--only NAME,NAME] [--data_dir DIR]

Also `python -m jaxseg.doctor` with the same flags. Exit status 0 when every check passed, 1
when any failed (a failed check never stops the others), 2 for bad flags.
"""
from __future__ import annotations

import argparse
import functools
import os
import pathlib
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from jaxseg import accelerators

DESCRIPTION = ('Check that this machine is fit to train: the environment, op parity against the '
               'CPU, PSPNet-50 train step time, memory and MFU at batch 2 and 8, the training '
               'loop against the bare step, an orbax save/restore, a multi-scale + flip eval. '
               'About 8 minutes on one GPU; on the CPU (or with --quick) a reduced smoke form.')


def plan(form: Any) -> list[tuple[str, Any]]:
  """(name, check) of every check of `form`, in running order.

  Looked up when called, so a replaced check function (a test's monkeypatch) is the one run.
  """
  # pylint: disable=g-import-not-at-top  (flax, TF and the models load only when checks run)
  from jaxseg.doctor import checkpointing, environment, evaluation, parity, training
  steps = [(f'train_step_b{b}', functools.partial(training.check_train_step, batch=b))
           for b in form.step_batches]
  return [('environment', environment.check_environment), ('op_parity', parity.check_op_parity),
          *steps, ('train_loop', training.check_train_loop),
          ('checkpoint', checkpointing.check_checkpoint),
          ('multiscale_eval', evaluation.check_multiscale_eval)]


def add_arguments(p: argparse.ArgumentParser) -> None:
  """The doctor's flags, on `p`."""
  p.add_argument('--quick', action='store_true',
                 help='the reduced form at tiny sizes (a CI smoke test; automatic when JAX '
                 'runs on the CPU)')
  p.add_argument('--json', help='write every check\'s record to this JSON file')
  p.add_argument('--only', help='comma-separated checks to run (default: all): environment, '
                 'op_parity, train_step_b2, train_step_b8 (full form), train_loop, checkpoint, '
                 'multiscale_eval')
  p.add_argument('--data_dir', '--data-dir',
                 help='TFDS data_dir for the training-loop check\'s synthetic dataset (default: '
                 'a temporary folder, generated each run; ~/tensorflow_datasets reuses '
                 '`jaxseg demo`\'s copy)')


def cmd_doctor(args: argparse.Namespace) -> int:
  """Runs the checks the flags select; prints progress and the table; 1 if any check failed."""
  if args.json:
    parent = pathlib.Path(args.json).resolve().parent
    if not parent.is_dir():
      raise FileNotFoundError(f'doctor: --json folder {parent} does not exist')
  # pylint: disable=g-import-not-at-top
  import jax
  from jaxseg.doctor import forms, runner
  try:
    backend = jax.default_backend()
  except RuntimeError as e:  # E.g. JAX_PLATFORMS=cuda and CUDA did not start: the diagnosis.
    print(f'jaxseg doctor: FAILED: JAX could not start a backend: {e}', file=sys.stderr)
    return 1
  form = forms.QUICK if args.quick or backend == 'cpu' else forms.FULL
  checks = plan(form)
  if args.only:
    wanted = [name.strip() for name in args.only.split(',') if name.strip()]
    known = [name for name, _ in checks]
    unknown = [name for name in wanted if name not in known]
    if unknown:
      raise ValueError(f'doctor: --only {", ".join(unknown)}: the {form.name} form has the '
                       f'checks {", ".join(known)}')
    checks = [(name, check) for name, check in checks if name in wanted]
  device = jax.local_devices()[0]
  why = '--quick' if args.quick else ('the backend is the CPU' if backend == 'cpu' else '')
  print(f'jaxseg doctor: {form.name} form{f" ({why})" if why else ""} on {device} '
        f'({device.device_kind}), {len(checks)} checks', flush=True)
  with tempfile.TemporaryDirectory(prefix='jaxseg-doctor-') as tmp:
    tmp = pathlib.Path(tmp)
    ctx = runner.Context(form=form, device=device, tmp=tmp,
                         data_dir=args.data_dir or str(tmp / 'tfds'))
    records = runner.run_checks(checks, ctx)
  print(runner.format_table(records), flush=True)
  if args.json:
    runner.write_json(args.json, records, {
        'form': form.name, 'backend': backend, 'device': str(device),
        'device_kind': device.device_kind, 'command': sys.argv})
    print(f'wrote {args.json}')
  return 0 if all(r.ok for r in records) else 1


def register(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
  """Adds the `doctor` subcommand (handler in the `func` default) to jaxseg's CLI."""
  p = subparsers.add_parser('doctor', parents=list(parents),
                            help='check that this machine is fit to train (GPU/TPU; a reduced '
                            'form on the CPU)',
                            description=DESCRIPTION)
  add_arguments(p)
  p.set_defaults(func=cmd_doctor)


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m jaxseg.doctor FLAGS`: the subcommand without the rest of the CLI."""
  # Before the backend starts, as `jaxseg`'s own main: XLA flags, compilation cache, NO_GCE_CHECK.
  accelerators.prepare_process(os.environ)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  parser = argparse.ArgumentParser(prog='python -m jaxseg.doctor', description=DESCRIPTION)
  add_arguments(parser)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    return cmd_doctor(args)
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))  # Exits 2.
