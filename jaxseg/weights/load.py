"""Loading weights into a freshly initialised jaxseg model (config.model.init_from, --weights).

A backbone file (torchvision/semseg ImageNet, Caffe VGG16) sets the backbone; new layers (FCN
score layers, DeconvNet decoder and BN, PSPNet pyramid pooling and heads) keep their own
initialisation. A whole-model file (an FCN/PSPNet Caffe model, a semseg checkpoint, a jaxseg
workdir) sets every layer it has. Every array must land on a model leaf of the same shape;
anything else fails naming the tensor, both shapes and the file, so a partially loaded model
never trains unnoticed. The one exception is FCN's staged training (`convert.STAGED_FROM`): a
coarser FCN's upsampling layers, which the finer net does not have, are left out, as Caffe's
`copy_from` copies layers by name.

Model fields the weights fix (FCN geometry and skip scales, PSPNet's backbone variant) must equal
the config's; a difference fails with the override to set.
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
from jaxseg.weights import workdir

NORMALIZATIONS = ('imagenet', 'caffe')  # config.data.normalization values.


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What load_pretrained did; `summary()` is what it prints."""
  path: str
  arch: str
  model_name: str
  loaded: tuple[str, ...]  # Flax keys set from the file.
  new: tuple[str, ...]  # Flax keys left at the model's own initialisation.
  skipped: tuple[str, ...]  # Tensors of the file intentionally not used.
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
        f'init_from {self.path}: {self.arch} weights -> model {self.model_name}',
        f'  loaded {len(self.loaded)} arrays ({self.num_values:,} values): {loaded}',
        f'  new (own initialisation) {len(self.new)} arrays: {new}',
        f'  skipped from the file: {convert.format_names(list(self.skipped)) or "none"}',
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
  if normalization['space'] == 'BGR' and float(normalization['scale']) == 255.0:
    # Caffe nets: FCN's data layers subtract (104.007, 116.669, 122.679), VGG's and PSPNet's
    # (103.939, 116.779, 123.68); within one grey level, below the uint8 rounding of the input.
    from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TF)
    if (np.allclose(normalization.get('std', 1.0), 1.0)
        and np.allclose(normalization['mean'], pipeline.CAFFE_BGR_MEAN, atol=1.0)):
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


def _check_arch(found: str, accepted: tuple[str, ...], model_name: str,
                path: str | os.PathLike) -> None:
  if found not in accepted:
    hint = ''
    if found.startswith('resnet') and model_name.startswith('pspnet'):
      hint = ('; set --config.model.backbone=semseg for semseg backbones, torchvision for '
              'torchvision ones')
    raise ValueError(f'{path} holds {found} weights, but model {model_name!r} (with this '
                     f'config.model.backbone) loads {" or ".join(accepted)}{hint}')


def check_model_fields(weights_fields: Mapping[str, Any], model_fields: Mapping[str, Any],
                       path: str | os.PathLike) -> None:
  """Fails when a model field the weights fix differs from the config's."""
  for field, value in weights_fields.items():
    if field in model_fields and _canonical(model_fields[field]) != _canonical(value):
      shown = ','.join(str(v) for v in value) if isinstance(value, (tuple, list)) else value
      raise ValueError(f'weights {path} were trained with model.{field}={value!r}, but the config '
                       f'has {model_fields[field]!r}; set --config.model.{field}={shown}')


def _canonical(value: Any) -> Any:
  if isinstance(value, (tuple, list)):
    return tuple(float(v) for v in value)
  return value


def read_checked(path: str | os.PathLike, model_name: str, *, backbone: str = 'torchvision',
                 normalization: str | None = None,
                 model_fields: Mapping[str, Any] | None = None) -> convert.PretrainedWeights:
  """The weights in `path`, checked to fit the model: arch, normalisation, model fields."""
  accepted = convert.accepted_archs(model_name, backbone)
  weights = files.read_weights(path, arch=accepted[0])
  _check_arch(weights.arch, accepted, model_name, path)
  if normalization is not None:
    check_normalization(normalization, weights.normalization, path)
  if model_fields is not None:
    check_model_fields(weights.model_fields, model_fields, path)
  return weights


