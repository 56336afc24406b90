"""`jaxseg convert-weights`: torchvision .pth -> jaxseg .npz (usable without PyTorch)."""
from __future__ import annotations

import argparse
import os

from jaxseg.weights import convert
from jaxseg.weights import files


def convert_weights(arch: str, input_path: str | os.PathLike,
                    output_path: str | os.PathLike) -> convert.PretrainedWeights:
  """Converts a torchvision `arch` state dict file to a jaxseg `.npz`; returns the weights."""
  if not str(output_path).endswith('.npz'):
    raise ValueError(f'--output {output_path} must end in .npz')
  if arch not in convert.ARCHS:
    raise ValueError(f'--arch {arch!r}: supported archs are {", ".join(convert.ARCHS)}')
  weights = files.read_weights(input_path, arch=arch)
  if weights.arch != arch:
    raise ValueError(f'--input {input_path} holds a torchvision {weights.arch} state dict, not '
                     f'{arch}; pass --arch {weights.arch}')
  files.save_npz(weights, output_path)
  return weights


def _run(args: argparse.Namespace) -> int:
  weights = convert_weights(args.arch, args.input, args.output)
  print(f'converted {len(weights.arrays)} arrays ({weights.num_values:,} values) of torchvision '
        f'{weights.arch} from {args.input} to {args.output}\n'
        f'  skipped: {", ".join(weights.skipped) or "none"} ({convert.SKIP_REASON}); '
        'num_batches_tracked counters ignored\n'
        f'  input normalisation recorded: {weights.normalization}')
  return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # pylint: disable=protected-access
  """Adds the convert-weights subcommand; its handler is `args.func(args)`."""
  parser = subparsers.add_parser(
      'convert-weights', help='convert torchvision ImageNet weights (.pth) to a jaxseg .npz',
      description='Convert a torchvision vgg16/resnet50/resnet101 state dict (.pth, read with '
      'weights_only=True) to a .npz for config.model.init_from, loadable without PyTorch.')
  parser.add_argument('--arch', required=True, choices=convert.ARCHS,
                      help='vgg16 for FCN/DeconvNet, resnet50/resnet101 for PSPNet-50/101')
  parser.add_argument('--input', required=True, help='torchvision state dict, e.g. '
                      'vgg16-397923af.pth')
  parser.add_argument('--output', required=True, help='output .npz')
  parser.set_defaults(func=_run)
  return parser
