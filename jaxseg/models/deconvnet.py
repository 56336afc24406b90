"""DeconvNet (Noh, Hong & Han 2015): VGG16-BN encoder, mirrored unpool + deconvolution decoder.

Follows HyeonwooNoh/DeconvNet's `stage_2_train.prototxt` / `DeconvNet_inference_deploy.prototxt`:

  VGG16 conv{b}_{l} + bn{b}_{l} + ReLU, 2x2/2 max pools that keep their switches (pool{b}_mask)
  fc6 7x7 valid conv 4096 + bnfc6 + ReLU, fc7 1x1 4096 + bnfc7 + ReLU
  fc6_deconv 7x7 transposed conv 512 + BN + ReLU                       (1x1 -> 7x7 for 224 input)
  unpool5 -> deconv5_1..5_3 (512, 512, 512)      each 3x3 transposed conv (pad 1) + debn + ReLU
  unpool4 -> deconv4_1..4_3 (512, 512, 256)
  unpool3 -> deconv3_1..3_3 (256, 256, 128)
  unpool2 -> deconv2_1..2_2 (128, 64)
  unpool1 -> deconv1_1..1_2 (64, 64)
  seg_score 1x1 conv (num_classes)

Reference names with '-' as '_' ('fc6-deconv' -> fc6_deconv, 'seg-score-voc' -> seg_score).
Initialisation as the prototxt: decoder and score weights N(0, 0.01), bias 0; every BatchNorm
scale 1, shift 0.001. No dropout in the paper (BatchNorm instead); dropout_rate > 0 adds it after
fc6 and fc7.

Input sizes. fc6 is a valid 7x7 conv, so pool5 must be at least 7x7; pooling is in Caffe's ceil
mode (pool{b} has ceil(H / 2**b) rows), so the input needs H, W >= 193 (pool5 = ceil(H / 32) >= 7;
the paper trains on 224 crops: pool5 7x7 -> fc6 1x1 -> fc6_deconv 7x7). Smaller inputs raise a
ValueError. Larger pool5 maps work too: fc6 gives (p - 6)^2 cells and fc6_deconv restores p x p.
Sizes not divisible by 32 work because each unpool{b} places values at the recorded switches
into a map of the recorded pre-pool size of block b (the reference hard-codes unpool_size for
224 inputs), so the logits always have the input's H x W.

The 3x3 'deconvolutions' are Caffe Deconvolution layers (stride 1, pad 1) = torch
`conv_transpose2d(padding=1)`: `ops.ConvTranspose(padding=p)`, whose parameters and numbers are
`nn.ConvTranspose(transpose_kernel=True)`'s with explicit padding k - 1 - p on each side (see
`caffe_deconv_padding`), kernel (kh, kw, out, in) = torch weight (in, out, kh, kw) transposed by
(2, 3, 1, 0). fc6_deconv (7x7 on a mostly-padding 4x4 map) runs as x @ kernel with the products
added into place on the CPU: as a convolution XLA:CPU took about a minute for it.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import ops
from jaxseg.models import remat
from jaxseg.models.vgg import VGG16, batch_norm, fc_init, scale_channels

Array = jax.Array

# (block, output channels of deconv{block}_1, _2, ...), from pool5's side to pool1's.
DECODER: tuple[tuple[int, tuple[int, ...]], ...] = (
    (5, (512, 512, 512)), (4, (512, 512, 256)), (3, (256, 256, 128)), (2, (128, 64)), (1, (64, 64)))
MIN_POOL5 = 7  # fc6 is a valid 7x7 convolution.
BN_SHIFT_INIT = 0.001  # bn_param shift_filler of the prototxt.
deconv_init = nn.initializers.normal(0.01)  # weight_filler gaussian std 0.01.


def caffe_deconv_padding(kernel: int, pad: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Flax ConvTranspose explicit padding equal to Caffe/torch deconvolution `pad` (stride 1)."""
  p = kernel - 1 - pad
  return ((p, p), (p, p))


def min_input_size() -> int:
  """Smallest H (and W) whose ceil-mode pool5 is at least MIN_POOL5 (193)."""
  return 32 * (MIN_POOL5 - 1) + 1