def plan(shapes: Mapping[str, tuple[int, ...]], weights: convert.PretrainedWeights,
         model_name: str, *, whole: bool = False
         ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
  """(loaded, new, dropped): which model leaves ('/'-keys -> shape) the weights set.

  Raises ValueError listing every tensor without a same-shaped leaf (and, with `whole`, every
  leaf the weights lack).
  """
  path = weights.path or 'weights'
  staged = convert.STAGED_FROM.get(model_name) == weights.arch
  problems, dropped = [], []
  for key, array in weights.arrays.items():
    source = weights.sources.get(key, key)
    if key not in shapes:
      if staged:  # The coarser net's own upsampling: not a layer of the finer one.
        dropped.append(source)
      else:
        problems.append(f'unused tensor {source!r} (-> {key}): the model has no such leaf')
    elif tuple(shapes[key]) != array.shape:
      problems.append(f'shape mismatch for tensor {source!r} (-> {key}): model expects '
                      f'{tuple(shapes[key])}, file has {array.shape}')
  if problems:
    more = f'\n  ... {len(problems) - 10} more' if len(problems) > 10 else ''
    width_hint = ('\n  (weights fit the width they were trained at: for pretrained and released '
                  'models --config.model.width=1.0)' if any('shape' in p for p in problems) else '')
    raise ValueError(f'cannot load {path} into model {model_name!r}: {len(problems)} problem(s)\n  '
                     + '\n  '.join(problems[:10]) + more + width_hint)
  loaded = tuple(k for k in weights.arrays if k in shapes)
  new = tuple(k for k in shapes if k not in weights.arrays)
  if whole:
    missing = [k for k in new if k.split('/')[1] != 'aux']
    if missing:
      raise ValueError(f'{path} holds {weights.arch} weights without {len(missing)} variable(s) '
                       f'of model {model_name!r}: {convert.format_names(missing)}; evaluating '
                       'needs a whole trained model (a backbone file only starts training)')
  return loaded, new, tuple(dropped)


def load_pretrained(variables: Mapping[str, Any], path: str | os.PathLike, model_name: str, *,
                    backbone: str = 'torchvision', normalization: str | None = None,
                    model_fields: Mapping[str, Any] | None = None, whole: bool = False,
                    log: Callable[[str], None] | None = print) -> tuple[Any, LoadReport]:
  """Replaces the leaves of `variables` that the weights in `path` hold.

  Args:
    variables: a freshly initialised model's variables ({'params', 'batch_stats'}).
    path: any source `files.read_weights` reads (.npz, .pth, .caffemodel, a jaxseg workdir).
    model_name: the registry name (fcn8s, deconvnet, pspnet50, ...).
    backbone: config.model.backbone (PSPNet: which ResNet variant's weights fit).
    normalization: config.data.normalization, checked against the weights' (None: skip).
    model_fields: the model's fields (workdir.model_fields_of(config)) checked against those the
      weights fix (None: skip).
    whole: the weights must set every variable (`jaxseg eval --weights`: no training follows),
      except PSPNet's aux head, which inference does not run (Caffe deploy models lack it).
    log: receives the report's summary (None: silent).

  Returns:
    (variables with the weights' leaves replaced, same container type; LoadReport).

  Raises:
    FileNotFoundError: no such file. ValueError: unreadable file, an arch the model does not
    load, mismatched normalisation or model fields, or any tensor without a same-shaped leaf.
  """
  weights = read_checked(path, model_name, backbone=backbone, normalization=normalization,
                         model_fields=model_fields)
  flat = traverse_util.flatten_dict(flax.core.unfreeze(variables), sep='/')
  loaded, new, dropped = plan({k: v.shape for k, v in flat.items()}, weights, model_name,
                              whole=whole)
  for key in loaded:
    flat[key] = jnp.asarray(weights.arrays[key], dtype=flat[key].dtype)
  merged = traverse_util.unflatten_dict(flat, sep='/')
  for collection, tree in variables.items():  # Empty collections (FCN's batch_stats) stay.
    merged.setdefault(collection, tree)
  if isinstance(variables, flax.core.FrozenDict):
    merged = flax.core.freeze(merged)
  report = LoadReport(
      path=str(path), arch=weights.arch, model_name=model_name, loaded=loaded, new=new,
      skipped=tuple(weights.skipped) + dropped,
      num_values=int(sum(weights.arrays[k].size for k in loaded)),
      normalization=dict(weights.normalization))
  if log is not None:
    log(report.summary())
  return merged, report


def _config_kwargs(config: Any) -> dict[str, Any]:
  return dict(backbone=config.model.backbone, normalization=config.data.normalization,
              model_fields=workdir.model_fields_of(config))


def init_from_config(variables: Mapping[str, Any], config: Any,
                     log: Callable[[str], None] | None = print) -> tuple[Any, LoadReport | None]:
  """load_pretrained driven by a jaxseg config: model.init_from, name, backbone, normalisation.

  Returns `(variables, None)` unchanged when config.model.init_from is empty.
  """
  if not config.model.init_from:
    return variables, None
  return load_pretrained(variables, config.model.init_from, config.model.name, log=log,
                         **_config_kwargs(config))


def check_init_from(config: Any) -> None:
  """Checks config.model.init_from before training starts (the trainer's preflight).

  The source exists and is readable, its arch fits the model, config.data.normalization and the
  model fields match, and every tensor has a same-shaped leaf in the config's model (its shapes
  from `jax.eval_shape`: nothing is computed). No-op when init_from is empty.
  """
  if not config.model.init_from:
    return
  import jax  # pylint: disable=g-import-not-at-top
  from jaxseg import train  # pylint: disable=g-import-not-at-top
  weights = read_checked(config.model.init_from, config.model.name, **_config_kwargs(config))
  model = train.build_model(config).clone(sync_bn_axis=None)
  height, width = config.data.crop_size
  shapes = jax.eval_shape(lambda: model.init(
      {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(0)},
      jnp.zeros((1, height, width, 3)), train=True))
  flat = traverse_util.flatten_dict(flax.core.unfreeze(shapes), sep='/')
  plan({k: v.shape for k, v in flat.items()}, weights, config.model.name)
