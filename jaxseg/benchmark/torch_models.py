"""The jaxseg networks in PyTorch eager, layer for layer: the torch side of the benchmark.

What a user would otherwise run: torchvision backbones (`vgg16().features`-style VGG16 / VGG16-BN
built by torchvision's `make_layers`, torchvision `Bottleneck` blocks for ResNet) with the heads
written in torch, layer for layer the same computation as the Flax modules (same channels, kernel
sizes, padding, strides, dilations, pooling mode, crops and resizing), so both frameworks do the
same work:

- `FCN(variant, geometry)`: VGG16 (ceil-mode pools) -> fc6 7x7 -> fc7 1x1 -> score_fr, skip scores,
  bilinear-initialised `ConvTranspose2d` upsampling and the crops of models/fcn.py.
- `DeconvNet`: VGG16-BN whose pools return indices, fc6/fc7 (+BN), fc6_deconv, and per block
  `F.max_unpool2d` + 3x3 `ConvTranspose2d(padding=1)` + BN + ReLU, as models/deconvnet.py.
- `PSPNet(depth)`: ResNet-50/101 with dilations (1, 1, 2, 4) (torchvision's
  `replace_stride_with_dilation=[False, True, True]`), pyramid pooling (adaptive avg-pool, 1x1 conv,
  BN, ReLU, bilinear align_corners=True), 3x3 head with Dropout2d, and the aux head on layer3.

`width` scales every channel count exactly as jaxseg does (max(1, round(c * width))), so tiny
variants match too; `create_torch_model(name, num_classes, width)` mirrors
`jaxseg.models.create_model`. Modules take NCHW tensors (channels_last memory format is a
per-call choice of the benchmark) and return logits at the input size; PSPNet returns
(logits, aux) in train mode. Parameter counts equal the Flax models' (tested).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

VGG16_CFG = tv_vgg.cfgs['D']  # [64, 64, 'M', 128, ..., 512, 'M']
FCN_CROPS = {'32s': 16, '16s': 8, '8s': 4}  # 'same' geometry (models/fcn.py).
CAFFE_CROPS = {'score_pool4c': 5, 'score_pool3c': 9, '32s': 19, '16s': 27, '8s': 31}
RESNET_STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
PSP_BINS = (1, 2, 3, 6)


def scaled(channels: int, width: float) -> int:
  """jaxseg's width multiplier: round(channels * width), at least 1."""
  return max(1, int(round(channels * width)))


def _vgg16_features(width: float, batch_norm: bool, first_padding: int,
                    return_indices: bool) -> nn.Sequential:
  """torchvision's VGG16 `features` (scaled), with Caffe ceil-mode pools as jaxseg's VGG16."""
  cfg = [v if v == 'M' else scaled(v, width) for v in VGG16_CFG]
  features = tv_vgg.make_layers(cfg, batch_norm=batch_norm)
  for i, layer in enumerate(features):
    if isinstance(layer, nn.MaxPool2d):
      features[i] = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=return_indices)
  features[0].padding = (first_padding, first_padding)
  return features


def _run_vgg(features: nn.Sequential, x: torch.Tensor):
  """Runs the trunk; returns per block (pre-pool activation, pooled, indices or None)."""
  blocks = []
  for layer in features:
    if isinstance(layer, nn.MaxPool2d):
      pre = x
      out = layer(x)
      x, idx = out if isinstance(out, tuple) else (out, None)
      blocks.append((pre, x, idx))
    else:
      x = layer(x)
  return blocks


def _bilinear_weight(channels: int, size: int) -> torch.Tensor:
  """FCN surgery.interp: bilinear kernel on the channel diagonal, torch (in, out, k, k) layout."""
  factor = (size + 1) // 2
  center = factor - 1 if size % 2 == 1 else factor - 0.5
  tent = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
  weight = torch.zeros(channels, channels, size, size)
  weight[range(channels), range(channels)] = torch.outer(tent, tent)
  return weight


def _crop(x: torch.Tensor, offset: int, size) -> torch.Tensor:
  h, w = size
  return x[:, :, offset:offset + h, offset:offset + w]


