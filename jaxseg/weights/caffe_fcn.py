"""Caffe VGG16 (VGG_ILSVRC_16_layers) and FCN's released models -> jaxseg's FCN parameter tree.

Follows shelhamer/fcn.berkeleyvision.org: voc-fcn{32,16,8}s/net.py and voc-fcn8s-atonce/net.py
(layer names and blob layouts), surgery.py (`transplant`: ImageNet fc6/fc7 InnerProduct weights
copied flat into the 7x7 / 1x1 convolutions), voc_layers.py (the input: BGR, 0-255, minus the mean
below). The layout is recognised from the layer names; shapes come from the file, so the same nets
with other class counts (pascalcontext-fcn*s: 60, nyud-fcn32s-*: 40) load too. SIFT Flow's
two-headed nets (score_fr_sem / score_fr_geo) and the two-stream NYUD net are other layouts.

  conv1_1..conv5_3  Convolution (O, I, 3, 3), bias (O,)     -> params/backbone/convX_Y/{kernel,bias}
  fc6               InnerProduct (O, C*7*7) (ImageNet net)  -> params/fc6 7x7 conv, (C, H, W) order
                    or Convolution (O, C, 7, 7) (FCN)
  fc7               InnerProduct (O, I) or Convolution (O, I, 1, 1) -> params/fc7 1x1 conv
  fc8               the ImageNet classifier: skipped
  score_fr, score_pool4, score_pool3   Convolution (K, I, 1, 1) -> params/<name>/{kernel,bias}
  upscore, upscore2, upscore16, upscore_pool4, upscore8
                    Deconvolution (K_in, K_out, k, k), no bias   -> params/<name>/kernel
                    (Caffe's deconv weight is torch's ConvTranspose (in, out, kh, kw): transposed
                    by (2, 3, 1, 0), no flip, as jaxseg.models.fcn documents)
  scale_pool4, scale_pool3 (at-once FCN-8s) Scale (C,), constant -> model_fields['skip_scales']

Conv weights OIHW -> Flax HWIO by `transpose(2, 3, 1, 0)`. V1 files (the ImageNet VGG16) store
every blob as 4-D (num, channels, height, width): biases (1, 1, 1, O), InnerProduct weights
(1, 1, O, I); leading 1s are dropped before conversion.
"""
from __future__ import annotations

import numpy as np

from jaxseg.models import vgg
from jaxseg.weights import convert
from jaxseg.weights import caffe_proto
from jaxseg.weights.caffe_proto import CaffeLayer

# voc_layers.py: the mean FCN's data layers subtract (BGR, on 0-255).
FCN_NORMALIZATION = {'space': 'BGR', 'mean': [104.00698793, 116.66876762, 122.67891434],
                     'std': [1.0, 1.0, 1.0], 'scale': 255.0}
FC_LAYERS = ('fc6', 'fc7')
# Layers with weights of each arch (besides the trunk and fc6/fc7).
HEADS: dict[str, tuple[str, ...]] = {
    'vgg16': (),
    'fcn32s': ('score_fr', 'upscore'),
    'fcn16s': ('score_fr', 'upscore2', 'score_pool4', 'upscore16'),
    'fcn8s': ('score_fr', 'upscore2', 'score_pool4', 'upscore_pool4', 'score_pool3', 'upscore8'),
}
SKIPPED_LAYERS = {'vgg16': ('fc8',)}  # The ImageNet 1000-way classifier.
SCALE_LAYERS = ('scale_pool4', 'scale_pool3')  # At-once FCN-8s only (pool4, pool3 order).
DECONV_PREFIX = 'upscore'


def _squeeze_leading(blob: np.ndarray, ndim: int) -> np.ndarray:
  """Drops the leading 1s of a V1 4-D blob down to `ndim` dimensions."""
  while blob.ndim > ndim and blob.shape[0] == 1:
    blob = blob[0]
  return blob


def _check_blobs(layer: CaffeLayer, count: int, what: str) -> None:
  if len(layer.blobs) != count:
    raise ValueError(f'layer {layer.name!r} ({layer.type}) has {len(layer.blobs)} blob(s); '
                     f'expected {count} ({what})')


