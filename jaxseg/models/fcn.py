"""FCN-32s / FCN-16s / FCN-8s (Long, Shelhamer & Darrell 2015) on the VGG16 trunk.

Follows the reference `voc-fcn{32,16,8}s/net.py` of shelhamer/fcn.berkeleyvision.org:

  VGG16 conv1_1..pool5 -> fc6 (7x7, 4096) ReLU dropout -> fc7 (1x1, 4096) ReLU dropout
  -> score_fr (1x1, C)
  32s: upscore (x32: k64 s32)                                            -> crop to the input
  16s: upscore2 (x2: k4 s2) + score_pool4 -> upscore16 (x16: k32 s16)    -> crop to the input
   8s: upscore2 (x2) + score_pool4 -> upscore_pool4 (x2: k4 s2) + score_pool3
       -> upscore8 (x8: k16 s8)                                          -> crop to the input

Initialisation as the reference: the upsampling layers are transposed convolutions without bias
whose (C, C) kernel is bilinear interpolation on the diagonal (surgery.interp), and the class
scoring layers score_fr / score_pool4 / score_pool3 start at zero (the paper: "we zero-initialize
the class scoring layer"; the skip scores are zero so that adding them leaves the coarser net's
prediction unchanged at first). All upsampling kernels are parameters; the reference keeps them
fixed (lr_mult 0), which is the optimiser's business (config.model.learn_upsampling, jaxseg.optim).

At-once FCN-8s (voc-fcn8s-atonce/net.py) multiplies pool4 by 0.01 and pool3 by 0.0001 (fixed
Scale layers) before their score layers, so the skips do not swamp the coarse scores while all
layers train together: `skip_scales=(0.01, 0.0001)`. The staged nets use (1, 1).

Upsampling semantics. Caffe's Deconvolution (= torch `conv_transpose2d`, padding 0) of stride s
and kernel k maps n cells to (n - 1) * s + k. `ops.ConvTranspose` computes exactly that, with the
parameters of `nn.ConvTranspose(padding='VALID', transpose_kernel=True)` (same size and numbers):
its (kh, kw, out, in) kernel is torch's (in, out, kh, kw) weight transposed by (2, 3, 1, 0) -- no
spatial flip. (With Flax's default transpose_kernel=False the kernel would have to be flipped; the
symmetric bilinear init hides the difference, imported or learned kernels would not.) On the CPU
it multiplies each input cell by the kernel and adds the products into place, instead of
convolving the zero-dilated input (which costs s^2 times more).

Geometry (`geometry` field); both return logits of exactly the input's H x W for any size:
- 'caffe' (the paper): conv1_1 has padding 100 and fc6 is a valid 7x7 conv, so the coarse maps
  overhang the image; each skip score and the final score are cropped with the reference's
  offsets (Caffe coord_map): score_pool4c at 5 and score_pool3c at 9 (to the upsampled map's
  size), final crop at 19 (32s) / 27 (16s) / 31 (8s). Any H, W >= 1 works (the padding keeps pool5
  >= 7x7), and the reference's sizes always leave room for these crops.
- 'same': padding 1 on conv1_1 and SAME padding on fc6, so with the ceil-mode pools the stride-s
  map has ceil(H / s) cells and cell i covers input pixels [s*i, s*i + s). An x-f upsampling
  (k = 2f, bilinear peak at f*i + f - 1/2) of n cells gives (n + 1) * f cells, where output cell o
  sits at finer-grid position o - f / 2. So every upsampled map is cropped at offset f / 2
  (upscore2 / upscore_pool4: 1, upscore8: 4, upscore16: 8, upscore: 16) to the size of the finer
  map it is added to (pool4 / pool3 scores, uncropped) or, last, to H x W. Exact and symmetric:
  on sizes divisible by 32 the net commutes with flips when its kernels are symmetric.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import ops
from jaxseg.models import remat
from jaxseg.models.vgg import VGG16, fc_init, scale_channels

Array = jax.Array

VARIANTS = ('32s', '16s', '8s')
GEOMETRIES = ('caffe', 'same')
# Reference crop offsets (voc-fcn*s, Caffe coord_map) for the 'caffe' geometry.
CAFFE_OFFSETS = {'score_pool4c': 5, 'score_pool3c': 9, '32s': 19, '16s': 27, '8s': 31}
PAPER_DROPOUT = 0.5


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
  """(size, size, channels, channels) kernel: bilinear upsampling per channel (FCN surgery.interp).

  Factor (size + 1) // 2, centre factor - 1 (odd size) or factor - 0.5 (even); the 2D filter is the
  outer product of the 1D tents, placed on the channel diagonal (no cross-channel mixing).
  """
  factor = (size + 1) // 2
  center = factor - 1 if size % 2 == 1 else factor - 0.5
  tent = 1 - np.abs(np.arange(size) - center) / factor
  kernel = np.zeros((size, size, channels, channels), np.float32)
  kernel[:, :, np.arange(channels), np.arange(channels)] = np.outer(tent, tent)[:, :, None]
  return kernel


def bilinear_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
  """Flax initializer for a square (k, k, C, C) ConvTranspose kernel: bilinear on the diagonal."""
  del key
  k, k2, c_out, c_in = shape
  if k != k2 or c_out != c_in:
    raise ValueError(f'bilinear_init needs a square kernel with equal in/out channels, got {shape}')
  return jnp.asarray(bilinear_kernel(k, c_in), dtype)


def crop(x: Array, offset: int, size: Sequence[int]) -> Array:
  """x[:, offset:offset + h, offset:offset + w] (Caffe's Crop layer on H and W)."""
  h, w = size
  if x.shape[1] < offset + h or x.shape[2] < offset + w:
    raise ValueError(f'crop: map {x.shape[1:3]} too small for offset {offset} and size {(h, w)}')
  return x[:, offset:offset + h, offset:offset + w]


class FCN(nn.Module):
  """FCN-32s/16s/8s; returns float32 logits (N, H, W, num_classes) at the input size.

  Attributes:
    num_classes: output classes.
    variant: '32s', '16s' or '8s'.
    geometry: 'caffe' (pad 100 + reference crops) or 'same' (see the module docstring).
    width: channel multiplier of the VGG16 trunk and fc6/fc7 (1.0 = the paper).
    dtype: compute dtype; parameters are float32, logits are returned as float32.
    sync_bn_axis: unused (FCN has no BatchNorm); kept for the common model interface.
    dropout_rate: dropout after fc6 and fc7; None (or < 0) = the paper's 0.5.
    remat: 'none', 'block' (recompute each VGG block's convs in the backward pass) or 'stage'
      (also its pool); see jaxseg.models.remat. The heads, on stride >= 8 maps, are always kept.
    skip_scales: (pool4, pool3) multipliers before score_pool4 / score_pool3 (at-once FCN-8s:
      (0.01, 0.0001)); unused by FCN-32s.
  """
  num_classes: int
  variant: str = '8s'
  geometry: str = 'same'
  width: float = 1.0
  dtype: Any = jnp.float32
  sync_bn_axis: str | None = None
  dropout_rate: float | None = None
  remat: str = 'none'
  skip_scales: Sequence[float] = (1.0, 1.0)  # pool4, pool3 multipliers before scoring.

  def _check(self, x: Array) -> float:
    remat.check(self.remat)
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f'FCN num_classes must be a positive int, got {self.num_classes!r}')
    if self.variant not in VARIANTS:
      raise ValueError(f'FCN variant must be one of {VARIANTS}, got {self.variant!r}')
    if self.geometry not in GEOMETRIES:
      raise ValueError(f'FCN geometry must be one of {GEOMETRIES}, got {self.geometry!r}')
    if len(self.skip_scales) != 2 or not all(s > 0 for s in self.skip_scales):
      raise ValueError(f'FCN skip_scales must be two positive numbers (pool4, pool3), got '
                       f'{tuple(self.skip_scales)}')
    if x.ndim != 4:
      raise ValueError(f'FCN expects NHWC images (N, H, W, C), got shape {x.shape}')
    rate = self.dropout_rate
    if rate is None or rate < 0:  # The config's -1 also means 'the paper's value'.
      rate = PAPER_DROPOUT
    if not 0 <= rate < 1:
      raise ValueError(f'FCN dropout_rate must be in [0, 1) (or None for 0.5), got {rate}')
    return rate

  def _upsample(self, x: Array, factor: int, name: str) -> Array:
    return ops.ConvTranspose(self.num_classes, (2 * factor, 2 * factor), strides=(factor, factor),
                             padding=0, use_bias=False, kernel_init=bilinear_init,
                             dtype=jnp.dtype(self.dtype), name=name)(x)

  def _score(self, x: Array, name: str) -> Array:
    return ops.Conv(self.num_classes, (1, 1), dtype=jnp.dtype(self.dtype),
                    kernel_init=nn.initializers.zeros, name=name)(x)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    rate = self._check(x)
    dtype = jnp.dtype(self.dtype)
    caffe = self.geometry == 'caffe'
    size = x.shape[1:3]
    feats = VGG16(width=self.width, first_padding=100 if caffe else 1, dtype=dtype,
                  remat=self.remat, name='backbone')(x, train)

    h = feats['pool5']
    h = ops.Conv(scale_channels(4096, self.width), (7, 7), padding='VALID' if caffe else 'SAME',
                 dtype=dtype, kernel_init=fc_init, name='fc6')(h)
    h = nn.Dropout(rate, deterministic=not train)(nn.relu(h))
    h = ops.Conv(scale_channels(4096, self.width), (1, 1), dtype=dtype, kernel_init=fc_init,
                 name='fc7')(h)
    h = nn.Dropout(rate, deterministic=not train)(nn.relu(h))
    score = self._score(h, 'score_fr')

    scale4, scale3 = (float(v) for v in self.skip_scales)
    if self.variant == '32s':
      up = self._upsample(score, 32, 'upscore')
      return crop(up, CAFFE_OFFSETS['32s'] if caffe else 16, size).astype(jnp.float32)

    # Fuse pool4 (x2 from stride 32 to 16).
    up = self._upsample(score, 2, 'upscore2')
    pool4 = feats['pool4'] if scale4 == 1 else feats['pool4'] * scale4
    skip = self._score(pool4, 'score_pool4')
    if caffe:
      score = up + crop(skip, CAFFE_OFFSETS['score_pool4c'], up.shape[1:3])
    else:
      score = crop(up, 1, skip.shape[1:3]) + skip
    if self.variant == '16s':
      up = self._upsample(score, 16, 'upscore16')
      return crop(up, CAFFE_OFFSETS['16s'] if caffe else 8, size).astype(jnp.float32)

    # Fuse pool3 (x2 from stride 16 to 8).
    up = self._upsample(score, 2, 'upscore_pool4')
    pool3 = feats['pool3'] if scale3 == 1 else feats['pool3'] * scale3
    skip = self._score(pool3, 'score_pool3')
    if caffe:
      score = up + crop(skip, CAFFE_OFFSETS['score_pool3c'], up.shape[1:3])
    else:
      score = crop(up, 1, skip.shape[1:3]) + skip
    up = self._upsample(score, 8, 'upscore8')
    return crop(up, CAFFE_OFFSETS['8s'] if caffe else 4, size).astype(jnp.float32)