class FCN(nn.Module):
  """FCN-32s/16s/8s on VGG16 (models/fcn.py's computation, NCHW)."""

  def __init__(self, num_classes: int, variant: str = '8s', geometry: str = 'same',
               width: float = 1.0, dropout_rate: float = 0.5):
    super().__init__()
    if variant not in FCN_CROPS or geometry not in ('same', 'caffe'):
      raise ValueError(f'FCN: unknown variant {variant!r} or geometry {geometry!r}')
    self.variant, self.caffe = variant, geometry == 'caffe'
    self.features = _vgg16_features(width, False, 100 if self.caffe else 1, False)
    c5, c6 = scaled(512, width), scaled(4096, width)
    self.fc6 = nn.Conv2d(c5, c6, 7, padding=0 if self.caffe else 3)
    self.fc7 = nn.Conv2d(c6, c6, 1)
    self.drop = nn.Dropout(dropout_rate)
    self.score_fr = nn.Conv2d(c6, num_classes, 1)
    up = lambda f: self._upsample(num_classes, f)
    if variant == '32s':
      self.upscore = up(32)
    else:
      self.upscore2 = up(2)
      self.score_pool4 = nn.Conv2d(scaled(512, width), num_classes, 1)
      if variant == '16s':
        self.upscore16 = up(16)
      else:
        self.upscore_pool4 = up(2)
        self.score_pool3 = nn.Conv2d(scaled(256, width), num_classes, 1)
        self.upscore8 = up(8)

  @staticmethod
  def _upsample(channels: int, factor: int) -> nn.ConvTranspose2d:
    layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
      layer.weight.copy_(_bilinear_weight(channels, 2 * factor))
    return layer

  def _fuse(self, up: torch.Tensor, skip: torch.Tensor, caffe_offset: int) -> torch.Tensor:
    if self.caffe:
      return up + _crop(skip, caffe_offset, up.shape[2:])
    return _crop(up, 1, skip.shape[2:]) + skip

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    size = x.shape[2:]
    blocks = _run_vgg(self.features, x)
    h = self.drop(F.relu(self.fc6(blocks[4][1])))
    h = self.drop(F.relu(self.fc7(h)))
    score = self.score_fr(h)
    crops = CAFFE_CROPS if self.caffe else FCN_CROPS
    if self.variant == '32s':
      return _crop(self.upscore(score), crops['32s'], size)
    score = self._fuse(self.upscore2(score), self.score_pool4(blocks[3][1]),
                       CAFFE_CROPS['score_pool4c'])
    if self.variant == '16s':
      return _crop(self.upscore16(score), crops['16s'], size)
    score = self._fuse(self.upscore_pool4(score), self.score_pool3(blocks[2][1]),
                       CAFFE_CROPS['score_pool3c'])
    return _crop(self.upscore8(score), crops['8s'], size)


DECODER = ((5, (512, 512, 512)), (4, (512, 512, 256)), (3, (256, 256, 128)), (2, (128, 64)),
           (1, (64, 64)))


class DeconvNet(nn.Module):
  """DeconvNet on VGG16-BN with max_unpool2d (models/deconvnet.py's computation, NCHW)."""

  def __init__(self, num_classes: int, width: float = 1.0, dropout_rate: float = 0.0):
    super().__init__()
    self.features = _vgg16_features(width, True, 1, True)
    c5, c6 = scaled(512, width), scaled(4096, width)
    self.fc6 = nn.Sequential(nn.Conv2d(c5, c6, 7), nn.BatchNorm2d(c6), nn.ReLU(),
                             nn.Dropout(dropout_rate))
    self.fc7 = nn.Sequential(nn.Conv2d(c6, c6, 1), nn.BatchNorm2d(c6), nn.ReLU(),
                             nn.Dropout(dropout_rate))
    self.fc6_deconv = self._deconv(c6, c5, 7, 0)
    stages, cin = [], c5
    for _, channels in DECODER:
      layers = []
      for c in channels:
        layers.append(self._deconv(cin, scaled(c, width), 3, 1))
        cin = scaled(c, width)
      stages.append(nn.Sequential(*layers))
    self.decoder = nn.ModuleList(stages)
    self.seg_score = nn.Conv2d(cin, num_classes, 1)

  @staticmethod
  def _deconv(cin: int, cout: int, kernel: int, pad: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, kernel, padding=pad),
                         nn.BatchNorm2d(cout), nn.ReLU())

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    blocks = _run_vgg(self.features, x)
    h = self.fc6_deconv(self.fc7(self.fc6(blocks[4][1])))
    for (block, _), stage in zip(DECODER, self.decoder):
      pre, _, idx = blocks[block - 1]
      h = stage(F.max_unpool2d(h, idx, 2, 2, output_size=pre.shape[2:]))
    return self.seg_score(h)