def _shape_error(layer: CaffeLayer, index: int, expected: str) -> ValueError:
  return ValueError(f'layer {layer.name!r} ({layer.type}) blob {index} has shape '
                    f'{tuple(layer.blobs[index].shape)}; expected {expected}')


def _bias(layer: CaffeLayer, outputs: int) -> np.ndarray:
  bias = _squeeze_leading(layer.blobs[1], 1)
  if bias.shape != (outputs,):
    raise _shape_error(layer, 1, f'({outputs},) (one per output)')
  return bias


def _conv(layer: CaffeLayer, in_channels: int) -> tuple[np.ndarray, np.ndarray]:
  """(HWIO kernel, bias) of a Convolution, or of an InnerProduct cast to fc6/fc7's conv."""
  _check_blobs(layer, 2, 'weights and bias')
  weight = layer.blobs[0]
  if layer.type == 'InnerProduct':  # surgery.transplant: the same numbers, flat.
    weight = _squeeze_leading(weight, 2)
    taps = weight.shape[1] // in_channels if weight.ndim == 2 and in_channels else 0
    side = int(round(np.sqrt(taps)))
    if weight.ndim != 2 or side * side * in_channels != weight.shape[1]:
      raise _shape_error(layer, 0, f'(outputs, {in_channels}*k*k) (InnerProduct on a '
                         f'{in_channels}-channel map)')
    weight = weight.reshape(weight.shape[0], in_channels, side, side)
  elif layer.type != 'Convolution':
    raise ValueError(f'layer {layer.name!r} has type {layer.type!r}; expected Convolution'
                     + (' or InnerProduct' if layer.name in FC_LAYERS else ''))
  if weight.ndim != 4 or weight.shape[1] != in_channels:
    raise _shape_error(layer, 0, f'(outputs, {in_channels}, kh, kw)')
  return weight.transpose(2, 3, 1, 0), _bias(layer, weight.shape[0])


def _deconv(layer: CaffeLayer, classes: int) -> np.ndarray:
  """(kh, kw, out, in) kernel of a class-to-class Deconvolution without bias."""
  if layer.type != 'Deconvolution':
    raise ValueError(f'layer {layer.name!r} has type {layer.type!r}; expected Deconvolution')
  _check_blobs(layer, 1, 'weights only: bias_term=False, as jaxseg\'s upsampling has no bias')
  weight = layer.blobs[0]
  if weight.ndim != 4 or weight.shape[:2] != (classes, classes):
    raise _shape_error(layer, 0, f'({classes}, {classes}, k, k) (classes in, classes out)')
  return weight.transpose(2, 3, 1, 0)


def _scale(layer: CaffeLayer, channels: int) -> float:
  """The constant of a fixed Scale layer (one value per channel, all equal)."""
  if layer.type != 'Scale':
    raise ValueError(f'layer {layer.name!r} has type {layer.type!r}; expected Scale')
  _check_blobs(layer, 1, 'the scale only: bias_term=False')
  values = layer.blobs[0].ravel()
  if values.size not in (1, channels):
    raise _shape_error(layer, 0, f'({channels},) (one per channel) or (1,)')
  if not np.all(values == values[0]):
    raise ValueError(f'layer {layer.name!r}: jaxseg\'s FCN scales pool4/pool3 by one number, '
                     f'but the blob holds different values (min {values.min()}, '
                     f'max {values.max()})')
  # The shortest decimal that is this float32 (0.01, not 0.009999999776), as configs write it.
  return float(str(values[0]))


def _guess_arch(names: set[str]) -> str:
  """The arch whose layer set differs least from `names` (ties: the first, vgg16)."""
  trunk = set(vgg.CONV_NAMES) | set(FC_LAYERS)

  def distance(arch):
    expected = trunk | set(HEADS[arch])
    optional = set(SKIPPED_LAYERS.get(arch, ())) | (set(SCALE_LAYERS) if arch == 'fcn8s' else set())
    return len(expected - names) + len(names - expected - optional)

  return min(HEADS, key=distance)


