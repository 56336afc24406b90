"""ResNet-50/101 backbones for dense prediction: torchvision's, and PSPNet's authors' variants.

The default network is torchvision's `resnet50` / `resnet101` (Bottleneck v1.5: the stride sits
on the 3x3 conv, expansion 4) without the classifier: stem conv1 7x7/2 (pad 3) + bn1 + ReLU +
max-pool 3x3/2 (pad 1), then four stages of bottleneck blocks. `dilations` reproduces torchvision's
`replace_stride_with_dilation`: a stage whose dilation doubles the previous one drops its stride
and dilates its 3x3 convs instead, and — exactly as torchvision's `_make_layer` — the first block
of such a stage still uses the *previous* dilation (it receives `previous_dilation`). PSPNet uses
`dilations=(1, 1, 2, 4)`: output stride 8. Every 3x3 conv is a `jaxseg.ops.AtrousConv` with
padding = dilation on both sides, as torch's `conv3x3(..., padding=dilation)`.

Four fields give the variants of PSPNet's authors (the defaults are torchvision's):
  stem='deep'              hszhao/semseg model/resnet.py `deep_base=True` and the Caffe models'
                           conv1_1..conv1_3: three 3x3 convs (64/2, 64, 128 channels, pad 1, no
                           bias) each + BN + ReLU before the max-pool; layer1 then sees 128
                           channels (its shortcut projection still exists: 128 != 256).
  dilate_first_block=True  semseg model/pspnet.py sets dilation (and padding) on *every* conv2 of
                           layer3 (2) and layer4 (4) and stride 1 on their downsample, and so do
                           the Caffe prototxts (conv4_1_3x3 dilation 2, conv5_1_3x3 dilation 4):
                           the first block of a dilated stage uses the stage's own dilation.
  stride_on='1x1'          Caffe ResNet v1 (hszhao/PSPNet pspnet50_ADE20K_473.prototxt:
                           conv3_1_1x1_reduce stride 2, conv3_1_3x3 stride 1); '3x3' (default)
                           is v1.5, as torchvision, semseg and the Caffe PSPNet-101 prototxts.
  pool_ceil_mode=True      Caffe's Pooling rounds its output size up (pool1_3x3_s2); equal to
                           the default floor mode whenever the stem output is odd (8k+1 crops).

Parameter names map one-to-one to torchvision's state_dict (see `torchvision_key_to_flax`):

  torchvision key                          Flax collection / path (under the model's prefix)
  conv1.weight               (O,I,H,W)     params      conv1/kernel            (H,W,I,O)
  bn1.weight / bn1.bias                    params      bn1/scale, bn1/bias
  bn1.running_mean / running_var           batch_stats bn1/mean, bn1/var
  layer3.5.conv2.weight                    params      layer3_5/conv2/kernel
  layer3.5.bn2.running_mean                batch_stats layer3_5/bn2/mean
  layer1.0.downsample.0.weight             params      layer1_0/downsample_conv/kernel
  layer1.0.downsample.1.{weight,bias}      params      layer1_0/downsample_bn/{scale,bias}
  *.num_batches_tracked, fc.*              (not used)

The deep stem keeps semseg's names (`torchvision_key_to_flax(key, stem='deep')`):

  semseg key (resnet*_v2.pth)              Flax collection / path
  conv1.weight   (64, 3, 3, 3)             params      conv1/kernel   (3x3, stride 2)
  bn1.*                                    params / batch_stats bn1/...
  conv2.weight   (64, 64, 3, 3)            params      conv2/kernel
  bn2.*                                    params / batch_stats bn2/...
  conv3.weight   (128, 64, 3, 3)           params      conv3/kernel
  bn3.*                                    params / batch_stats bn3/...
  layer*.*                                 as torchvision above

Inside PSPNet the backbone is the submodule 'backbone', so `layer3.5.bn2.running_mean` becomes
batch_stats['backbone']['layer3_5']['bn2']['mean'].
"""
from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxseg import ops
from jaxseg.models import remat
from jaxseg.ops import AtrousConv, Conv

# Blocks per stage of the torchvision models.
STAGE_SIZES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
# Bottleneck planes per stage (the block outputs EXPANSION times as many channels).
STAGE_PLANES = (64, 128, 256, 512)
EXPANSION = 4
STEM_FEATURES = 64
# The deep stem's conv1, conv2, conv3 output channels (semseg deep_base, Caffe conv1_1..conv1_3).
DEEP_STEM_FEATURES = (64, 64, 128)
STEMS = ('torchvision', 'deep')
STRIDE_ON = ('3x3', '1x1')  # Which conv of a block's first bottleneck carries the stage's stride.
BN_MOMENTUM = 0.9  # Flax convention: running = 0.9 * running + 0.1 * batch (torch momentum 0.1).
BN_EPSILON = 1e-5

# torchvision leaf names -> (Flax collection, Flax leaf name).
_TORCH_LEAVES = {
    'weight': None,  # 'kernel' for convs, 'scale' for batch norms; decided by the module name.
    'bias': ('params', 'bias'),
    'running_mean': ('batch_stats', 'mean'),
    'running_var': ('batch_stats', 'var'),
}
_BLOCK_MODULE = (r'layer(?P<stage>[1-4])\.(?P<block>\d+)\.'
                 r'(?P<sub>conv[1-3]|bn[1-3]|downsample\.[01])')
