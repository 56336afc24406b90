"""PSPNet (Zhao et al., CVPR 2017): dilated ResNet + pyramid pooling module + auxiliary head.

Follows the authors' PyTorch re-implementation (github.com/hszhao/semseg, model/pspnet.py) on
one of three ResNet variants (`backbone`):

  image ─ ResNet-50/101, layer3 dilation 2, layer4 dilation 4 (output stride 8)
            ├─ layer4 (2048) ─ PPM: for bins 1, 2, 3, 6: adaptive avg-pool ─ 1x1 conv 512
            │                  ─ BN ─ ReLU ─ bilinear upsample to the feature size
            │                  ─ concat with layer4 (2048 + 4 x 512 = 4096 channels)
            │                  ─ 3x3 conv 512 ─ BN ─ ReLU ─ dropout 0.1 ─ 1x1 classifier
            └─ layer3 (1024) ─ aux: 3x3 conv 256 ─ BN ─ ReLU ─ dropout 0.1 ─ 1x1 classifier
  both upsampled bilinearly to the input size; aux logits returned in train mode only.

Bilinear resizing uses align_corners=True, as semseg (F.interpolate(..., align_corners=True)) and
the original Caffe PSPNet's Interp layer do; with it, feature corners land exactly on input corners
for the "8k+1" crop sizes PSPNet uses (473 -> 60). Dropout is channel-wise (torch's Dropout2d, as
semseg). Adaptive pooling and resizing are written as per-axis matrices applied with einsum: exact,
static-shape, and cheap to differentiate.

`backbone` picks the ResNet (resnet.ResNet fields, see BACKBONES):
  'torchvision'  torchvision's resnet50/101 (7x7 stem; a dilated stage's first block keeps the
                 previous dilation, as replace_stride_with_dilation); ImageNet weights from
                 torchvision.
  'semseg'       semseg's model/resnet.py deep_base + model/pspnet.py: three 3x3 stem convs,
                 every conv2 of layer3/layer4 dilated (the first block's too), stride on the 3x3
                 conv; semseg's resnet*_v2.pth and trained checkpoints (weights/semseg.py).
  'caffe'        hszhao/PSPNet's Caffe prototxts: the deep stem, every block of conv4_x/conv5_x
                 dilated, ceil-mode pool1; the stride of conv3_1 sits on the 1x1 reduce conv in
                 pspnet50_ADE20K_473 but on the 3x3 conv in pspnet101_VOC2012_473 and
                 pspnet101_cityscapes_713, so it follows `depth` (CAFFE_STRIDE_ON).

Parameter tree: 'backbone' (resnet.ResNet, torchvision names), 'ppm'/bin{1,2,3,6}/{conv,bn},
'cls'/conv_bn/{conv,bn}, 'cls'/classifier, and 'aux' likewise. The aux head's parameters exist
however the model is initialised (train or eval), so checkpoints do not depend on it.
`remat` rematerialises the backbone's bottlenecks or stages (jaxseg.models.remat); the heads work
on stride-8 maps and are always kept.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxseg.models import remat, resnet
from jaxseg.ops import Conv

PSP_BINS = (1, 2, 3, 6)
PSP_DILATIONS = (1, 1, 2, 4)
DEFAULT_DROPOUT = 0.1  # semseg's Dropout2d(p=0.1) in both heads.
PPM_FEATURES = 512  # 2048 / len(bins), as semseg's reduction_dim.
HEAD_FEATURES = 512
AUX_FEATURES = 256
# Where the released Caffe models put conv3_1's stride, per depth (see the module docstring).
CAFFE_STRIDE_ON = {50: '1x1', 101: '3x3'}
BACKBONES = ('torchvision', 'semseg', 'caffe')


def backbone_fields(backbone: str, depth: int) -> dict[str, Any]:
  """The resnet.ResNet fields of a PSPNet `backbone` variant (module docstring)."""
  if backbone == 'torchvision':
    return {}
  if backbone == 'semseg':
    return dict(stem='deep', dilate_first_block=True, stride_on='3x3')
  if backbone == 'caffe':
    if depth not in CAFFE_STRIDE_ON:
      raise ValueError(f'PSPNet backbone=\'caffe\' exists for depth {sorted(CAFFE_STRIDE_ON)} '
                       f'(the released Caffe models), got depth={depth}')
    return dict(stem='deep', dilate_first_block=True, stride_on=CAFFE_STRIDE_ON[depth],
                pool_ceil_mode=True)
  raise ValueError(f'PSPNet backbone (config.model.backbone) must be one of '
                   f'{", ".join(map(repr, BACKBONES))}; got {backbone!r}')


@functools.lru_cache(maxsize=None)
def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) averaging matrix of torch.nn.AdaptiveAvgPool over one axis.

  Bin i averages [floor(i * in / out), ceil((i + 1) * in / out)); bins may overlap.
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f'adaptive pooling needs positive sizes, got {in_size} -> {out_size}')
  matrix = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # Ceiling division.
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


@functools.lru_cache(maxsize=None)
def bilinear_matrix(in_size: int, out_size: int, align_corners: bool = True) -> np.ndarray:
  """(out_size, in_size) linear-interpolation matrix of torch's interpolate(mode='bilinear').

  align_corners=True maps output i to input i * (in - 1) / (out - 1); False uses half-pixel
  centres (clamped at the border), both as torch does.
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f'resizing needs positive sizes, got {in_size} -> {out_size}')
  out = np.arange(out_size, dtype=np.float64)
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = out * scale
  else:
    src = np.maximum((out + 0.5) * (in_size / out_size) - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  matrix = np.zeros((out_size, in_size), np.float64)
  np.add.at(matrix, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(matrix, (np.arange(out_size), hi), frac)
  return matrix.astype(np.float32)


def _apply_per_axis(x, rows: np.ndarray, cols: np.ndarray):
  """x (N, H, W, C) -> (N, h, w, C) with rows (h, H) and cols (w, W), one axis at a time."""
  x = jnp.einsum('hH,nHWc->nhWc', jnp.asarray(rows, x.dtype), x)
  return jnp.einsum('wW,nhWc->nhwc', jnp.asarray(cols, x.dtype), x)


def adaptive_avg_pool(x, output_size: int | tuple[int, int]):
  """torch.nn.functional.adaptive_avg_pool2d for NHWC x; any input size."""
  oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
  _, h, w, _ = x.shape
  return _apply_per_axis(x, adaptive_pool_matrix(h, oh), adaptive_pool_matrix(w, ow))


def resize_bilinear(x, size: tuple[int, int], align_corners: bool = True):
  """torch.nn.functional.interpolate(mode='bilinear') for NHWC x to size (H, W)."""
  _, h, w, _ = x.shape
  if (h, w) == tuple(size):
    return x
  return _apply_per_axis(x, bilinear_matrix(h, size[0], align_corners),
                         bilinear_matrix(w, size[1], align_corners))


class _ConvBNReLU(nn.Module):
  """Conv (no bias) + BatchNorm + ReLU, the unit of every PSPNet head."""
  features: int
  kernel_size: int
  dtype: Any = jnp.float32
  sync_bn_axis: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    k = self.kernel_size
    x = Conv(self.features, (k, k), padding=((k // 2, k // 2),) * 2, use_bias=False,
                dtype=self.dtype, name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, axis_name=self.sync_bn_axis,
                     momentum=resnet.BN_MOMENTUM, epsilon=resnet.BN_EPSILON, dtype=self.dtype,
                     name='bn')(x)
    return nn.relu(x)


class PyramidPooling(nn.Module):
  """PPM: per bin, adaptive avg-pool -> 1x1 conv + BN + ReLU -> upsample; concat with the input."""
  features: int
  bins: Sequence[int] = PSP_BINS
  dtype: Any = jnp.float32
  sync_bn_axis: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    size = x.shape[1:3]
    branches = [x]
    for b in self.bins:
      y = adaptive_avg_pool(x, b)
      y = _ConvBNReLU(self.features, 1, self.dtype, self.sync_bn_axis, name=f'bin{b}')(y, train)
      branches.append(resize_bilinear(y, size, align_corners=True))
    return jnp.concatenate(branches, axis=-1)


class _Head(nn.Module):
  """3x3 conv + BN + ReLU + channel dropout + 1x1 classifier."""
  features: int
  num_classes: int
  dropout_rate: float
  dtype: Any = jnp.float32
  sync_bn_axis: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = _ConvBNReLU(self.features, 3, self.dtype, self.sync_bn_axis, name='conv_bn')(x, train)
    # Dropout2d: one mask per (example, channel), broadcast over H and W.
    x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(x)
    return Conv(self.num_classes, (1, 1), dtype=self.dtype, name='classifier')(x)


class PSPNet(nn.Module):
  """PSPNet-50/101. Returns logits (N, H, W, num_classes) float32; (logits, aux) when training."""
  num_classes: int
  depth: int = 50
  width: float = 1.0
  dtype: Any = jnp.float32
  sync_bn_axis: str | None = None
  dropout_rate: float | None = None  # None (or < 0): the paper's 0.1.
  stage_sizes: Sequence[int] | None = None  # Overrides resnet.STAGE_SIZES[depth] (tiny variants).
  bins: Sequence[int] = PSP_BINS
  remat: str = 'none'  # Backbone rematerialisation: 'none' | 'block' | 'stage' (models.remat).
  backbone: str = 'torchvision'  # 'torchvision' | 'semseg' | 'caffe' (module docstring).

  def _check(self, x) -> float:
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f'PSPNet num_classes must be a positive int, got {self.num_classes!r}')
    if self.stage_sizes is None and self.depth not in resnet.STAGE_SIZES:
      raise ValueError(f'PSPNet depth must be one of {sorted(resnet.STAGE_SIZES)}, '
                       f'got {self.depth}')
    remat.check(self.remat)
    backbone_fields(self.backbone, self.depth)
    if x.ndim != 4:
      raise ValueError(f'PSPNet expects NHWC images (N, H, W, C), got shape {x.shape}')
    no_value = self.dropout_rate is None or self.dropout_rate < 0
    rate = DEFAULT_DROPOUT if no_value else self.dropout_rate
    if not 0 <= rate < 1:
      raise ValueError(f'PSPNet dropout_rate must be in [0, 1) (or None for 0.1), got {rate}')
    return rate

  @nn.compact
  def __call__(self, x, train: bool = False):
    rate = self._check(x)
    stage_sizes = self.stage_sizes or resnet.STAGE_SIZES[self.depth]
    size = x.shape[1:3]
    features = resnet.ResNet(stage_sizes, PSP_DILATIONS, self.width, self.dtype,
                             self.sync_bn_axis, self.remat, name='backbone',
                             **backbone_fields(self.backbone, self.depth))(x, train)

    y = PyramidPooling(resnet.scaled_channels(PPM_FEATURES, self.width), self.bins, self.dtype,
                       self.sync_bn_axis, name='ppm')(features['layer4'], train)
    y = _Head(resnet.scaled_channels(HEAD_FEATURES, self.width), self.num_classes, rate,
              self.dtype, self.sync_bn_axis, name='cls')(y, train)
    logits = resize_bilinear(y.astype(jnp.float32), size)
    # The aux head is built at init even in eval mode, so the parameter tree never depends on
    # the mode used for initialisation; at inference it is skipped.
    if not (train or self.is_initializing()):
      return logits
    aux = _Head(resnet.scaled_channels(AUX_FEATURES, self.width), self.num_classes, rate,
                self.dtype, self.sync_bn_axis, name='aux')(features['layer3'], train)
    aux = resize_bilinear(aux.astype(jnp.float32), size)
    return (logits, aux) if train else logits
