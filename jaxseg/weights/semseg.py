"""hszhao/semseg's PyTorch weights -> Flax variables: its deep-stem ResNets and trained PSPNets.

Two kinds of `.pth` files (read by files.read_state_dict, which unwraps a checkpoint's
'state_dict'), recognised by their tensor names:

  resnet50_v2.pth / resnet101_v2.pth   semseg's ImageNet initmodel (model/resnet.py deep_base)
      conv1, bn1, conv2, bn2, conv3, bn3   -> params|batch_stats/backbone/conv1..bn3/...
      layer{1-4}.{j}.*                     -> .../backbone/layer{i}_{j}/... (resnet.py's table)
      fc.*                                 skipped (ImageNet classifier)
      arch 'resnet50_semseg' / 'resnet101_semseg'
  a trained PSPNet (tool/train.py saves {'epoch', 'state_dict', 'optimizer'}; the model is
  wrapped in DataParallel, hence the 'module.' prefix, accepted with or without it):
      layer0.{0,1,3,4,6,7}  (model/pspnet.py's Sequential of conv1, bn1, relu, conv2, bn2, relu,
                             conv3, bn3, relu, maxpool) -> backbone/conv1, bn1, ..., conv3, bn3
      layer{1-4}.*          -> backbone/layer{i}_{j}/...
      ppm.features.{i}.{1,2} (AdaptiveAvgPool, Conv1x1, BN, ReLU) -> ppm/bin{b}/{conv,bn}, b the
                             i-th of pspnet.PSP_BINS (1, 2, 3, 6)
      cls.{0,1,4}           (Conv3x3, BN, ReLU, Dropout2d, Conv1x1) -> cls/conv_bn/{conv,bn},
                             cls/classifier/{kernel,bias}
      aux.{0,1,4}           -> aux/... likewise (optional as a whole: inference does not run it)
      arch 'pspnet50' / 'pspnet101', model_fields {'backbone': 'semseg'}

The depth comes from the number of layer3 blocks (6: 50, 23: 101; `stage_sizes` for tiny test
networks). BN weight/bias become scale/bias in 'params', running_mean/var mean/var in
'batch_stats'; conv weights are transposed from (O, I, H, W) to (H, W, I, O);
`num_batches_tracked` counters are ignored. Any missing or unknown tensor is an error naming the
file and the tensors. semseg normalises RGB pixels in
[0, 255] with mean [0.485, 0.456, 0.406] * 255 and std [0.229, 0.224, 0.225] * 255
(tool/train.py, value_scale 255): torchvision's normalisation, convert.TORCHVISION_NORMALIZATION.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from jaxseg.models import pspnet, resnet
from jaxseg.weights import convert

MODULE_PREFIX = 'module.'  # torch.nn.DataParallel's, in every tensor name of semseg's checkpoints.
SEMSEG_BACKBONE_ARCHS = {50: 'resnet50_semseg', 101: 'resnet101_semseg'}
SEMSEG_PSPNET_ARCHS = {50: 'pspnet50', 101: 'pspnet101'}
_DEPTH_OF_LAYER3 = {sizes[2]: depth for depth, sizes in resnet.STAGE_SIZES.items()}
_FC = ('fc.weight', 'fc.bias')
_BN_LEAVES = ('weight', 'bias', 'running_mean', 'running_var')
# model/pspnet.py's layer0 Sequential index -> the deep stem's module name.
_LAYER0 = {0: 'conv1', 1: 'bn1', 3: 'conv2', 4: 'bn2', 6: 'conv3', 7: 'bn3'}
_LAYER3_BLOCK = re.compile(r'^layer3\.(\d+)\.')


def _ignored(name: str) -> bool:
  return name.endswith('.num_batches_tracked')  # BN's step counter: no Flax counterpart.


def _strip_prefix(names: Iterable[str]) -> dict[str, str]:
  """Name without DataParallel's prefix -> name in the file (prefix dropped only if on all)."""
  names = list(names)
  if names and all(n.startswith(MODULE_PREFIX) for n in names):
    return {n[len(MODULE_PREFIX):]: n for n in names}
  return {n: n for n in names}


def _layer3_blocks(names: Iterable[str]) -> int:
  return len({int(m[1]) for m in map(_LAYER3_BLOCK.match, names) if m})


def _kind(names: set[str]) -> str | None:
  """'backbone' (resnet*_v2.pth), 'pspnet' (a trained model) or None, from signature tensors."""
  # The deep stem's top-level conv2/conv3 (torchvision's ResNet has conv1 only) beside layer1.
  if {'conv1.weight', 'conv2.weight', 'conv3.weight', 'layer1.0.conv1.weight'} <= names:
    return 'backbone'
  # model/pspnet.py's layer0 stem Sequential and cls head.
  if {'layer0.0.weight', 'layer1.0.conv1.weight', 'cls.4.weight'} <= names:
    return 'pspnet'
  return None