_TORCH_MODULE = {
    'torchvision': re.compile(rf'^(?:(?P<stem>conv1|bn1)|{_BLOCK_MODULE})$'),
    'deep': re.compile(rf'^(?:(?P<stem>conv[1-3]|bn[1-3])|{_BLOCK_MODULE})$'),
}


def scaled_channels(channels: int, width: float) -> int:
  """Channels after the width multiplier (at least 1)."""
  return max(1, int(round(channels * width)))


def _check_choice(value: Any, choices: Sequence[str], field: str) -> None:
  if value not in choices:
    raise ValueError(f'ResNet {field} must be one of {", ".join(map(repr, choices))}; '
                     f'got {value!r}')


def torchvision_key_to_flax(key: str, stem: str = 'torchvision'
                            ) -> tuple[str, tuple[str, ...]] | None:
  """Maps a torchvision (or, with stem='deep', semseg) ResNet state_dict key to (collection, path).

  Returns None for keys the backbone does not use (`fc.*`, `*.num_batches_tracked`). Conv
  weights must additionally be transposed from torch's (O, I, H, W) to Flax's (H, W, I, O).
  Raises ValueError for any other key (e.g. a non-ResNet checkpoint).
  """
  _check_choice(stem, STEMS, 'stem')
  if key.startswith('fc.') or key.endswith('.num_batches_tracked'):
    return None
  module, _, leaf = key.rpartition('.')
  match = _TORCH_MODULE[stem].match(module)
  kind = 'torchvision' if stem == 'torchvision' else 'deep-stem (semseg)'
  if match is None or leaf not in _TORCH_LEAVES:
    raise ValueError(f'{key!r} is not a {kind} ResNet state_dict key')
  if match['stem']:
    path = (match['stem'],)
  else:
    sub = match['sub'].replace('downsample.0', 'downsample_conv').replace(
        'downsample.1', 'downsample_bn')
    path = (f"layer{match['stage']}_{match['block']}", sub)
  is_conv = 'conv' in path[-1]
  if leaf == 'weight':
    return ('params', path + ('kernel' if is_conv else 'scale',))
  if is_conv:  # These ResNets' convs have no bias and no running stats.
    raise ValueError(f'{key!r}: {kind} ResNet convs have no {leaf!r}')
  collection, name = _TORCH_LEAVES[leaf]
  return (collection, path + (name,))


def _batch_norm(train: bool, sync_bn_axis: str | None, dtype: Any, name: str, **kwargs):
  return nn.BatchNorm(use_running_average=not train, axis_name=sync_bn_axis,
                      momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, name=name, **kwargs)


def _conv_init():
  # torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu').
  return nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class Bottleneck(nn.Module):
  """Bottleneck: 1x1 -> 3x3 (dilation) -> 1x1, + identity/projection.

  The stride sits on the 3x3 conv (v1.5, torchvision/semseg) or, with stride_on='1x1', on the
  first 1x1 conv (v1, Caffe); the projection shortcut is strided either way.
  """
  planes: int
  strides: int = 1
  dilation: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32
  sync_bn_axis: str | None = None
  stride_on: str = '3x3'

  @nn.compact
  def __call__(self, x, train: bool = False):
    _check_choice(self.stride_on, STRIDE_ON, 'stride_on')
    bn = lambda name, **kw: _batch_norm(train, self.sync_bn_axis, self.dtype, name, **kw)
    conv1x1 = lambda features, name, strides=1: Conv(
        features, (1, 1), strides=strides, use_bias=False, dtype=self.dtype,
        kernel_init=_conv_init(), name=name)
    out_features = self.planes * EXPANSION
    stride_1x1, stride_3x3 = ((self.strides, 1) if self.stride_on == '1x1'
                              else (1, self.strides))

    y = nn.relu(bn('bn1')(conv1x1(self.planes, 'conv1', stride_1x1)(x)))
    y = AtrousConv(self.planes, (3, 3), rate=self.dilation, strides=stride_3x3, use_bias=False,
                   dtype=self.dtype, kernel_init=_conv_init(), name='conv2')(y)
    y = nn.relu(bn('bn2')(y))
    y = conv1x1(out_features, 'conv3')(y)
    y = bn('bn3')(y)
    if self.downsample:
      x = bn('downsample_bn')(conv1x1(out_features, 'downsample_conv', self.strides)(x))
    return nn.relu(y + x)


