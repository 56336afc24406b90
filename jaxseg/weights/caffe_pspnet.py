"""PSPNet's released Caffe models -> jaxseg's PSPNet parameter tree (PSPNet(backbone='caffe')).

Follows hszhao/PSPNet: evaluation/prototxt/pspnet50_ADE20K_473.prototxt,
pspnet101_VOC2012_473.prototxt and pspnet101_cityscapes_713.prototxt (layer names, blob layouts),
the fork's BN layer (src/caffe/layers/bn_layer.cpp, BNParameter in src/caffe/proto/caffe.proto)
and evaluation/eval_all.m + pre_img.m (the input). Layers with weights, in prototxt order:

  conv1_1_3x3_s2, conv1_2_3x3, conv1_3_3x3 (+ /bn)  -> backbone/conv1..conv3, bn1..bn3
  conv{s}_{j}_1x1_reduce | _3x3 | _1x1_increase | _1x1_proj (j = 1 only) (+ /bn)
                                          -> backbone/layer{s-1}_{j-1}/conv1 | conv2 | conv3 |
                                             downsample_conv (bn1 | bn2 | bn3 | downsample_bn)
  conv5_3_pool{1,2,3,6}_conv (+ /bn)      -> ppm/bin{b}/conv, ppm/bin{b}/bn
  conv5_4 (+ /bn)                         -> cls/conv_bn/conv, cls/conv_bn/bn
  conv6 (with bias)                       -> cls/classifier/{kernel,bias}
  conv4_{n+1} (+ /bn), conv6_1 (n = the number of conv4 blocks: conv4_24 for ResNet-101)
                                          -> aux/conv_bn/{conv,bn}, aux/classifier: the training
                                             net's auxiliary head, as pytorch-semseg's caffemodel
                                             loader names it; the deploy prototxts lack it, so
                                             it is optional as a whole.

Convolution weights (O, I, kh, kw) become Flax HWIO by transpose(2, 3, 1, 0). The fork's BN layer
holds four (1, C, 1, 1) blobs: slope, bias, moving mean, moving variance, and computes
slope * (x - mean) / sqrt(var + eps) + bias with eps = BNParameter's default 1e-5 (no prototxt
sets it; the cuDNN engine uses max(eps, CUDNN_BN_MIN_EPSILON = 1e-5)). They become
params .../scale, .../bias and batch_stats .../mean, .../var; the variance is stored as
var + CAFFE_BN_EPSILON - resnet.BN_EPSILON, so that the forward stays exact should the two
epsilons ever differ (today both are 1e-5 and the variance is copied as is).

The stages' block counts are read from the names (conv{s}_{j}_1x1_reduce); 3-4-6-3 is
pspnet50, 3-4-23-3 pspnet101. Where conv3_1 puts its stride is not in the weights: it follows
the depth, as the released prototxts do (jaxseg.models.pspnet.CAFFE_STRIDE_ON).

Differences in layout that the conversion absorbs:
  - conv5_3_concat stacks [conv5_3, pool6, pool3, pool2, pool1] (CAFFE_CONCAT_BINS); jaxseg's
    PyramidPooling concatenates [layer4, bin1, bin2, bin3, bin6]: conv5_4's input channels are
    permuted to jaxseg's order.
  - The PPM pools with fixed kernels (kernel = stride = 60/b for 473 crops, 90/b for 713 crops,
    PROTOTXT_PPM_KERNELS); jaxseg pools adaptively. They are the same numbers when the stride-8
    map is the prototxt's (60 or 90, divisible by every bin); for any other input the Caffe net
    would pool other windows (ceil((map - k) / k) + 1 bins, not b), so the released models are
    exact in jaxseg on 473x473 (ADE20K, VOC) and 713x713 (Cityscapes) crops, as eval_all.m feeds.
  - Interp (src/caffe/layers/interp_layer.cpp) is align-corners bilinear, as jaxseg's; conv6_interp
    (zoom_factor 8) gives 8 * h - 7 pixels: the input size for 8k+1 crops.

Input (eval_all.m, pre_img.m): pixels in [0, 255], minus the mean R 123.68, G 116.779,
B 103.939, in BGR channel order, no std scaling: CAFFE_NORMALIZATION (config.data.normalization
'caffe').
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from jaxseg.models import pspnet, resnet
from jaxseg.weights import convert
from jaxseg.weights import caffe_proto
from jaxseg.weights.caffe_proto import CaffeLayer

# pre_img.m: BGR order on [0, 255], minus eval_all.m's mean (given there as R, G, B).
CAFFE_NORMALIZATION = {'space': 'BGR', 'mean': [103.939, 116.779, 123.68],
                       'std': [1.0, 1.0, 1.0], 'scale': 255.0}
CAFFE_BN_EPSILON = 1e-5  # BNParameter.eps default (hszhao/PSPNet src/caffe/proto/caffe.proto).
CAFFE_CONCAT_BINS = (6, 3, 2, 1)  # conv5_3_concat's order after conv5_3 itself.
# Crop size -> stride-8 map and the prototxt's PPM pooling kernel (= stride) per bin.
PROTOTXT_PPM_KERNELS = {473: (60, {1: 60, 2: 30, 3: 20, 6: 10}),
                        713: (90, {1: 90, 2: 45, 3: 30, 6: 15})}
ARCHS = {50: 'pspnet50', 101: 'pspnet101'}
STEM_LAYERS = ('conv1_1_3x3_s2', 'conv1_2_3x3', 'conv1_3_3x3')
# Bottleneck conv suffix -> jaxseg's conv name (the BN after it: bn1, bn2, bn3, downsample_bn).
BLOCK_CONVS = {'1x1_reduce': 'conv1', '3x3': 'conv2', '1x1_increase': 'conv3',
               '1x1_proj': 'downsample_conv'}
_BLOCK_BN = {'conv1': 'bn1', 'conv2': 'bn2', 'conv3': 'bn3', 'downsample_conv': 'downsample_bn'}
_REDUCE = re.compile(r'^conv([2-5])_(\d+)_1x1_reduce$')
_DEPTH_OF_SIZES = {tuple(sizes): depth for depth, sizes in resnet.STAGE_SIZES.items()}


def _stage_prefixes(stage_sizes: Sequence[int]) -> list[tuple[str, str]]:
  """(Caffe block prefix 'conv3_1', jaxseg block name 'layer2_0') for every block."""
  return [(f'conv{stage + 1}_{j}', f'layer{stage}_{j - 1}')
          for stage, n in enumerate(stage_sizes, 1) for j in range(1, n + 1)]


def _units(stage_sizes: Sequence[int], aux: bool) -> list[tuple[str, str, str]]:
  """(Caffe conv layer, Flax module of its conv, Flax module of its BN or '') in prototxt order."""
  units = [(name, f'backbone/conv{i}', f'backbone/bn{i}')
           for i, name in enumerate(STEM_LAYERS, 1)]
  for caffe, block in _stage_prefixes(stage_sizes):
    for suffix, conv in BLOCK_CONVS.items():
      if suffix != '1x1_proj' or caffe.endswith('_1'):
        units.append((f'{caffe}_{suffix}', f'backbone/{block}/{conv}',
                      f'backbone/{block}/{_BLOCK_BN[conv]}'))
    if aux and caffe == f'conv4_{stage_sizes[2]}':  # After the last conv4 block.
      units.append((f'conv4_{stage_sizes[2] + 1}', 'aux/conv_bn/conv', 'aux/conv_bn/bn'))
      units.append(('conv6_1', 'aux/classifier', ''))
  ppm = f'conv5_{stage_sizes[3]}'  # The PPM branches are named after the last block (conv5_3).
  for b in pspnet.PSP_BINS:
    units.append((f'{ppm}_pool{b}_conv', f'ppm/bin{b}/conv', f'ppm/bin{b}/bn'))
  units.append(('conv5_4', 'cls/conv_bn/conv', 'cls/conv_bn/bn'))
  units.append(('conv6', 'cls/classifier', ''))
  return units


def layer_names(stage_sizes: Sequence[int], aux: bool = False) -> list[str]:
  """The names of the layers with weights (convs, then their '/bn'), in prototxt order."""
  names = []
  for conv, _, bn in _units(stage_sizes, aux):
    names += [conv, f'{conv}/bn'] if bn else [conv]
  return names


def stage_sizes_of(names: Sequence[str]) -> tuple[int, ...] | None:
  """Blocks per stage from the conv{2-5}_{j}_1x1_reduce names (None: not four whole stages)."""
  blocks: dict[int, set[int]] = {s: set() for s in range(2, 6)}
  for name in names:
    match = _REDUCE.match(name)
    if match:
      blocks[int(match[1])].add(int(match[2]))
  sizes = tuple(len(blocks[s]) for s in range(2, 6))
  if not all(sizes) or any(blocks[s] != set(range(1, len(blocks[s]) + 1)) for s in blocks):
    return None
  return sizes


# ---------------------------------------------------------------------------------------------
# Blobs.

def _error(layer: CaffeLayer, what: str) -> ValueError:
  return ValueError(f'layer {layer.name!r} ({layer.type}): {what}')


def _conv_blobs(layer: CaffeLayer, in_channels: int, kernel: int, bias: bool
                ) -> tuple[np.ndarray, np.ndarray | None]:
  """(HWIO kernel, bias or None) of a Convolution with a k x k kernel on `in_channels`."""
  if layer.type != 'Convolution':
    raise _error(layer, 'expected a Convolution')
  count = 2 if bias else 1
  if len(layer.blobs) != count:
    raise _error(layer, f'{len(layer.blobs)} blob(s); expected {count} '
                 f'({"weights and bias" if bias else "weights only: bias_term false"})')
  weight = layer.blobs[0]
  if weight.ndim != 4 or weight.shape[1:] != (in_channels, kernel, kernel):
    raise _error(layer, f'weights of shape {tuple(weight.shape)}; expected (outputs, '
                 f'{in_channels}, {kernel}, {kernel})')
  if not bias:
    return weight.transpose(2, 3, 1, 0), None
  b = layer.blobs[1]
  if b.size != weight.shape[0] or b.shape[-1] != weight.shape[0]:  # (O,) or legacy (1, 1, 1, O).
    raise _error(layer, f'bias of shape {tuple(b.shape)}; expected ({weight.shape[0]},)')
  return weight.transpose(2, 3, 1, 0), b.reshape(-1)


def _bn_blobs(layer: CaffeLayer, channels: int) -> tuple[np.ndarray, ...]:
  """(slope, bias, mean, var) of the fork's BN layer, each (channels,)."""
  if layer.type != 'BN':
    raise _error(layer, "expected hszhao/PSPNet's BN layer (slope, bias, mean, variance)")
  if len(layer.blobs) != 4:
    raise _error(layer, f'{len(layer.blobs)} blob(s); expected 4 (slope, bias, mean, variance)')
  for i, blob in enumerate(layer.blobs):
    if blob.size != channels or blob.ndim not in (1, 4) or (
        blob.ndim == 4 and blob.shape[1] != channels):
      raise _error(layer, f'blob {i} of shape {tuple(blob.shape)}; expected (1, {channels}, 1, 1)')
  return tuple(blob.reshape(-1) for blob in layer.blobs)


