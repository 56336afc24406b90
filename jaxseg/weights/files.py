"""Reading and writing backbone weight files: torchvision `.pth` and jaxseg's converted `.npz`.

`.pth` files are read with `torch.load(..., weights_only=True)`: only tensors and plain
containers are unpickled, never arbitrary code. `.npz` files are written by
`jaxseg convert-weights` and read with NumPy alone (`allow_pickle=False`), so a machine without
PyTorch can use them. The `.npz` holds one array per Flax leaf under its '/'-joined key
('params/backbone/conv1_1/kernel', 'batch_stats/backbone/bn1/mean') plus a JSON metadata entry
(`META_KEY`) with the arch, the input normalisation the weights expect, and the torchvision
name of each array.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath

from jaxseg import storage
from jaxseg.weights import convert

META_KEY = '__jaxseg_weights__'
FORMAT_VERSION = 1
TORCH_SUFFIXES = ('.pth', '.pt')


def _check_path(path: str | os.PathLike) -> epath.Path:
  path = storage.resolve(path)
  if not path.is_file():
    raise FileNotFoundError(f'weights file {path} does not exist')
  if path.suffix not in (*TORCH_SUFFIXES, '.npz'):
    raise ValueError(f'weights file {path}: unsupported suffix {path.suffix!r}; use a torchvision '
                     '.pth/.pt state dict or a .npz written by `jaxseg convert-weights`')
  return path


def _short(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'[:300]


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
  except Exception as e:  # torch/pickle/zipfile raise many types for corrupt or unsafe files.
    raise ValueError(f'cannot read PyTorch weights file {path} (corrupt, truncated, or not a '
                     f'weights-only state dict): {_short(e)}') from e
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
  """Writes converted weights (atomically: a partial file never has the final name)."""
  path = storage.resolve(path)
  if path.suffix != '.npz':
    raise ValueError(f'output {path} must end in .npz')
  meta = {'format': FORMAT_VERSION, 'arch': weights.arch, 'normalization': weights.normalization,
          'sources': weights.sources, 'skipped': list(weights.skipped),
          'converted_from': os.path.basename(weights.path)}
  tmp = path.with_name(path.name + '.tmp')
  try:
    with tmp.open('wb') as f:  # A file object: np.savez would otherwise rename it.
      np.savez(f, **weights.arrays, **{META_KEY: np.array(json.dumps(meta))})
    tmp.replace(path)
  finally:
    tmp.unlink(missing_ok=True)


def _load_npz(path: epath.Path, with_arrays: bool) -> tuple[dict[str, Any], dict[str, Any]]:
  """(metadata, arrays) of a jaxseg .npz; arrays only when asked (the metadata alone is cheap)."""
  try:
    with path.open('rb') as f, np.load(f, allow_pickle=False) as data:
      meta_text = str(data[META_KEY]) if META_KEY in data.files else None
      arrays = {k: data[k] for k in data.files if k != META_KEY} if with_arrays else {}
  except Exception as e:  # zipfile/zlib/OSError/EOFError/ValueError on corrupt archives.
    raise ValueError(f'cannot read weights file {path} (corrupt or not a .npz): {_short(e)}') from e
  if meta_text is None:
    raise ValueError(f'{path} is not a jaxseg weights file (no {META_KEY!r} entry); create one '
                     'with `jaxseg convert-weights`')
  try:
    meta = json.loads(meta_text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: corrupt metadata ({_short(e)})') from e
  if (not isinstance(meta, dict) or meta.get('format') != FORMAT_VERSION
      or meta.get('arch') not in convert.ARCHS
      or not {'space', 'mean', 'std', 'scale'} <= set(meta.get('normalization') or {})):
    raise ValueError(f'{path}: unsupported jaxseg weights metadata; re-create the file with '
                     '`jaxseg convert-weights`')
  return meta, arrays


def read_npz(path: str | os.PathLike) -> convert.PretrainedWeights:
  """Weights written by `save_npz`, checked to be complete for their arch (NumPy only)."""
  path = _check_path(path)
  meta, arrays = _load_npz(path, with_arrays=True)
  arch = meta['arch']
  expected = {rule[1] for rule in convert.conversion_rules(arch)}
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
      skipped=tuple(meta.get('skipped', ())), normalization=meta['normalization'], path=str(path))


def read_weights(path: str | os.PathLike, arch: str | None = None) -> convert.PretrainedWeights:
  """Reads a `.npz` (converted) or `.pth` (torchvision) backbone file.

  For a `.pth`, the arch is recognised from its tensor names; `arch` is used only when they
  match no supported arch exactly, so the error lists the tensors missing or unused for it.
  The caller compares the returned `.arch` with the one it needs.
  """
  path = _check_path(path)
  if path.suffix == '.npz':
    return read_npz(path)
  state_dict = read_state_dict(path)
  found = convert.guess_arch(state_dict) or arch
  if found is None:
    raise ValueError(f'{path} is not a torchvision {"/".join(convert.ARCHS)} state dict; first '
                     f'tensors: {convert.format_names(list(state_dict), 5)}')
  return convert.convert_state_dict(state_dict, found, str(path))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
  """{'arch', 'normalization'} of a weights file without loading its arrays.

  `.npz`: as recorded by convert-weights. `.pth`: arch None (known only once the tensors are
  read) and torchvision's ImageNet normalisation (RGB in [0, 1], ImageNet mean/std), which all
  its models share.
  """
  path = _check_path(path)
  if path.suffix != '.npz':
    return {'arch': None, 'normalization': dict(convert.TORCHVISION_NORMALIZATION)}
  meta = _load_npz(path, with_arrays=False)[0]
  return {'arch': meta['arch'], 'normalization': meta['normalization']}


def weights_normalization(path: str | os.PathLike) -> dict[str, Any]:
  """The input normalisation the weights expect: {'space', 'mean', 'std', 'scale'}."""
  return read_metadata(path)['normalization']
