"""Reading weights from every source jaxseg imports, and writing the converted `.npz`.

  .pth / .pt     torchvision ImageNet state dicts (vgg16, resnet50/101), semseg's ImageNet
                 backbones (resnet*_v2.pth) and trained PSPNet checkpoints (weights/semseg.py)
  .caffemodel    Caffe's VGG_ILSVRC_16_layers, FCN's and PSPNet's released models
                 (weights/caffe_proto.py reads protobuf's wire format; caffe_fcn.py, caffe_pspnet.py)
  .npz           written by `jaxseg convert-weights` from any of these (NumPy only)
  a folder       a jaxseg workdir or one of its checkpoints (weights/workdir.py)

`.pth` files are read with `torch.load(..., weights_only=True)`: only tensors and plain
containers are unpickled, never arbitrary code. `.npz` files are written by
`jaxseg convert-weights` and read with NumPy alone (`allow_pickle=False`), so a machine without
PyTorch can use them. The `.npz` holds one array per Flax leaf under its '/'-joined key
('params/backbone/conv1_1/kernel', 'batch_stats/backbone/bn1/mean') plus a JSON metadata entry
(`META_KEY`) with the arch, the input normalisation the weights expect, and the torchvision
name of each array.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath

from jaxseg import storage
from jaxseg.weights import caffe_fcn
from jaxseg.weights import caffe_proto
from jaxseg.weights import caffe_pspnet
from jaxseg.weights import convert
from jaxseg.weights import semseg
from jaxseg.weights import workdir

META_KEY = '__jaxseg_weights__'
FORMAT_VERSION = 1
TORCH_SUFFIXES = ('.pth', '.pt')
CAFFE_SUFFIX = '.caffemodel'
SUFFIXES = (*TORCH_SUFFIXES, CAFFE_SUFFIX, '.npz')
PSPNET_CAFFE_STEM = 'conv1_1_3x3_s2'  # The first layer of every PSPNet Caffe model.


def _check_path(path: str | os.PathLike) -> epath.Path:
  path = storage.resolve(path)
  if path.is_dir():
    if workdir.is_checkpoint_path(path):
      return path
    raise ValueError(f'weights {path} is a folder but not a jaxseg workdir (no checkpoints/) nor '
                     'a checkpoint folder (workdir/checkpoints/STEP)')
  if not path.is_file():
    raise FileNotFoundError(f'weights file {path} does not exist')
  if path.suffix not in SUFFIXES:
    raise ValueError(f'weights file {path}: unsupported suffix {path.suffix!r}; use a PyTorch '
                     '.pth/.pt (torchvision, semseg), a Caffe .caffemodel, a .npz written by '
                     '`jaxseg convert-weights`, or a jaxseg workdir')
  return path


_ANSI = re.compile(r'\x1b\[[0-9;]*m')


def _short(error: Exception) -> str:
  """'Type: first line' of an error, without terminal colours or a library's advice to load the
  file unsafely (PyTorch's 'This file can still be loaded ...')."""
  text = _ANSI.sub('', str(error)).strip().splitlines()
  first = (text[0] if text else '').split(' This file can still be loaded')[0]
  return f'{type(error).__name__}: {first}'[:300]


def _unsafe_pth(path: epath.Path, error: Exception) -> ValueError:
  found = re.search(r'Unsupported global: GLOBAL ([\w.]+)', _ANSI.sub('', str(error)))
  what = f' (e.g. {found.group(1)})' if found else ''
  return ValueError(
      f'cannot read PyTorch weights file {path}: it holds Python objects besides tensors{what}, '
      'which jaxseg does not unpickle, since unpickling can run arbitrary code. If you trust its '
      'source, save only its tensors where it was made, torch.save(model.state_dict(), '
      '"weights.pth") (a dict of tensors), and pass that file, or convert it once: jaxseg '
      'convert-weights --input weights.pth --output weights.npz')


def _unsafe_npz(path: epath.Path) -> ValueError:
  return ValueError(
      f'cannot read weights file {path}: it holds pickled Python objects (object arrays), which '
      'jaxseg does not load, since unpickling can run arbitrary code. A jaxseg .npz holds numeric '
      'arrays only: write one from the original weights with `jaxseg convert-weights --input '
      f'ORIGINAL --output {path.name}`.')


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A torchvision `.pth` state dict as name -> float32 NumPy array (needs PyTorch)."""
  path = _check_path(path)
  try:
    import torch  # pylint: disable=g-import-not-at-top  # Optional: only the .pth route needs it.
  except ImportError as e:
    raise ImportError(f'reading {path} needs PyTorch (pip install "jaxseg[torch]"); or convert '
                      'it once with `jaxseg convert-weights` and use the .npz') from e
  try:
    with path.open('rb') as f:
      obj = torch.load(f, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    if 'weights only load failed' in str(e).lower():  # Not plain tensors: refused, not corrupt.
      raise _unsafe_pth(path, e) from e
    raise ValueError(f'cannot read PyTorch weights file {path} (corrupt or truncated): '
                     f'{_short(e)}') from e
  except Exception as e:  # torch/zipfile raise many types for corrupt files.
    raise ValueError(f'cannot read PyTorch weights file {path} (corrupt, truncated, or not a '
                     f'weights-only state dict): {_short(e)}') from e
  if isinstance(obj, Mapping) and isinstance(obj.get('state_dict'), Mapping):
    obj = obj['state_dict']  # A training checkpoint (semseg: epoch, state_dict, optimizer).
  if not isinstance(obj, Mapping) or not obj:
    raise ValueError(f'{path} does not hold a state dict (a mapping of tensor names to tensors); '
                     f'got {type(obj).__name__}')
  arrays = {}
  for name, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f'{path} does not hold a plain state dict: entry {name!r} is a '
                       f'{type(value).__name__}, not a tensor (save model.state_dict())')
    if value.is_floating_point():
      value = value.float()  # float16/bfloat16 checkpoints: NumPy has no bfloat16.
    arrays[name] = value.detach().cpu().numpy()
  return arrays


def save_npz(weights: convert.PretrainedWeights, path: str | os.PathLike) -> None:
  """Writes converted weights (atomically: a partial file never has the final name).

  Missing parent folders are created; a place that cannot be written is a ValueError naming it.
  """
  path = storage.resolve(path)
  if path.suffix != '.npz':
    raise ValueError(f'output {path} must end in .npz')
  check_output_folder(path.parent, f'output {path}')
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f'output {path}: cannot create folder {path.parent}: {e.strerror or e}'
                     ) from e
  meta = {'format': FORMAT_VERSION, 'arch': weights.arch, 'normalization': weights.normalization,
          'sources': weights.sources, 'skipped': list(weights.skipped),
          'model_fields': weights.model_fields,
          'converted_from': os.path.basename(weights.path.rstrip('/'))}
  tmp = path.with_name(path.name + '.tmp')
  try:
    with tmp.open('wb') as f:  # A file object: np.savez would otherwise rename it.
      np.savez(f, **weights.arrays, **{META_KEY: np.array(json.dumps(meta))})
    tmp.replace(path)
  except OSError as e:
    raise ValueError(f'cannot write output {path}: {e.strerror or e}') from e
  finally:
    tmp.unlink(missing_ok=True)


def check_output_folder(folder: epath.Path, what: str) -> None:
  """ValueError naming `what` when a file stands where `folder` or one of its parents would be.

  A folder that does not exist yet is fine: the writer creates it.
  """
  for part in (folder, *folder.parents):
    if part.exists():
      if not part.is_dir():
        raise ValueError(f'{what}: {part} is a file, not a folder; choose another path')
      return


def _load_npz(path: epath.Path, with_arrays: bool) -> tuple[dict[str, Any], dict[str, Any]]:
  """(metadata, arrays) of a jaxseg .npz; arrays only when asked (the metadata alone is cheap)."""
  try:
    with path.open('rb') as f, np.load(f, allow_pickle=False) as data:
      meta_text = str(data[META_KEY]) if META_KEY in data.files else None
      arrays = {k: data[k] for k in data.files if k != META_KEY} if with_arrays else {}
  except ValueError as e:
    if 'allow_pickle' in str(e):  # NumPy: 'Object arrays cannot be loaded when allow_pickle=...'
      raise _unsafe_npz(path) from e
    raise ValueError(f'cannot read weights file {path} (corrupt or not a .npz): {_short(e)}') from e
  except Exception as e:  # zipfile/zlib/OSError/EOFError on corrupt archives.
    raise ValueError(f'cannot read weights file {path} (corrupt or not a .npz): {_short(e)}') from e
  if meta_text is None:
    raise ValueError(f'{path} is not a jaxseg weights file (no {META_KEY!r} entry); create one '
                     'with `jaxseg convert-weights`')
  try:
    meta = json.loads(meta_text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: corrupt metadata ({_short(e)})') from e
  if (not isinstance(meta, dict) or meta.get('format') != FORMAT_VERSION
      or meta.get('arch') not in convert.ARCHS or not isinstance(meta.get('sources'), dict)
      or not {'space', 'mean', 'std', 'scale'} <= set(meta.get('normalization') or {})):
    raise ValueError(f'{path}: unsupported jaxseg weights metadata; re-create the file with '
                     '`jaxseg convert-weights`')
  return meta, arrays


def read_npz(path: str | os.PathLike) -> convert.PretrainedWeights:
  """Weights written by `save_npz`, checked to be complete for their arch (NumPy only)."""
  path = _check_path(path)
  meta, arrays = _load_npz(path, with_arrays=True)
  arch = meta['arch']
  if arch in convert.TORCHVISION_ARCHS:
    expected = {rule[1] for rule in convert.conversion_rules(arch)}
  else:  # Every array written is listed with its source.
    expected = set(meta['sources'])
  missing = sorted(expected - set(arrays))
  unused = sorted(set(arrays) - expected)
  if missing or unused:
    raise ValueError(
        f'{path}: not a complete {arch} backbone'
        + (f'; missing arrays: {convert.format_names(missing)}' if missing else '')
        + (f'; unused arrays: {convert.format_names(unused)}' if unused else ''))
  sources = meta.get('sources', {})
  return convert.PretrainedWeights(
      arch=arch, arrays=arrays, sources={k: sources.get(k, k) for k in arrays},
      skipped=tuple(meta.get('skipped', ())), normalization=meta['normalization'], path=str(path),
      model_fields=_fields(meta.get('model_fields') or {}))


def _fields(fields: Mapping[str, Any]) -> dict[str, Any]:
  """JSON lists back to the tuples config fields hold."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def read_caffemodel_weights(path: str | os.PathLike) -> convert.PretrainedWeights:
  """A Caffe model: PSPNet's (its deep-stem layer names) or VGG16 / FCN's."""
  path = _check_path(path)
  layers = caffe_proto.read_caffemodel(path)
  if any(layer.name == PSPNET_CAFFE_STEM for layer in layers):
    return caffe_pspnet.pspnet_weights(layers, str(path))
  weights = caffe_fcn.fcn_weights(layers, str(path))
  if convert.is_model_arch(weights.arch):
    # FCN's Caffe nets: pad 100 and offset crops; skips unscaled unless the file's Scale layers
    # (at-once FCN-8s) say otherwise.
    weights = dataclasses.replace(weights, model_fields={
        'geometry': 'caffe', 'skip_scales': (1.0, 1.0), **weights.model_fields})
  return weights


def read_torch_weights(path: str | os.PathLike, arch: str | None = None
                       ) -> convert.PretrainedWeights:
  """A `.pth`: torchvision's ImageNet state dicts, or semseg's backbones and checkpoints.

  torchvision's arch is recognised from its tensor names; `arch` is used only when they match
  nothing, so the error lists the tensors missing or unused for it.
  """
  path = _check_path(path)
  state_dict = read_state_dict(path)
  found = convert.guess_arch(state_dict)
  if found is None and (semseg.is_semseg_backbone(state_dict) or semseg.is_semseg_pspnet(state_dict)):
    return semseg.convert_semseg(state_dict, str(path))
  found = found or (arch if arch in convert.TORCHVISION_ARCHS else None)
  if found is None:
    raise ValueError(f'{path} is neither a torchvision {"/".join(convert.TORCHVISION_ARCHS)} '
                     'state dict nor a semseg ResNet/PSPNet checkpoint; first tensors: '
                     f'{convert.format_names(list(state_dict), 5)}')
  return convert.convert_state_dict(state_dict, found, str(path))


def read_weights(path: str | os.PathLike, arch: str | None = None) -> convert.PretrainedWeights:
  """Reads weights from any supported source (see the module docstring).

  The caller compares the returned `.arch` with the archs it accepts (`convert.accepted_archs`).
  """
  path = _check_path(path)
  if path.is_dir():
    return workdir.read_workdir_weights(path)
  if path.suffix == '.npz':
    return read_npz(path)
  if path.suffix == CAFFE_SUFFIX:
    return read_caffemodel_weights(path)
  return read_torch_weights(path, arch)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
  """{'arch', 'normalization', 'model_fields'} of a weights source.

  `.npz`: as recorded by convert-weights, without loading its arrays; other sources are read.
  """
  path = _check_path(path)
  if path.is_file() and path.suffix == '.npz':
    meta = _load_npz(path, with_arrays=False)[0]
    return {'arch': meta['arch'], 'normalization': meta['normalization'],
            'model_fields': _fields(meta.get('model_fields') or {})}
  weights = read_weights(path)
  return {'arch': weights.arch, 'normalization': weights.normalization,
          'model_fields': weights.model_fields}


def weights_normalization(path: str | os.PathLike) -> dict[str, Any]:
  """The input normalisation the weights expect: {'space', 'mean', 'std', 'scale'}."""
  return read_metadata(path)['normalization']
