"""VGG16 convolutional trunk (Simonyan & Zisserman 2015), shared by FCN and DeconvNet.

Thirteen 3x3 convolutions (padding 1, ReLU) in five blocks, each block closed by a 2x2 stride-2 max
pool in ceil mode (Caffe's pooling, as the FCN and DeconvNet reference nets use): an odd map keeps
its last row/column, so pool{i} has ceil(H / 2**i) rows for padding 1. On sizes divisible by 32
this is identical to torchvision's floor-mode `MaxPool2d(2, 2)`. The optional BatchNorm after
every convolution (bn{b}_{l}, before the ReLU) is DeconvNet's; its pooling returns switches.

Layer names map one-to-one to torchvision's `vgg16().features` / `vgg16_bn().features` (indices in
`TORCHVISION_VGG16_CONV_INDICES` / `TORCHVISION_VGG16_BN_INDICES`):

  conv1_1 0   conv1_2 2 | conv2_1 5   conv2_2 7  | conv3_1 10  conv3_2 12  conv3_3 14 |
  conv4_1 17  conv4_2 19  conv4_3 21 | conv5_1 24  conv5_2 26  conv5_3 28   (pools at 4,9,16,23,30)

torchvision's OIHW conv weight maps to the Flax HWIO kernel by `w.transpose(2, 3, 1, 0)`;
vgg16's classifier.0 (25088 -> 4096) and classifier.3 (4096 -> 4096) are the fc6 (7x7) / fc7 (1x1)
convolutions of the FCN/DeconvNet heads (reshape 4096x512x7x7, then the same transpose).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import ops
from jaxseg.models import remat

Array = jax.Array

# Output channels of each conv, per block.
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
CONV_NAMES: tuple[str, ...] = tuple(
    f'conv{b}_{l}' for b, block in enumerate(VGG16_BLOCKS, 1) for l in range(1, len(block) + 1))
# torchvision vgg16().features index of each conv (ReLUs and pools fill the gaps).
TORCHVISION_VGG16_CONV_INDICES: dict[str, int] = dict(
    zip(CONV_NAMES, (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)))
# torchvision vgg16_bn().features (conv index, BatchNorm index) of each conv / bn{b}_{l} pair.
TORCHVISION_VGG16_BN_INDICES: dict[str, tuple[int, int]] = dict(
    zip(CONV_NAMES, ((i, i + 1) for i in (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40))))

# torchvision's VGG init: kaiming normal (fan_out, ReLU) convs, zero bias, N(0, 0.01) linears.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
fc_init = nn.initializers.normal(0.01)


def scale_channels(channels: int, width: float) -> int:
  """Channels of a layer under a width multiplier: round(channels * width), at least 1."""
  if not width > 0:
    raise ValueError(f'width (channel multiplier) must be > 0, got {width!r}')
  return max(1, int(round(channels * width)))


def max_pool_ceil(x: Array) -> Array:
  """2x2 stride-2 max pool in Caffe's ceil mode: odd maps are padded at the end with -inf."""
  return ops.max_pool(x, (2, 2), (2, 2), ((0, x.shape[1] % 2), (0, x.shape[2] % 2)))


def batch_norm(train: bool, axis_name: str | None, dtype: Any, name: str,
               bias_init: float = 0.0) -> nn.BatchNorm:
  """The project's BatchNorm (momentum 0.9, eps 1e-5; cross-replica when axis_name is set)."""
  return nn.BatchNorm(use_running_average=not train, axis_name=axis_name, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, bias_init=nn.initializers.constant(bias_init),
                      name=name)


class VGG16(nn.Module):
  """VGG16 conv1_1..conv5_3 with ceil-mode 2x2 pools; returns every block's features.

  Attributes:
    width: channel multiplier (1.0 = VGG16; e.g. 1/16 for tests).
    batch_norm: BatchNorm (bn{b}_{l}) after each conv, before the ReLU (DeconvNet).
    switches: pool with `ops.max_pool_with_argmax` and also return the switches (DeconvNet).
    first_padding: padding of conv1_1 (FCN's Caffe geometry uses 100).
    bn_bias_init: BatchNorm shift init (DeconvNet's prototxt: 0.001).
    dtype: compute dtype (parameters stay float32).
    sync_bn_axis: mapped axis name for cross-replica BatchNorm; None = per-device statistics.
    remat: 'none', 'block' (recompute each block's convs in the backward pass) or 'stage'
      (each block: its convs and pool); see jaxseg.models.remat.
  """
  width: float = 1.0
  batch_norm: bool = False
  switches: bool = False
  first_padding: int = 1
  bn_bias_init: float = 0.0
  dtype: Any = jnp.float32
  sync_bn_axis: str | None = None
  remat: str = 'none'

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
    """Returns {'block{b}': pre-pool activation, 'pool{b}': pooled, ['switches{b}': int32]}."""
    remat.check(self.remat)
    x = x.astype(jnp.dtype(self.dtype))
    features = {}
    for b in range(1, len(VGG16_BLOCKS) + 1):
      block = remat.region(functools.partial(_block, b=b), self.remat == 'stage')
      features[f'block{b}'], x, switches = block(self, x, train)
      features[f'pool{b}'] = x
      if switches is not None:
        features[f'switches{b}'] = switches
    return features


def _block(module: VGG16, x: Array, train: bool, *, b: int):
  """VGG block b in `module`'s scope: its convs, then the pool -> (block, pool, switches)."""
  x = remat.region(functools.partial(_convs, b=b), module.remat == 'block')(module, x, train)
  if module.switches:
    pooled, switches = ops.max_pool_with_argmax(x, (2, 2), (2, 2), padding='VALID',
                                                ceil_mode=True)
    return x, pooled, switches
  return x, max_pool_ceil(x), None


def _convs(module: VGG16, x: Array, train: bool, *, b: int) -> Array:
  """conv{b}_{l} (+ bn{b}_{l}) + ReLU for each l of block b, in `module`'s scope."""
  dtype = jnp.dtype(module.dtype)
  for l, channels in enumerate(VGG16_BLOCKS[b - 1], 1):
    pad = module.first_padding if (b, l) == (1, 1) else 1
    x = ops.Conv(scale_channels(channels, module.width), (3, 3),
                 padding=((pad, pad), (pad, pad)), dtype=dtype, kernel_init=conv_init,
                 name=f'conv{b}_{l}')(x)
    if module.batch_norm:
      x = batch_norm(train, module.sync_bn_axis, dtype, f'bn{b}_{l}', module.bn_bias_init)(x)
    x = nn.relu(x)
  return x