def _concat_permutation(features: int, branches: dict[int, int]) -> np.ndarray:
  """conv5_4 input channel indices: Caffe's [x, pool6, pool3, pool2, pool1] -> jaxseg's order."""
  spans, start = {}, features
  for b in CAFFE_CONCAT_BINS:
    spans[b] = np.arange(start, start + branches[b])
    start += branches[b]
  return np.concatenate([np.arange(features), *(spans[b] for b in pspnet.PSP_BINS)])


# ---------------------------------------------------------------------------------------------
# Conversion.

def _depth(stage_sizes: tuple[int, ...], depth: int | None, source: str) -> int:
  found = _DEPTH_OF_SIZES.get(stage_sizes)
  if depth is None:
    if found is None:
      raise ValueError(f'{source}: a Caffe PSPNet with {"-".join(map(str, stage_sizes))} blocks '
                       'per stage; the released models are ResNet-50 (3-4-6-3) and ResNet-101 '
                       '(3-4-23-3). For a smaller test network pass depth=50 or 101 (where '
                       "conv3_1's stride sits)")
    return found
  if depth not in ARCHS or (found is not None and found != depth):
    raise ValueError(f'{source}: depth={depth} does not fit a Caffe PSPNet with '
                     f'{"-".join(map(str, stage_sizes))} blocks per stage; use '
                     f'{found if found is not None else "50 or 101"}')
  return depth


