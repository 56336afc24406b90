"""Weights archs jaxseg knows, and torchvision state dict -> Flax variables (vgg16, resnet50/101).

An arch names what a weights file holds: a backbone (`BACKBONE_ARCHS`: torchvision's vgg16 /
resnet50 / resnet101, semseg's deep-stem resnet50_semseg / resnet101_semseg) or a whole trained
model (`MODEL_ARCHS`: the jaxseg model names, e.g. FCN's and PSPNet's released Caffe models, a
semseg checkpoint, a jaxseg workdir). `accepted_archs(model, backbone)` says which a model loads.

The mapping is explicit: every tensor of a torchvision state dict is either converted to one
Flax leaf, intentionally skipped (the ImageNet classifier), or ignored (`num_batches_tracked`,
a counter). Anything else, or a missing tensor, is an error, so a wrong or truncated file can
never load silently.

  vgg16    features.{0,2,5,...,28}.{weight,bias}  -> params/backbone/conv1_1..conv5_3/{kernel,bias}
           classifier.0 Linear(25088, 4096)       -> params/fc6 7x7x512x4096 conv (FCN "surgery")
           classifier.3 Linear(4096, 4096)        -> params/fc7 1x1 conv
           classifier.6 (1000-way ImageNet layer) skipped
  resnet*  conv1, bn1, layer{i}.{j}.* (keys as jaxseg.models.resnet.torchvision_key_to_flax)
           BN weight/bias -> params scale/bias, running_mean/var -> batch_stats mean/var
           fc.* skipped

Flax keys are '/'-joined paths from the variables root ('params/backbone/conv1_1/kernel'),
relative to the whole model (FCN/DeconvNet/PSPNet), since fc6/fc7 sit beside the backbone.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxseg.models import resnet
from jaxseg.models import vgg

TORCHVISION_ARCHS: tuple[str, ...] = ('vgg16', 'resnet50', 'resnet101')
BACKBONE_ARCHS: tuple[str, ...] = TORCHVISION_ARCHS + ('resnet50_semseg', 'resnet101_semseg')
MODEL_ARCHS: tuple[str, ...] = ('fcn32s', 'fcn16s', 'fcn8s', 'deconvnet', 'pspnet50', 'pspnet101')
ARCHS: tuple[str, ...] = BACKBONE_ARCHS + MODEL_ARCHS

# The torchvision backbone each jaxseg model imports (its default backbone).
MODEL_ARCH: dict[str, str] = {
    'fcn32s': 'vgg16', 'fcn16s': 'vgg16', 'fcn8s': 'vgg16', 'deconvnet': 'vgg16',
    'pspnet50': 'resnet50', 'pspnet101': 'resnet101',
}
# Staged FCN training: a finer FCN starts from the next coarser one (shared layers by name).
STAGED_FROM: dict[str, str] = {'fcn16s': 'fcn32s', 'fcn8s': 'fcn16s'}
_PSPNET_BACKBONE_ARCH = {'torchvision': '', 'semseg': '_semseg', 'caffe': None}


def accepted_archs(model_name: str, backbone: str = 'torchvision') -> tuple[str, ...]:
  """The weights archs `model_name` can start from (config.model.backbone for PSPNet)."""
  if model_name not in MODEL_ARCH:
    raise ValueError(f'model {model_name!r} has no weights import; known models: '
                     f'{", ".join(MODEL_ARCH)}')
  if model_name.startswith('pspnet'):
    if backbone not in _PSPNET_BACKBONE_ARCH:
      raise ValueError(f'config.model.backbone={backbone!r}; use one of '
                       f'{tuple(_PSPNET_BACKBONE_ARCH)}')
    suffix = _PSPNET_BACKBONE_ARCH[backbone]
    # The Caffe ResNet's ImageNet weights were never released: only whole Caffe models load.
    return (model_name,) if suffix is None else (MODEL_ARCH[model_name] + suffix, model_name)
  staged = (STAGED_FROM[model_name],) if model_name in STAGED_FROM else ()
  return (MODEL_ARCH[model_name], model_name) + staged


def is_model_arch(arch: str) -> bool:
  """True when weights of `arch` hold a whole model (heads included), not only a backbone."""
  return arch in MODEL_ARCHS

# The input normalisation every torchvision ImageNet model was trained with: RGB pixels scaled
# to [0, 1] ('scale' is the pixel value range before mean/std), then (x - mean) / std.
TORCHVISION_NORMALIZATION: dict[str, Any] = {
    'space': 'RGB', 'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225], 'scale': 1.0}

FC6_KERNEL = 7  # torchvision's classifier sees pool5 adaptive-pooled to 7x7.

_SKIPPED = {
    'vgg16': ('classifier.6.weight', 'classifier.6.bias'),
    'resnet50': ('fc.weight', 'fc.bias'),
    'resnet101': ('fc.weight', 'fc.bias'),
}
SKIP_REASON = 'ImageNet 1000-way classifier, unused by design'
_RESNET_DEPTH = {'resnet50': 50, 'resnet101': 101}

Transform = Callable[[np.ndarray, str], np.ndarray]


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
  """Backbone weights in Flax layout, ready to merge into a model's variables."""
  arch: str
  arrays: dict[str, np.ndarray]  # Flax key ('params/backbone/conv1_1/kernel') -> array.
  sources: dict[str, str]  # Flax key -> torchvision tensor name it came from.
  skipped: tuple[str, ...]  # torchvision tensors intentionally not converted.
  normalization: dict[str, Any]
  path: str = ''  # The file it was read from ('' when built in memory).
  # Model fields the weights fix (e.g. {'backbone': 'caffe'} for PSPNet's Caffe models,
  # {'skip_scales': (0.01, 0.0001)} for FCN-8s at-once); checked against / applied to the config.
  model_fields: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_values(self) -> int:
    return int(sum(a.size for a in self.arrays.values()))