def _bn(module: str) -> list[str]:
  return [f'{module}.{leaf}' for leaf in _BN_LEAVES]


def _stage_keys(stage_sizes: Sequence[int]) -> list[str]:
  """The names of model/resnet.py's layer1..layer4 tensors (shared by both kinds of file)."""
  keys = []
  for stage, num_blocks in enumerate(stage_sizes, 1):
    for block in range(num_blocks):
      prefix = f'layer{stage}.{block}'
      for k in (1, 2, 3):
        keys += [f'{prefix}.conv{k}.weight', *_bn(f'{prefix}.bn{k}')]
      if block == 0:  # Every first block projects: stride 2, or 128 -> 256 channels in layer1.
        keys += [f'{prefix}.downsample.0.weight', *_bn(f'{prefix}.downsample.1')]
  return keys


def _backbone_key(torch_name: str) -> str:
  """A deep-stem ResNet tensor name -> its '/'-joined Flax key inside a model ('backbone')."""
  collection, path = resnet.torchvision_key_to_flax(torch_name, stem='deep')
  return '/'.join((collection, 'backbone', *path))


def _backbone_rules(stage_sizes: Sequence[int]) -> dict[str, str]:
  """resnet*_v2.pth tensor name -> Flax key."""
  stem = ['conv1.weight', *_bn('bn1'), 'conv2.weight', *_bn('bn2'), 'conv3.weight', *_bn('bn3')]
  return {name: _backbone_key(name) for name in stem + _stage_keys(stage_sizes)}


def _unit_rules(torch_module: str, flax_module: str, conv_index: int) -> dict[str, str]:
  """A Conv (no bias) at `conv_index` followed by a BN: names -> Flax keys of _ConvBNReLU."""
  rules = {f'{torch_module}.{conv_index}.weight': f'params/{flax_module}/conv/kernel'}
  bn = f'{torch_module}.{conv_index + 1}'
  rules.update({f'{bn}.weight': f'params/{flax_module}/bn/scale',
                f'{bn}.bias': f'params/{flax_module}/bn/bias',
                f'{bn}.running_mean': f'batch_stats/{flax_module}/bn/mean',
                f'{bn}.running_var': f'batch_stats/{flax_module}/bn/var'})
  return rules


def _head_rules(head: str) -> dict[str, str]:
  """semseg's cls/aux Sequential (Conv, BN, ReLU, Dropout2d, Conv) -> pspnet._Head's keys."""
  rules = _unit_rules(head, f'{head}/conv_bn', 0)
  rules[f'{head}.4.weight'] = f'params/{head}/classifier/kernel'
  rules[f'{head}.4.bias'] = f'params/{head}/classifier/bias'
  return rules


def _pspnet_rules(stage_sizes: Sequence[int]) -> tuple[dict[str, str], dict[str, str]]:
  """(required, aux) tensor names of a trained semseg PSPNet (no prefix) -> Flax keys."""
  rules = {}
  for index, module in _LAYER0.items():
    leaves = ('weight',) if module.startswith('conv') else _BN_LEAVES
    for leaf in leaves:
      rules[f'layer0.{index}.{leaf}'] = _backbone_key(f'{module}.{leaf}')
  rules.update({name: _backbone_key(name) for name in _stage_keys(stage_sizes)})
  for i, b in enumerate(pspnet.PSP_BINS):
    rules.update(_unit_rules(f'ppm.features.{i}', f'ppm/bin{b}', 1))
  rules.update(_head_rules('cls'))
  return rules, _head_rules('aux')


def is_semseg_backbone(names: Iterable[str]) -> str | None:
  """'resnet50_semseg' / 'resnet101_semseg' when `names` are semseg's resnet*_v2.pth's.

  Recognised by the deep stem's top-level conv2/conv3 beside layer1..4 (torchvision's ResNet has
  conv1 only) and a layer3 of 6 or 23 blocks; convert_semseg then checks every tensor.
  """
  names = set(_strip_prefix(names))
  depth = _DEPTH_OF_LAYER3.get(_layer3_blocks(names))
  return SEMSEG_BACKBONE_ARCHS[depth] if _kind(names) == 'backbone' and depth else None