def fcn_weights(layers: list[CaffeLayer], path: str = '') -> convert.PretrainedWeights:
  """Caffe VGG16 (arch 'vgg16') or a whole FCN-32s/16s/8s (arch 'fcn32s'/'fcn16s'/'fcn8s').

  Layers without blobs (data, ReLU, pooling, crops, losses) are ignored. Raises ValueError naming
  `path` for unknown or missing layers with weights, duplicate names and unexpected blob shapes.
  """
  source = path or 'Caffe model'
  by_name = caffe_proto.layers_with_weights(layers, source)
  names = set(by_name)
  arch = _guess_arch(names)
  expected = [*vgg.CONV_NAMES, *FC_LAYERS, *HEADS[arch]]
  skipped = SKIPPED_LAYERS.get(arch, ())
  scales = SCALE_LAYERS if arch == 'fcn8s' and names & set(SCALE_LAYERS) else ()
  unknown = sorted(names - set(expected) - set(skipped) - set(scales))
  missing = [n for n in [*expected, *scales] if n not in names]
  if unknown or missing:
    problems = [f'unknown layers {convert.format_names(unknown)}'] if unknown else []
    problems += [f'missing layers {convert.format_names(missing)}'] if missing else []
    raise ValueError(f'{source}: not a Caffe VGG16 (VGG_ILSVRC_16_layers) or FCN-32s/16s/8s '
                     f'model (closest: {arch}): {"; ".join(problems)}. Known layouts: '
                     'fcn.berkeleyvision.org voc-fcn*s, voc-fcn8s-atonce, pascalcontext-fcn*s')

  arrays: dict[str, np.ndarray] = {}
  sources: dict[str, str] = {}

  def put(key: str, value: np.ndarray, layer: str, index: int) -> None:
    arrays[key] = np.ascontiguousarray(value, dtype=np.float32)
    sources[key] = f'{layer}[{index}]'

  def conv(name: str, prefix: str, in_channels: int) -> int:
    kernel, bias = _conv(by_name[name], in_channels)
    put(f'{prefix}{name}/kernel', kernel, name, 0)
    put(f'{prefix}{name}/bias', bias, name, 1)
    return kernel.shape[-1]

  try:
    channels, previous = {'data': 3}, 'data'
    for name in vgg.CONV_NAMES:
      channels[name] = conv(name, 'params/backbone/', channels[previous])
      previous = name
    fc7 = conv('fc7', 'params/', conv('fc6', 'params/', channels['conv5_3']))
    if arch != 'vgg16':
      classes = conv('score_fr', 'params/', fc7)
      for name in HEADS[arch][1:]:
        if name.startswith(DECONV_PREFIX):
          put(f'params/{name}/kernel', _deconv(by_name[name], classes), name, 0)
        else:  # score_pool4 / score_pool3 on pool4 (conv4_3) / pool3 (conv3_3).
          trunk = 'conv4_3' if name == 'score_pool4' else 'conv3_3'
          if conv(name, 'params/', channels[trunk]) != classes:
            raise _shape_error(by_name[name], 0, f'{classes} outputs, as score_fr')
    fields = {}
    if scales:  # Read from the file: the model multiplies pool4 / pool3 by them.
      fields['skip_scales'] = (_scale(by_name['scale_pool4'], channels['conv4_3']),
                               _scale(by_name['scale_pool3'], channels['conv3_3']))
  except ValueError as e:
    raise ValueError(f'{source}: {e}') from None
  return convert.PretrainedWeights(
      arch=arch, arrays=arrays, sources=sources,
      skipped=tuple(f'{name}[{i}]' for name in skipped if name in by_name
                    for i in range(len(by_name[name].blobs))),
      normalization=dict(FCN_NORMALIZATION, mean=list(FCN_NORMALIZATION['mean']),
                         std=list(FCN_NORMALIZATION['std'])),
      path=path, model_fields=fields)