def _ndim(array: np.ndarray, ndim: int, name: str) -> None:
  if array.ndim != ndim:
    raise ValueError(f'tensor {name!r} has shape {tuple(array.shape)}; expected a {ndim}-D '
                     'tensor for this layer')


def _conv_kernel(w: np.ndarray, name: str) -> np.ndarray:
  """torch Conv2d (O, I, H, W) -> Flax (H, W, I, O)."""
  _ndim(w, 4, name)
  return w.transpose(2, 3, 1, 0)


def _fc6_kernel(w: np.ndarray, name: str) -> np.ndarray:
  """Linear(C*7*7, O) on torch's (C, H, W)-order flatten of pool5 -> 7x7 conv, HWIO."""
  _ndim(w, 2, name)
  out, inp = w.shape
  if inp % (FC6_KERNEL * FC6_KERNEL):
    raise ValueError(f'tensor {name!r} has shape {w.shape}; its input size must be '
                     f'channels*{FC6_KERNEL}*{FC6_KERNEL} (torchvision vgg16: 512*7*7 = 25088)')
  w = w.reshape(out, inp // FC6_KERNEL ** 2, FC6_KERNEL, FC6_KERNEL)
  return w.transpose(2, 3, 1, 0)


def _fc_as_1x1(w: np.ndarray, name: str) -> np.ndarray:
  """Linear (O, I) -> 1x1 conv (1, 1, I, O)."""
  _ndim(w, 2, name)
  return w.T[None, None]


def _same(w: np.ndarray, name: str) -> np.ndarray:
  _ndim(w, 1, name)
  return w


def _vgg16_rules() -> list[tuple[str, str, Transform]]:
  rules = []
  for conv, index in vgg.TORCHVISION_VGG16_CONV_INDICES.items():
    rules.append((f'features.{index}.weight', f'params/backbone/{conv}/kernel', _conv_kernel))
    rules.append((f'features.{index}.bias', f'params/backbone/{conv}/bias', _same))
  for torch_index, flax_name, kernel in ((0, 'fc6', _fc6_kernel), (3, 'fc7', _fc_as_1x1)):
    rules.append((f'classifier.{torch_index}.weight', f'params/{flax_name}/kernel', kernel))
    rules.append((f'classifier.{torch_index}.bias', f'params/{flax_name}/bias', _same))
  return rules


def _resnet_torch_keys(depth: int) -> list[str]:
  """Every tensor name of torchvision's resnet{depth}() state dict (less fc and counters)."""
  bn = lambda m: [f'{m}.{leaf}' for leaf in ('weight', 'bias', 'running_mean', 'running_var')]
  keys = ['conv1.weight', *bn('bn1')]
  for stage, num_blocks in enumerate(resnet.STAGE_SIZES[depth], 1):
    for block in range(num_blocks):
      prefix = f'layer{stage}.{block}'
      for k in (1, 2, 3):
        keys += [f'{prefix}.conv{k}.weight', *bn(f'{prefix}.bn{k}')]
      if block == 0:  # torchvision projects the shortcut in every stage's first block.
        keys += [f'{prefix}.downsample.0.weight', *bn(f'{prefix}.downsample.1')]
  return keys


def _resnet_rules(depth: int) -> list[tuple[str, str, Transform]]:
  rules = []
  for key in _resnet_torch_keys(depth):
    collection, path = resnet.torchvision_key_to_flax(key)
    transform = _conv_kernel if path[-1] == 'kernel' else _same
    rules.append((key, '/'.join((collection, 'backbone', *path)), transform))
  return rules


def conversion_rules(arch: str) -> list[tuple[str, str, Transform]]:
  """(torchvision name, Flax key, transform) for every tensor the arch converts."""
  if arch == 'vgg16':
    return _vgg16_rules()
  if arch in _RESNET_DEPTH:
    return _resnet_rules(_RESNET_DEPTH[arch])
  raise ValueError(f'unknown torchvision arch {arch!r}; supported: {", ".join(TORCHVISION_ARCHS)}')


def skipped_tensors(arch: str) -> tuple[str, ...]:
  """torchvision tensors of the arch that are intentionally not converted."""
  return _SKIPPED[arch]


def _is_ignored(name: str) -> bool:
  return name.endswith('.num_batches_tracked')  # BN's step counter: no Flax counterpart.


def guess_arch(names: Any) -> str | None:
  """The arch whose torchvision state dict has exactly these tensor names, else None."""
  names = {n for n in names if not _is_ignored(n)}
  for arch in TORCHVISION_ARCHS:
    expected = {rule[0] for rule in conversion_rules(arch)} | set(_SKIPPED[arch])
    if names == expected:
      return arch
  return None


def format_names(names: list[str], limit: int = 8) -> str:
  """'a, b, ... (n more)' for error messages."""
  shown = ', '.join(names[:limit])
  return shown + (f', ... ({len(names) - limit} more)' if len(names) > limit else '')


def convert_state_dict(state_dict: Mapping[str, np.ndarray], arch: str,
                       path: str = '') -> PretrainedWeights:
  """Converts a torchvision state dict (name -> numpy array) of `arch` to Flax layout.

  Raises ValueError (naming `path`, the file it came from) when the tensors do not form a
  torchvision `arch` state dict: a different arch, missing or unknown (unused) tensors, or
  wrong ranks.
  """
  source = path or 'state dict'
  rules = conversion_rules(arch)
  guessed = guess_arch(state_dict)
  if guessed is not None and guessed != arch:
    raise ValueError(f'{source} holds a torchvision {guessed} state dict, not {arch}; '
                     f'pass --arch {guessed} or use the {arch} weights file')
  expected = {rule[0] for rule in rules}
  unused = [n for n in state_dict
            if n not in expected and n not in _SKIPPED[arch] and not _is_ignored(n)]
  if unused:
    raise ValueError(f'{source}: {len(unused)} unused tensor(s) that torchvision {arch} does not '
                     f'have: {format_names(unused)}. Is this a plain torchvision {arch} state dict?')
  missing = [n for n in expected if n not in state_dict]
  if missing:
    raise ValueError(f'{source}: {len(missing)} tensor(s) of torchvision {arch} missing: '
                     f'{format_names(missing)}')
  arrays, sources = {}, {}
  for torch_name, flax_key, transform in rules:
    try:
      value = transform(np.asarray(state_dict[torch_name]), torch_name)
    except ValueError as e:
      raise ValueError(f'{source}: {e}') from None
    arrays[flax_key] = np.ascontiguousarray(value, dtype=np.float32)
    sources[flax_key] = torch_name
  return PretrainedWeights(arch=arch, arrays=arrays, sources=sources,
                           skipped=tuple(n for n in _SKIPPED[arch] if n in state_dict),
                           normalization=dict(TORCHVISION_NORMALIZATION), path=path)
