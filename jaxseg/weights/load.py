"""Loading a pretrained backbone into a freshly initialised jaxseg model (config.model.init_from).

Only the backbone comes from the file; new layers (FCN score layers, DeconvNet decoder and BN,
PSPNet pyramid pooling and heads) keep their own initialisation. Every array in the file must
land on a model leaf of the same shape; anything else fails naming the tensor, both shapes and
the file, so a partially loaded model never trains unnoticed.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxseg.weights import convert
from jaxseg.weights import files

NORMALIZATIONS = ('imagenet', 'caffe')  # config.data.normalization values.


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What load_pretrained did; `summary()` is what it prints."""
  path: str
  arch: str
  model_name: str
  loaded: tuple[str, ...]  # Flax keys set from the file.
  new: tuple[str, ...]  # Flax keys left at the model's own initialisation.
  skipped: tuple[str, ...]  # torchvision tensors intentionally not used.
  num_values: int
  normalization: dict[str, Any]

  def summary(self) -> str:
    by_top = collections.defaultdict(dict)  # Top-level module -> its submodules, in order.
    for key in self.loaded:
      parts = key.split('/')
      by_top[parts[1]].setdefault(parts[2] if len(parts) > 3 else '', None)
    loaded = ', '.join(f'{top}' + (f' [{_abbreviate(list(subs))}]' if any(subs) else '')
                       for top, subs in by_top.items())
    new_modules = collections.defaultdict(list)
    for key in self.new:
      module, _, leaf = key.partition('/')[2].rpartition('/')
      new_modules[module].append(leaf)
    new = ', '.join(f'{m}{{{",".join(leaves)}}}' for m, leaves in new_modules.items()) or 'none'
    norm = self.normalization
    return '\n'.join([
        f'init_from {self.path}: torchvision {self.arch} -> model {self.model_name}',
        f'  loaded {len(self.loaded)} arrays ({self.num_values:,} values): {loaded}',
        f'  new (own initialisation) {len(self.new)} arrays: {new}',
        f'  skipped from the file: {", ".join(self.skipped) or "none"} ({convert.SKIP_REASON})',
        f'  weights expect {norm["space"]} input in [0, {norm["scale"]}], mean {norm["mean"]}, '
        f'std {norm["std"]}',
    ])


def _abbreviate(names: list[str]) -> str:
  return ', '.join(names if len(names) <= 6 else [*names[:3], '...', *names[-2:]])


def normalization_name(normalization: Mapping[str, Any]) -> str | None:
  """The config.data.normalization value that matches recorded weights normalisation, if any."""
  ref = convert.TORCHVISION_NORMALIZATION
  if (normalization['space'] == ref['space'] and normalization['scale'] == ref['scale']
      and np.allclose(normalization['mean'], ref['mean'])
      and np.allclose(normalization['std'], ref['std'])):
    return 'imagenet'
  if normalization['space'] == 'BGR':
    return 'caffe'
  return None


def check_normalization(config_normalization: str, weights_norm: Mapping[str, Any],
                        path: str | os.PathLike) -> None:
  """Fails when config.data.normalization cannot be what the weights expect.

  A different colour order or value range is an error; the same RGB order with other
  mean/std constants only warns (the features are then merely shifted).
  """
  if config_normalization not in NORMALIZATIONS:
    raise ValueError(f'config.data.normalization={config_normalization!r}; expected one of '
                     f'{NORMALIZATIONS}')
  name = normalization_name(weights_norm)
  if name == config_normalization:
    return
  described = (f'{weights_norm["space"]} input in [0, {weights_norm["scale"]}] with mean '
               f'{weights_norm["mean"]}, std {weights_norm["std"]}')
  config_space, config_scale = ('BGR', 255.0) if config_normalization == 'caffe' else ('RGB', 1.0)
  if (name is None and weights_norm['space'] == config_space
      and float(weights_norm['scale']) == config_scale):
    warnings.warn(f'weights {path} expect {described}; config.data.normalization='
                  f'{config_normalization!r} uses other constants', stacklevel=3)
    return
  hint = f'; set --config.data.normalization={name}' if name else ''
  raise ValueError(f'weights {path} expect {described}, but config.data.normalization is '
                   f'{config_normalization!r} ({config_space}){hint}')