def is_semseg_pspnet(names: Iterable[str]) -> str | None:
  """'pspnet50' / 'pspnet101' when `names` are a trained semseg PSPNet's state_dict.

  Recognised by model/pspnet.py's layer0 stem and cls head (with or without 'module.') and a
  layer3 of 6 or 23 blocks; convert_semseg then checks every tensor.
  """
  names = set(_strip_prefix(names))
  depth = _DEPTH_OF_LAYER3.get(_layer3_blocks(names))
  return SEMSEG_PSPNET_ARCHS[depth] if _kind(names) == 'pspnet' and depth else None


def _transform(value: np.ndarray, flax_key: str, name: str) -> np.ndarray:
  value = np.asarray(value)
  ndim = 4 if flax_key.endswith('/kernel') else 1
  if value.ndim != ndim:
    raise ValueError(f'tensor {name!r} has shape {tuple(value.shape)}; expected a {ndim}-D '
                     f'tensor for {flax_key}')
  if ndim == 4:  # torch Conv2d (O, I, H, W) -> Flax (H, W, I, O).
    value = value.transpose(2, 3, 1, 0)
  return np.ascontiguousarray(value, dtype=np.float32)


def convert_semseg(state_dict: Mapping[str, np.ndarray], path: str = '',
                   stage_sizes: Sequence[int] | None = None) -> convert.PretrainedWeights:
  """Converts a semseg resnet*_v2.pth or trained PSPNet state dict (name -> array) to Flax keys.

  Args:
    state_dict: tensor name -> array (files.read_state_dict's output; 'module.' optional).
    path: the file it came from, for error messages and the result's `path`.
    stage_sizes: blocks per stage of a smaller network (tests' tiny models, converted as the
      50-layer arch they are built under, `create_model('pspnet50', stage_sizes=...)`); None:
      ResNet-50/101, told apart by the number of layer3 blocks.

  Raises:
    ValueError (naming `path`) when the tensors are neither kind of file, or when tensors are
    missing, unknown, or of the wrong rank.
  """
  source = path or 'state dict'
  in_file = _strip_prefix(n for n in state_dict if not _ignored(n))
  kind = _kind(set(in_file))
  if kind is None:
    raise ValueError(f'{source} is neither a semseg resnet50/101_v2.pth (conv1..conv3, bn1..bn3, '
                     'layer1..4) nor a semseg PSPNet checkpoint (layer0..4, ppm, cls); first '
                     f'tensors: {convert.format_names(list(state_dict), 5)}')
  if stage_sizes is None:
    blocks = _layer3_blocks(in_file)
    if blocks not in _DEPTH_OF_LAYER3:
      raise ValueError(f'{source}: a semseg ResNet whose layer3 has {blocks} blocks; jaxseg has '
                       '50 layers (6 blocks) and 101 layers (23 blocks)')
    depth = _DEPTH_OF_LAYER3[blocks]
    stage_sizes = resnet.STAGE_SIZES[depth]
  else:
    stage_sizes = tuple(stage_sizes)
    depth = 101 if stage_sizes == resnet.STAGE_SIZES[101] else 50
  if kind == 'backbone':
    arch, skippable = SEMSEG_BACKBONE_ARCHS[depth], _FC
    rules, optional, what = _backbone_rules(stage_sizes), {}, f'semseg {arch}'
  else:
    arch, skippable = SEMSEG_PSPNET_ARCHS[depth], ()
    (rules, optional), what = _pspnet_rules(stage_sizes), f'semseg PSPNet ({arch})'
  # The aux head is converted when present; as a whole it may be missing (inference skips it).
  if any(n in in_file for n in optional):
    rules, optional = {**rules, **optional}, {}
  unknown = [in_file[n] for n in in_file
             if n not in rules and n not in optional and n not in skippable]
  if unknown:
    raise ValueError(f'{source}: {len(unknown)} tensor(s) that a {what} state dict does not '
                     f'have: {convert.format_names(unknown)}')
  missing = [n for n in rules if n not in in_file]
  if missing:
    raise ValueError(f'{source}: {len(missing)} tensor(s) of a {what} state dict missing: '
                     f'{convert.format_names(missing)}')
  arrays, sources = {}, {}
  for name, flax_key in rules.items():
    original = in_file[name]
    try:
      arrays[flax_key] = _transform(state_dict[original], flax_key, original)
    except ValueError as e:
      raise ValueError(f'{source}: {e}') from None
    sources[flax_key] = original
  return convert.PretrainedWeights(
      arch=arch, arrays=arrays, sources=sources,
      skipped=tuple(in_file[n] for n in skippable if n in in_file),
      normalization=dict(convert.TORCHVISION_NORMALIZATION), path=path,
      model_fields={'backbone': 'semseg'})
