"""Model registry: `create_model(name, num_classes, **overrides)` for every jaxseg network.

  fcn32s, fcn16s, fcn8s   FCN on VGG16 (Long et al. 2015)           models/fcn.py
  deconvnet               DeconvNet on VGG16-BN (Noh et al. 2015)   models/deconvnet.py
  pspnet50, pspnet101     PSPNet on dilated ResNet (Zhao et al. 2017) models/pspnet.py

Overrides are the module's own fields (e.g. width, dtype, sync_bn_axis, dropout_rate, remat,
geometry for FCN, stage_sizes for PSPNet); tiny test/demo variants are just `width=1/16` (and
for PSPNet `stage_sizes=(1, 1, 1, 1)`). Modules are imported lazily, so importing the registry
is cheap.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models import remat


class _Entry(NamedTuple):
  module: str  # Module path inside jaxseg.models.
  cls: str
  fixed: dict[str, Any]  # Fields the name decides; not overridable.
  backbone_prefixes: tuple[str, ...]
  input_constraint: str


_REGISTRY: dict[str, _Entry] = {
    'fcn32s': _Entry('fcn', 'FCN', {'variant': '32s'}, ('backbone', 'fc6', 'fc7'),
                     'any size >= 1 (caffe geometry pads 100; same geometry needs no minimum)'),
    'fcn16s': _Entry('fcn', 'FCN', {'variant': '16s'}, ('backbone', 'fc6', 'fc7'),
                     'any size >= 1 (caffe geometry pads 100; same geometry needs no minimum)'),
    'fcn8s': _Entry('fcn', 'FCN', {'variant': '8s'}, ('backbone', 'fc6', 'fc7'),
                    'any size >= 1 (caffe geometry pads 100; same geometry needs no minimum)'),
    'deconvnet': _Entry('deconvnet', 'DeconvNet', {}, ('backbone', 'fc6', 'fc7'),
                        'height, width >= 193: ceil-mode pool5 must be >= 7x7 for the valid 7x7 '
                        'fc6 (the paper trains on 224x224)'),
    'pspnet50': _Entry('pspnet', 'PSPNet', {'depth': 50}, ('backbone',),
                       'any size >= 1 (output stride 8; PSPNet trains on 473x473 crops)'),
    'pspnet101': _Entry('pspnet', 'PSPNet', {'depth': 101}, ('backbone',),
                        'any size >= 1 (output stride 8; PSPNet trains on 473x473 crops)'),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)
# Top-level param keys holding the ImageNet-pretrained part (weight import; head lr multiplier).
BACKBONE_PREFIXES: dict[str, tuple[str, ...]] = {
    name: entry.backbone_prefixes for name, entry in _REGISTRY.items()}
# Top-level param keys of upsampling layers the reference keeps at bilinear interpolation
# (lr_mult 0 in voc-fcn*s); trained only with config.model.learn_upsampling.
_FCN_UPSAMPLING = {'fcn32s': ('upscore',), 'fcn16s': ('upscore2', 'upscore16'),
                   'fcn8s': ('upscore2', 'upscore_pool4', 'upscore8')}
FIXED_UPSAMPLING: dict[str, tuple[str, ...]] = dict(_FCN_UPSAMPLING)


def _entry(name: str) -> _Entry:
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}; known models: {", ".join(MODEL_NAMES)}')
  return _REGISTRY[name]


def model_class(name: str) -> type[nn.Module]:
  """The Flax module class behind a registry name."""
  entry = _entry(name)
  return getattr(importlib.import_module(f'jaxseg.models.{entry.module}'), entry.cls)


def model_input_constraint(name: str) -> str:
  """Human-readable minimum input size of a model."""
  return _entry(name).input_constraint


def _normalise(field: str, value: Any) -> Any:
  """Accepts config-friendly values: dtype names, and dropout_rate < 0 meaning 'paper value'.

  Checks remat here too, so a bad config.model.remat fails when the model is built, not traced.
  """
  if field == 'remat':
    return remat.check(value)
  if field == 'dtype' and isinstance(value, str):
    try:
      return jnp.dtype(value).type
    except TypeError as e:
      raise ValueError(f'Unknown dtype {value!r} (use e.g. float32 or bfloat16)') from e
  if field == 'dropout_rate' and value is not None and value < 0:
    return None
  return value


def create_model(name: str, num_classes: int, **overrides: Any) -> nn.Module:
  """Builds the named model.

  Args:
    name: one of MODEL_NAMES.
    num_classes: number of output classes (logits channels).
    **overrides: module fields, e.g. width=0.0625, dtype='bfloat16', sync_bn_axis='data',
      dropout_rate (< 0 or None: the paper's value), remat='block' (models/remat.py),
      geometry='caffe' and skip_scales (FCN), backbone='semseg'/'caffe' (PSPNet),
      stage_sizes=(1, 1, 1, 1) (PSPNet).

  Raises:
    ValueError: unknown name, unknown override, an override of a field the name fixes (e.g.
      FCN's variant, PSPNet's depth), an unknown remat mode, or num_classes < 1.
  """
  entry = _entry(name)
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
  cls = model_class(name)
  fields = [f.name for f in dataclasses.fields(cls)
            if f.init and f.name not in ('parent', 'name', 'num_classes')]
  allowed = [f for f in fields if f not in entry.fixed]
  for key in overrides:
    if key in entry.fixed:
      raise ValueError(f'Model {name!r} fixes {key}={entry.fixed[key]!r}; pick another model name '
                       f'instead of overriding it (known models: {", ".join(MODEL_NAMES)})')
    if key not in allowed:
      raise ValueError(f'Unknown override {key!r} for model {name!r}; accepted: '
                       f'{", ".join(allowed)}')
  kwargs = {k: _normalise(k, v) for k, v in overrides.items()}
  return cls(num_classes=num_classes, **entry.fixed, **kwargs)
