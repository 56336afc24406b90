"""`jaxseg benchmark`: step time, throughput, memory and MFU of every model, beside PyTorch.

  jaxseg benchmark --model fcn8s [--mode train|infer] [--batch 2] [--size 320 320]
                   [--dtype float32|bfloat16] [--steps 10] [--warmup 2] [--width 1.0]
                   [--platform cpu|gpu|tpu] [--torch/--no-torch] [--json OUT]
  jaxseg benchmark --all            # every model x {train, infer}, plus the ops alone

Also `python -m jaxseg.benchmark.command ...` with the same flags. This module only parses and
reports: it imports neither JAX nor torch (the workers do; see jaxseg/benchmark/__init__.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from jaxseg.benchmark import devices, tables
from jaxseg.benchmark.harness import PlatformError, run_spec
from jaxseg.benchmark.spec import (CONV_IMPLS, DTYPES, MATMUL_SIZE, MODES, OPS, PLATFORMS, Spec,
                                   validate)


def add_arguments(p: argparse.ArgumentParser) -> None:
  """The benchmark's flags, on `p`."""
  what = p.add_mutually_exclusive_group(required=True)
  what.add_argument('--model', help='model name (fcn32s, fcn16s, fcn8s, deconvnet, pspnet50, '
                    'pspnet101)')
  what.add_argument('--op', help=f'an op alone: {", ".join(OPS)}')
  what.add_argument('--all', action='store_true',
                    help='every model in train and infer mode, then every op')
  p.add_argument('--mode', choices=MODES, help='train or infer (default: infer; --all: both)')
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--size', type=int, nargs=2, default=(320, 320), metavar=('H', 'W'))
  p.add_argument('--dtype', choices=DTYPES, default='float32',
                 help='compute dtype (torch: autocast); parameters stay float32')
  p.add_argument('--steps', type=int, default=10, help='timed steps (median reported)')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps after compilation')
  p.add_argument('--width', type=float, default=1.0, help='channel multiplier (tiny smoke runs)')
  p.add_argument('--platform', choices=PLATFORMS,
                 help="JAX platform of the jaxseg worker (gpu = CUDA); default: JAX's choice "
                 '(JAX_PLATFORMS if set). An accelerator asked for here or in JAX_PLATFORMS '
                 'that the worker does not get is an error, not a CPU measurement')
  p.add_argument('--threads', type=int, default=0,
                 help='cores for both frameworks (CPU affinity + torch threads; 0 = all)')
  p.add_argument('--torch', action=argparse.BooleanOptionalAction, default=True,
                 help='also run the PyTorch eager twin, interleaved (default: on; on CUDA when '
                 'jaxseg runs on a GPU)')
  p.add_argument('--channels_last', '--channels-last', action='store_true',
                 help='torch in channels_last memory format (default: contiguous NCHW)')
  p.add_argument('--conv_impl', '--conv-impl', choices=CONV_IMPLS, default='auto',
                 help="jaxseg's convolution formulation: auto (matmul forms on the CPU) or lax "
                 "(XLA's convolutions everywhere, as before the CPU work)")
  p.add_argument('--no_peak', '--no-peak', action='store_true',
                 help='skip the matmul peak measurement on the CPU (MFU n/a)')
  p.add_argument('--peak_size', '--peak-size', type=int, default=MATMUL_SIZE,
                 help='side of the matmul (run dtype) that measures the CPU peak')
  p.add_argument('--json', help='write every record (with per-step times) to this JSON file')


def specs_from_args(args: argparse.Namespace) -> list[Spec]:
  common = dict(batch=args.batch, size=tuple(args.size), dtype=args.dtype, width=args.width,
                threads=args.threads, channels_last=args.channels_last,
                conv_impl=args.conv_impl)
  if args.all:
    from jaxseg.models import MODEL_NAMES  # pylint: disable=g-import-not-at-top

    modes = [args.mode] if args.mode else list(MODES)
    specs = [Spec(model=m, mode=mode, **common) for m in MODEL_NAMES for mode in modes]
    specs += [Spec(op=o, mode=mode, **common) for o in OPS for mode in modes]
  else:
    specs = [Spec(model=args.model or '', op=args.op or '', mode=args.mode or 'infer', **common)]
  for spec in specs:
    validate(spec)
  return specs


def cmd_benchmark(args: argparse.Namespace) -> int:
  """Runs every configuration the flags name; prints the header and table. Exit status 1 if any
  failed (ValueErrors of a single configuration propagate: bad input)."""
  specs = specs_from_args(args)
  if args.steps < 1 or args.warmup < 0 or args.peak_size < 1:
    raise ValueError(f'benchmark: --steps and --peak-size must be >= 1 and --warmup >= 0, got '
                     f'{args.steps}, {args.peak_size}, {args.warmup}')
  if args.json:
    parent = os.path.dirname(os.path.abspath(args.json))
    if not os.path.isdir(parent):
      raise FileNotFoundError(f'benchmark: --json folder {parent} does not exist')
  host = devices.host_info()
  records = []
  for spec in specs:
    print(f'[benchmark] {spec.name} {spec.mode} (load {devices.load_average()[:1]})',
          file=sys.stderr, flush=True)
    try:
      record = run_spec(spec, args.steps, args.warmup, args.torch, not args.no_peak,
                        args.platform, args.peak_size)
    except (RuntimeError, ValueError) as e:
      if isinstance(e, ValueError) and len(specs) == 1:
        raise
      if isinstance(e, PlatformError) or len(specs) == 1:  # Nothing (more) to measure.
        if getattr(args, 'traceback', False):
          raise
        message = str(e).removeprefix('benchmark: ')
        print(f'jaxseg benchmark: error: {message}', file=sys.stderr)
        return 1
      record = dict(dataclasses.asdict(spec), error=str(e))
    records.append(record)
    if args.json:  # Written after every config, so a long sweep keeps what it measured.
      with open(args.json, 'w') as f:
        json.dump(dict(host=host, command=sys.argv, records=records), f, indent=1)
  print(tables.format_header(host, records))
  print(tables.format_table(records))
  return 1 if any('error' in r for r in records) else 0


def register(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
  """Adds the `benchmark` subcommand (handler in the `func` default) to jaxseg's CLI."""
  p = subparsers.add_parser('benchmark', parents=list(parents),
                            help='time every model against PyTorch eager',
                            description=__doc__.split('\n\n')[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
  add_arguments(p)
  p.set_defaults(func=cmd_benchmark)


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m jaxseg.benchmark.command FLAGS`: the subcommand without the rest of the CLI."""
  parser = argparse.ArgumentParser(prog='python -m jaxseg.benchmark.command',
                                   description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_arguments(parser)
  return cmd_benchmark(parser.parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
  sys.exit(main())