def _pool5_size(n: int) -> int:
  for _ in range(5):
    n = -(-n // 2)
  return n


class DeconvNet(nn.Module):
  """DeconvNet; returns float32 logits (N, H, W, num_classes) for H, W >= 193.

  Attributes:
    num_classes: output classes.
    width: channel multiplier of every layer (1.0 = the paper).
    dtype: compute dtype; parameters are float32, logits are returned as float32.
    sync_bn_axis: mapped axis name for cross-replica BatchNorm; None = per-device statistics.
    dropout_rate: dropout after fc6 and fc7; None (or < 0) = the paper's none.
    remat: 'none', 'block' (recompute the convs of each VGG block and the deconvs of each decoder
      block in the backward pass) or 'stage' (also their pool / unpool); see jaxseg.models.remat.
  """
  num_classes: int
  width: float = 1.0
  dtype: Any = jnp.float32
  sync_bn_axis: str | None = None
  dropout_rate: float | None = None
  remat: str = 'none'

  def _check(self, x: Array) -> float:
    remat.check(self.remat)
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f'DeconvNet num_classes must be a positive int, got {self.num_classes!r}')
    if x.ndim != 4:
      raise ValueError(f'DeconvNet expects NHWC images (N, H, W, C), got shape {x.shape}')
    if min(_pool5_size(x.shape[1]), _pool5_size(x.shape[2])) < MIN_POOL5:
      raise ValueError(
          f'DeconvNet needs input height and width >= {min_input_size()} so that pool5 is at '
          f'least {MIN_POOL5}x{MIN_POOL5} (fc6 is a valid 7x7 conv; the paper uses 224x224); got '
          f'{x.shape[1]}x{x.shape[2]}. Resize or pad the input (e.g. data.crop_size).')
    rate = 0.0 if self.dropout_rate is None or self.dropout_rate < 0 else self.dropout_rate
    if not 0 <= rate < 1:
      raise ValueError(f'DeconvNet dropout_rate must be in [0, 1) (or None for none), got {rate}')
    return rate

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    rate = self._check(x)
    dtype = jnp.dtype(self.dtype)
    feats = VGG16(width=self.width, batch_norm=True, switches=True, bn_bias_init=BN_SHIFT_INIT,
                  dtype=dtype, sync_bn_axis=self.sync_bn_axis, remat=self.remat,
                  name='backbone')(x, train)

    h = ops.Conv(scale_channels(4096, self.width), (7, 7), padding='VALID', dtype=dtype,
                 kernel_init=fc_init, name='fc6')(feats['pool5'])
    h = nn.Dropout(rate, deterministic=not train)(nn.relu(_bn(self, train, 'bnfc6')(h)))
    h = ops.Conv(scale_channels(4096, self.width), (1, 1), dtype=dtype, kernel_init=fc_init,
                 name='fc7')(h)
    h = nn.Dropout(rate, deterministic=not train)(nn.relu(_bn(self, train, 'bnfc7')(h)))
    h = nn.relu(_bn(self, train, 'fc6_deconv_bn')(_deconv(self, h, 512, 7, 0, 'fc6_deconv')))

    for block, channels in DECODER:
      stage = functools.partial(_decoder_block, block=block, channels=channels,
                                size=feats[f'block{block}'].shape[1:3])
      h = remat.region(stage, self.remat == 'stage')(self, (h, feats[f'switches{block}']), train)

    logits = ops.Conv(self.num_classes, (1, 1), dtype=dtype, kernel_init=deconv_init,
                      name='seg_score')(h)
    return logits.astype(jnp.float32)


def _bn(module: DeconvNet, train: bool, name: str) -> nn.BatchNorm:
  return batch_norm(train, module.sync_bn_axis, jnp.dtype(module.dtype), name, BN_SHIFT_INIT)


def _deconv(module: DeconvNet, h: Array, channels: int, kernel: int, pad: int, name: str) -> Array:
  return ops.ConvTranspose(scale_channels(channels, module.width), (kernel, kernel), padding=pad,
                           kernel_init=deconv_init, dtype=jnp.dtype(module.dtype), name=name)(h)


def _decoder_block(module: DeconvNet, inputs: tuple[Array, Array], train: bool, *, block: int,
                   channels: tuple[int, ...], size: tuple[int, int]) -> Array:
  """unpool{block} of (h, switches) to size, then its deconvs, in `module`'s scope."""
  h, switches = inputs
  h = ops.max_unpool(h, switches, size)
  deconvs = functools.partial(_deconvs, block=block, channels=channels)
  return remat.region(deconvs, module.remat == 'block')(module, h, train)


def _deconvs(module: DeconvNet, h: Array, train: bool, *, block: int,
             channels: tuple[int, ...]) -> Array:
  """deconv{block}_{l} (3x3, pad 1) + debn{block}_{l} + ReLU for each l."""
  for l, c in enumerate(channels, 1):
    h = _deconv(module, h, c, 3, 1, f'deconv{block}_{l}')
    h = nn.relu(_bn(module, train, f'debn{block}_{l}')(h))
  return h
