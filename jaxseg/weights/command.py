"""`jaxseg convert-weights`: any weights source -> a jaxseg .npz (usable without PyTorch)."""
from __future__ import annotations

import argparse
import os

from jaxseg import storage
from jaxseg.weights import convert
from jaxseg.weights import files


def convert_weights(arch: str | None, input_path: str | os.PathLike,
                    output_path: str | os.PathLike) -> convert.PretrainedWeights:
  """Converts a weights source (see jaxseg.weights.files) to a jaxseg `.npz`; returns it.

  `arch`, when given, is checked against what the file holds. The output's folder is created
  when missing.
  """
  if not str(output_path).endswith('.npz'):
    raise ValueError(f'--output {output_path} must end in .npz')
  output = storage.resolve(output_path)
  if output.is_dir():
    raise ValueError(f'--output {output_path} is a folder; name the .npz file to write')
  # Before reading the input (a large Caffe model takes a while); save_npz creates the folder.
  files.check_output_folder(output.parent, f'--output {output_path}')
  if arch is not None and arch not in convert.ARCHS:
    raise ValueError(f'--arch {arch!r}: supported archs are {", ".join(convert.ARCHS)}')
  weights = files.read_weights(input_path, arch=arch)
  if arch is not None and weights.arch != arch:
    raise ValueError(f'--input {input_path} holds {weights.arch} weights, not {arch}; pass '
                     f'--arch {weights.arch} (or leave --arch out)')
  files.save_npz(weights, output_path)
  return weights


def _run(args: argparse.Namespace) -> int:
  weights = convert_weights(args.arch, args.input, args.output)
  fields = f'; model fields {weights.model_fields}' if weights.model_fields else ''
  print(f'converted {len(weights.arrays)} arrays ({weights.num_values:,} values) of '
        f'{weights.arch} from {args.input} to {args.output}\n'
        f'  skipped: {convert.format_names(list(weights.skipped)) or "none"}; '
        'BatchNorm step counters ignored\n'
        f'  input normalisation recorded: {weights.normalization}{fields}')
  return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # pylint: disable=protected-access
  """Adds the convert-weights subcommand; its handler is `args.func(args)`."""
  parser = subparsers.add_parser(
      'convert-weights', help='convert pretrained or released weights to a jaxseg .npz',
      description='Convert weights to a .npz for config.model.init_from or --weights, loadable '
      'without PyTorch: torchvision vgg16/resnet50/resnet101 and semseg state dicts or '
      'checkpoints (.pth, read with weights_only=True), Caffe models (.caffemodel: '
      'VGG_ILSVRC_16_layers, voc-fcn*s, pspnet*), or a jaxseg workdir.')
  parser.add_argument('--arch', choices=convert.ARCHS,
                      help='check that the input holds this arch (default: recognised from it)')
  parser.add_argument('--input', required=True, help='e.g. vgg16-397923af.pth, '
                      'VGG_ILSVRC_16_layers.caffemodel, pspnet101_VOC2012.caffemodel')
  parser.add_argument('--output', required=True, help='output .npz')
  parser.set_defaults(func=_run)
  return parser