def _required_arch(model_name: str, width: float) -> str:
  if model_name not in convert.MODEL_ARCH:
    raise ValueError(f'model {model_name!r} has no pretrained backbone import; known models: '
                     f'{", ".join(convert.MODEL_ARCH)}')
  if width != 1.0:
    raise ValueError(f'model.width={width}: pretrained weights fit only width 1.0 models; set '
                     '--config.model.width=1.0 or clear model.init_from')
  return convert.MODEL_ARCH[model_name]


def _check_arch(found: str, needed: str, model_name: str, path: str | os.PathLike) -> None:
  if found != needed:
    raise ValueError(f'{path} holds torchvision {found} weights, but model {model_name!r} '
                     f'needs a {needed} backbone')


def load_pretrained(variables: Mapping[str, Any], path: str | os.PathLike, model_name: str, *,
                    width: float = 1.0, normalization: str | None = None,
                    log: Callable[[str], None] | None = print) -> tuple[Any, LoadReport]:
  """Replaces the backbone of `variables` by the weights in `path`.

  Args:
    variables: a freshly initialised model's variables ({'params', 'batch_stats'}).
    path: a converted `.npz` (`jaxseg convert-weights`) or a torchvision `.pth` state dict.
    model_name: the registry name (fcn8s, deconvnet, pspnet50, ...); decides the arch needed.
    width: the model's width multiplier; pretrained weights need 1.0.
    normalization: config.data.normalization, checked against the weights' (None: skip).
    log: receives the report's summary (None: silent).

  Returns:
    (variables with the backbone replaced, same container type; LoadReport).

  Raises:
    FileNotFoundError: no such file. ValueError: unknown model, width != 1, unreadable file,
    wrong arch, mismatched normalisation, or any tensor without a same-shaped model leaf.
  """
  arch = _required_arch(model_name, width)
  weights = files.read_weights(path, arch=arch)
  _check_arch(weights.arch, arch, model_name, path)
  if normalization is not None:
    check_normalization(normalization, weights.normalization, path)

  flat = traverse_util.flatten_dict(flax.core.unfreeze(variables), sep='/')
  problems = []
  for key, array in weights.arrays.items():
    source = weights.sources.get(key, key)
    if key not in flat:
      problems.append(f'unused tensor {source!r} (-> {key}): the model has no such leaf')
    elif tuple(flat[key].shape) != array.shape:
      problems.append(f'shape mismatch for tensor {source!r} (-> {key}): model expects '
                      f'{tuple(flat[key].shape)}, file has {array.shape}')
  if problems:
    more = f'\n  ... {len(problems) - 10} more' if len(problems) > 10 else ''
    raise ValueError(f'cannot load {path} into model {model_name!r}: {len(problems)} problem(s)\n  '
                     + '\n  '.join(problems[:10]) + more)

  for key, array in weights.arrays.items():
    flat[key] = jnp.asarray(array, dtype=flat[key].dtype)
  merged = traverse_util.unflatten_dict(flat, sep='/')
  if isinstance(variables, flax.core.FrozenDict):
    merged = flax.core.freeze(merged)
  report = LoadReport(
      path=str(path), arch=arch, model_name=model_name, loaded=tuple(weights.arrays),
      new=tuple(k for k in flat if k not in weights.arrays), skipped=weights.skipped,
      num_values=weights.num_values, normalization=dict(weights.normalization))
  if log is not None:
    log(report.summary())
  return merged, report


def init_from_config(variables: Mapping[str, Any], config: Any,
                     log: Callable[[str], None] | None = print) -> tuple[Any, LoadReport | None]:
  """load_pretrained driven by a jaxseg config: model.init_from, name, width, data.normalization.

  Returns `(variables, None)` unchanged when config.model.init_from is empty.
  """
  if not config.model.init_from:
    return variables, None
  return load_pretrained(variables, config.model.init_from, config.model.name,
                         width=config.model.width, normalization=config.data.normalization,
                         log=log)


def check_init_from(config: Any) -> None:
  """Cheap early checks of config.model.init_from, before any model is built or data read.

  File exists and is readable, model/arch/width fit, config.data.normalization matches (for a
  `.npz` from its metadata alone; a `.pth`'s arch is checked when load_pretrained reads it).
  No-op when init_from is empty.
  """
  if not config.model.init_from:
    return
  arch = _required_arch(config.model.name, config.model.width)
  meta = files.read_metadata(config.model.init_from)
  if meta['arch'] is not None:
    _check_arch(meta['arch'], arch, config.model.name, config.model.init_from)
  check_normalization(config.data.normalization, meta['normalization'], config.model.init_from)