class ResNet(nn.Module):
  """ResNet trunk returning {'stem', 'layer1', ..., 'layer4'} features (NHWC, compute dtype).

  'stem' is the stem's last conv + BN + ReLU (stride 2, before the max-pool); 'layer{i}' are the
  stage outputs. `dilations[i]` is the dilation of stage i+1's blocks: 1 for stage 1; for later
  stages either the previous value (stage strides by 2) or twice it (stride replaced by
  dilation, torchvision's `replace_stride_with_dilation`). `width` scales every channel count
  (tiny test variants). `remat` ('none' | 'block' | 'stage', see jaxseg.models.remat) recomputes
  each bottleneck or each stage in the backward pass instead of keeping its activations; the
  stem is always kept. `stem`, `dilate_first_block`, `stride_on` and `pool_ceil_mode` select
  PSPNet's authors' variants (module docstring); the defaults are torchvision's network.
  """
  stage_sizes: Sequence[int] = STAGE_SIZES[50]
  dilations: Sequence[int] = (1, 1, 1, 1)
  width: float = 1.0
  dtype: Any = jnp.float32
  sync_bn_axis: str | None = None
  remat: str = 'none'
  stem: str = 'torchvision'  # 'torchvision' (7x7) | 'deep' (3x 3x3, semseg/Caffe).
  dilate_first_block: bool = False  # True: a dilated stage's first block has its dilation.
  stride_on: str = '3x3'  # '3x3' (v1.5) | '1x1' (Caffe ResNet v1).
  pool_ceil_mode: bool = False  # True: Caffe's ceil-mode max-pool after the stem.

  def stage_strides_and_dilations(self) -> list[tuple[int, int, int]]:
    """Per stage: (stride, dilation of its first block, dilation of its other blocks)."""
    if len(self.stage_sizes) != 4 or len(self.dilations) != 4:
      raise ValueError(f'ResNet needs 4 stage_sizes and 4 dilations, got stage_sizes='
                       f'{tuple(self.stage_sizes)}, dilations={tuple(self.dilations)}')
    if any(n < 1 for n in self.stage_sizes):
      raise ValueError(f'ResNet stage_sizes must be >= 1, got {tuple(self.stage_sizes)}')
    if self.dilations[0] != 1:
      raise ValueError(f'ResNet dilations[0] must be 1, got {tuple(self.dilations)}')
    if not isinstance(self.dilate_first_block, bool):
      raise ValueError(f'ResNet dilate_first_block must be True or False, got '
                       f'{self.dilate_first_block!r}')
    plan, previous = [(1, 1, 1)], 1
    for d in self.dilations[1:]:
      if d == 2 * previous:
        # Stride replaced by dilation; torchvision's first block keeps the previous dilation,
        # semseg's and Caffe's already use the stage's.
        plan.append((1, d if self.dilate_first_block else previous, d))
      elif d == previous:
        plan.append((2, previous, d))
      else:
        raise ValueError(
            f'ResNet dilations {tuple(self.dilations)}: each stage must keep or double the '
            'previous dilation (torchvision replace_stride_with_dilation)')
      previous = d
    return plan

  def _stem(self, x, train: bool):
    """The stem's convs + BN + ReLU: torchvision's 7x7/2, or the deep stem's three 3x3."""
    bn = lambda name: _batch_norm(train, self.sync_bn_axis, self.dtype, name)
    if self.stem == 'torchvision':
      x = Conv(scaled_channels(STEM_FEATURES, self.width), (7, 7), strides=2,
               padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
               kernel_init=_conv_init(), name='conv1')(x)
      return nn.relu(bn('bn1')(x))
    for i, features in enumerate(DEEP_STEM_FEATURES, 1):
      x = Conv(scaled_channels(features, self.width), (3, 3), strides=2 if i == 1 else 1,
               padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
               kernel_init=_conv_init(), name=f'conv{i}')(x)
      x = nn.relu(bn(f'bn{i}')(x))
    return x

  @nn.compact
  def __call__(self, x, train: bool = False) -> dict[str, Any]:
    plan = self.stage_strides_and_dilations()
    remat.check(self.remat)
    _check_choice(self.stem, STEMS, 'stem')
    _check_choice(self.stride_on, STRIDE_ON, 'stride_on')
    x = self._stem(x.astype(self.dtype), train)
    features = {'stem': x}
    x = ops.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), ceil_mode=bool(self.pool_ceil_mode))
    for i, (num_blocks, (stride, first_dilation, dilation)) in enumerate(
        zip(self.stage_sizes, plan)):
      stage = functools.partial(_stage, index=i + 1, num_blocks=num_blocks, stride=stride,
                                first_dilation=first_dilation, dilation=dilation)
      x = remat.region(stage, self.remat == 'stage')(self, x, train)
      features[f'layer{i + 1}'] = x
    return features


def _stage(module: ResNet, x, train: bool, *, index: int, num_blocks: int, stride: int,
           first_dilation: int, dilation: int):
  """Stage layer{index}'s bottlenecks, created in `module`'s scope (names layer{index}_{j})."""
  block_cls = remat.region_class(Bottleneck, module.remat == 'block')
  planes = scaled_channels(STAGE_PLANES[index - 1], module.width)
  for j in range(num_blocks):
    block_stride = stride if j == 0 else 1
    x = block_cls(
        planes, strides=block_stride, dilation=first_dilation if j == 0 else dilation,
        downsample=j == 0 and (block_stride != 1 or x.shape[-1] != planes * EXPANSION),
        dtype=module.dtype, sync_bn_axis=module.sync_bn_axis, stride_on=module.stride_on,
        name=f'layer{index}_{j}')(x, train)
  return x