class ResNetTrunk(nn.Module):
  """torchvision ResNet (Bottleneck) stem + 4 stages with jaxseg's width and dilation plan."""

  def __init__(self, stage_sizes=(3, 4, 6, 3), dilations=(1, 1, 2, 4), width: float = 1.0):
    super().__init__()
    stem = scaled(64, width)
    self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(stem)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes, previous, stages = stem, 1, []
    for i, (blocks, dilation) in enumerate(zip(stage_sizes, dilations)):
      planes = scaled((64, 128, 256, 512)[i], width)
      # torchvision replace_stride_with_dilation: a doubled dilation replaces the stride, and the
      # stage's first block keeps the previous dilation.
      stride = 1 if i == 0 or dilation == 2 * previous else 2
      first = previous
      out = planes * tv_resnet.Bottleneck.expansion
      downsample = None
      if stride != 1 or inplanes != out:
        downsample = nn.Sequential(tv_resnet.conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
      layers = [tv_resnet.Bottleneck(inplanes, planes, stride, downsample, dilation=first)]
      layers += [tv_resnet.Bottleneck(out, planes, dilation=dilation) for _ in range(1, blocks)]
      stages.append(nn.Sequential(*layers))
      inplanes, previous = out, dilation
    self.layer1, self.layer2, self.layer3, self.layer4 = stages

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    layer3 = self.layer3(self.layer2(self.layer1(x)))
    return {'layer3': layer3, 'layer4': self.layer4(layer3)}


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU())


class PSPNet(nn.Module):
  """PSPNet-50/101 (models/pspnet.py's computation, NCHW); (logits, aux) in train mode."""

  def __init__(self, num_classes: int, depth: int = 50, width: float = 1.0,
               dropout_rate: float = 0.1, stage_sizes=None):
    super().__init__()
    self.backbone = ResNetTrunk(stage_sizes or RESNET_STAGES[depth], (1, 1, 2, 4), width)
    c4, c3 = scaled(512, width) * 4, scaled(256, width) * 4
    ppm = scaled(512, width)
    self.ppm = nn.ModuleList(_conv_bn_relu(c4, ppm, 1) for _ in PSP_BINS)
    self.cls = nn.Sequential(_conv_bn_relu(c4 + len(PSP_BINS) * ppm, scaled(512, width), 3),
                             nn.Dropout2d(dropout_rate),
                             nn.Conv2d(scaled(512, width), num_classes, 1))
    self.aux = nn.Sequential(_conv_bn_relu(c3, scaled(256, width), 3), nn.Dropout2d(dropout_rate),
                             nn.Conv2d(scaled(256, width), num_classes, 1))

  def forward(self, x: torch.Tensor):
    size = x.shape[2:]
    feats = self.backbone(x)
    f4 = feats['layer4']
    branches = [f4] + [
        F.interpolate(branch(F.adaptive_avg_pool2d(f4, b)), f4.shape[2:], mode='bilinear',
                      align_corners=True) for b, branch in zip(PSP_BINS, self.ppm)]
    up = lambda t: F.interpolate(t, size, mode='bilinear', align_corners=True)
    logits = up(self.cls(torch.cat(branches, 1)))
    if not self.training:
      return logits
    return logits, up(self.aux(feats['layer3']))


MODELS = {
    'fcn32s': lambda c, w: FCN(c, '32s', width=w),
    'fcn16s': lambda c, w: FCN(c, '16s', width=w),
    'fcn8s': lambda c, w: FCN(c, '8s', width=w),
    'deconvnet': lambda c, w: DeconvNet(c, width=w),
    'pspnet50': lambda c, w: PSPNet(c, 50, width=w),
    'pspnet101': lambda c, w: PSPNet(c, 101, width=w),
}


def create_torch_model(name: str, num_classes: int, width: float = 1.0) -> nn.Module:
  """The PyTorch twin of `jaxseg.models.create_model(name, num_classes, width=width)`."""
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; known models: {", ".join(MODELS)}')
  return MODELS[name](num_classes, width)


def segmentation_loss(outputs, labels: torch.Tensor, aux_weight: float = 0.4,
                      ignore_label: int = 255) -> torch.Tensor:
  """Mean pixel cross-entropy (ignore 255), + aux_weight * aux for PSPNet: jaxseg's loss."""
  if isinstance(outputs, tuple):
    logits, aux = outputs
    return (F.cross_entropy(logits.float(), labels, ignore_index=ignore_label)
            + aux_weight * F.cross_entropy(aux.float(), labels, ignore_index=ignore_label))
  return F.cross_entropy(outputs.float(), labels, ignore_index=ignore_label)