def pspnet_weights(layers: Sequence[CaffeLayer], path: str = '',
                   depth: int | None = None) -> convert.PretrainedWeights:
  """A PSPNet Caffe model (pspnet50_ADE20K, pspnet101_VOC2012, pspnet101_cityscapes) as weights.

  Args:
    layers: caffe_proto.read_caffemodel's output; layers without blobs (ReLU, Pooling, Interp,
      Concat, Dropout, ...) are ignored.
    path: the file, for error messages and the result's `path`.
    depth: 50 or 101 for a network whose stage sizes are not ResNet-50/101's (tests' tiny
      models); None: told from the stage sizes.

  Returns:
    PretrainedWeights of arch 'pspnet50' / 'pspnet101' with model_fields {'backbone': 'caffe'},
    the aux head's leaves only when the file has it, and CAFFE_NORMALIZATION.

  Raises:
    ValueError naming `path` for unknown, missing or duplicate layers with weights, wrong layer
    types, blob counts or shapes.
  """
  source = path or 'Caffe model'
  by_name = caffe_proto.layers_with_weights(layers, source)
  stage_sizes = stage_sizes_of(list(by_name))
  if stage_sizes is None:
    raise ValueError(f'{source} is not a PSPNet Caffe model: expected conv2_1..conv5_j '
                     f'bottleneck layers (conv{{s}}_{{j}}_1x1_reduce, j = 1, 2, ...); layers with '
                     f'weights: {convert.format_names(list(by_name))}')
  depth = _depth(stage_sizes, depth, source)
  arch = ARCHS[depth]
  aux_names = set(layer_names(stage_sizes, aux=True)) - set(layer_names(stage_sizes))
  aux = bool(aux_names & set(by_name))
  expected = layer_names(stage_sizes, aux)
  unknown = [n for n in by_name if n not in expected]
  missing = [n for n in expected if n not in by_name]
  if unknown or missing:
    problems = [f'unknown layers {convert.format_names(unknown)}'] if unknown else []
    problems += [f'missing layers {convert.format_names(missing)}'] if missing else []
    raise ValueError(f'{source}: not a hszhao/PSPNet Caffe {arch} ('
                     f'{"-".join(map(str, stage_sizes))} blocks per stage'
                     f'{", with the aux head" if aux else ""}): {"; ".join(problems)}')

  modules = {name: (conv, bn) for name, conv, bn in _units(stage_sizes, aux)}
  arrays: dict[str, np.ndarray] = {}
  sources: dict[str, str] = {}

  def put(key: str, value: np.ndarray, layer: str, index: int) -> None:
    arrays[key] = np.ascontiguousarray(value, dtype=np.float32)
    sources[key] = f'{layer}[{index}]'

  def unit(name: str, in_channels: int, kernel: int,
           permutation: np.ndarray | None = None) -> int:
    """Converts conv `name` (and its /bn, if it has one); returns its output channels."""
    conv_module, bn_module = modules[name]
    weight, bias = _conv_blobs(by_name[name], in_channels, kernel, bias=not bn_module)
    if permutation is not None:
      weight = weight[:, :, permutation, :]
    put(f'params/{conv_module}/kernel', weight, name, 0)
    if bias is not None:
      put(f'params/{conv_module}/bias', bias, name, 1)
    channels = weight.shape[-1]
    if bn_module:
      bn = f'{name}/bn'
      slope, shift, mean, var = _bn_blobs(by_name[bn], channels)
      put(f'params/{bn_module}/scale', slope, bn, 0)
      put(f'params/{bn_module}/bias', shift, bn, 1)
      put(f'batch_stats/{bn_module}/mean', mean, bn, 2)
      # The forward divides by sqrt(var + eps): keep var + eps as Caffe's.
      put(f'batch_stats/{bn_module}/var', var + (CAFFE_BN_EPSILON - resnet.BN_EPSILON), bn, 3)
    return channels

  try:
    channels = 3
    for name in STEM_LAYERS:
      channels = unit(name, channels, 3)
    stage_out = {}
    for caffe, _ in _stage_prefixes(stage_sizes):
      reduce = unit(f'{caffe}_1x1_reduce', channels, 1)
      out = unit(f'{caffe}_1x1_increase', unit(f'{caffe}_3x3', reduce, 3), 1)
      if caffe.endswith('_1') and unit(f'{caffe}_1x1_proj', channels, 1) != out:
        raise _error(by_name[f'{caffe}_1x1_proj'], f'expected {out} outputs, as '
                     f'{caffe}_1x1_increase (the two are summed)')
      if not caffe.endswith('_1') and out != channels:
        raise _error(by_name[f'{caffe}_1x1_increase'], f'expected {channels} outputs, as the '
                     'block input (identity shortcut)')
      channels = stage_out[caffe[:5]] = out
    ppm = f'conv5_{stage_sizes[3]}'
    branches = {b: unit(f'{ppm}_pool{b}_conv', channels, 1) for b in pspnet.PSP_BINS}
    head = unit('conv5_4', channels + sum(branches.values()), 3,
                permutation=_concat_permutation(channels, branches))
    classes = unit('conv6', head, 1)
    if aux:
      aux_features = unit(f'conv4_{stage_sizes[2] + 1}', stage_out['conv4'], 3)
      if unit('conv6_1', aux_features, 1) != classes:
        raise _error(by_name['conv6_1'], f'expected {classes} outputs, as conv6')
  except ValueError as e:
    raise ValueError(f'{source}: {e}') from None
  return convert.PretrainedWeights(
      arch=arch, arrays=arrays, sources=sources, skipped=(),
      normalization=dict(CAFFE_NORMALIZATION, mean=list(CAFFE_NORMALIZATION['mean']),
                         std=list(CAFFE_NORMALIZATION['std'])),
      path=path, model_fields={'backbone': 'caffe'})
