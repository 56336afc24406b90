"""Caffe `.caffemodel` wire format (weights/caffe_proto.py) and FCN's Caffe models (caffe_fcn.py).

The reader is checked on NetParameters built here byte by byte (independent of the writer), new
and legacy V1, and by round trips. The FCN import is checked end to end against a PyTorch
transcription of fcn.berkeleyvision.org's voc-fcn{32,16,8}s/net.py and voc-fcn8s-atonce/net.py
written here: pad 100, ceil-mode pools, valid 7x7 fc6, bias-free deconvolutions and the crop
offsets, which this file derives from Caffe's coord_map rules (caffe/python/caffe/coord_map.py)
rather than taking jaxseg's constants. Random weights (not the bilinear init), so a wrong kernel
transpose or flip fails; width 1/16.
"""
import fractions
import struct

import numpy as np
import pytest

torch = pytest.importorskip('torch')
import torch.nn.functional as F  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import traverse_util  # noqa: E402

from jaxseg.models.fcn import FCN  # noqa: E402
from jaxseg.weights import caffe_fcn  # noqa: E402
from jaxseg.weights import caffe_proto  # noqa: E402
from jaxseg.weights.caffe_proto import CaffeLayer  # noqa: E402

WIDTH = 1 / 16
VGG_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
CLASSES = 21
FC = 256  # 4096 / 16.


# ---------------------------------------------------------------------------------------------
# Wire format, built by hand.

def _varint(value):
  out = b''
  while value >= 0x80:
    out += bytes([(value & 0x7F) | 0x80])
    value >>= 7
  return out + bytes([value])


def _tag(number, wire):
  return _varint(number << 3 | wire)


def _len(number, payload):
  return _tag(number, 2) + _varint(len(payload)) + payload


def test_hand_built_netparameter_new_format():
  # BlobShape {dim: [2, 1, 1, 1] packed}, data packed.
  weight_blob = (_len(7, _len(1, bytes([2, 1, 1, 1])))
                 + _len(5, struct.pack('<2f', 1.5, -2.0)))
  # Bias: dim 300 (a two-byte varint, unpacked), data as unpacked 32-bit fields.
  bias_values = np.linspace(-1, 1, 300).astype(np.float32)
  bias_blob = (_len(7, _tag(1, 0) + _varint(300))
               + b''.join(_tag(5, 5) + struct.pack('<f', v) for v in bias_values))
  layer = (_len(1, b'conv') + _len(2, b'Convolution')
           + _len(3, b'data')                          # bottom: length-delimited, skipped
           + _tag(10, 0) + _varint(1)                  # phase: varint, skipped
           + _tag(5, 5) + struct.pack('<f', 1.0)       # loss_weight: 32-bit, skipped
           + _tag(77, 1) + struct.pack('<d', 3.0)      # an unknown 64-bit field, skipped
           + _len(7, weight_blob) + _len(7, bias_blob))
  relu = _len(1, b'relu') + _len(2, b'ReLU')
  net = _len(1, b'tiny') + _len(100, layer) + _len(100, relu)
  layers = caffe_proto.parse_net(net)
  assert [(l.name, l.type, len(l.blobs)) for l in layers] == [
      ('conv', 'Convolution', 2), ('relu', 'ReLU', 0)]
  weight, bias = layers[0].blobs
  assert weight.shape == (2, 1, 1, 1) and weight.dtype == np.float32
  np.testing.assert_array_equal(weight.ravel(), [1.5, -2.0])
  assert bias.shape == (300,)
  np.testing.assert_array_equal(bias, bias_values)


def test_hand_built_netparameter_legacy_v1():
  values = np.arange(6, dtype=np.float64) / 7
  # Legacy 4-D shape num/channels/height/width, data as packed doubles (double_data = 8).
  blob = (_tag(1, 0) + _varint(1) + _tag(2, 0) + _varint(1) + _tag(3, 0) + _varint(2)
          + _tag(4, 0) + _varint(3) + _len(8, struct.pack('<6d', *values)))
  v1 = (_len(2, b'data') + _len(3, b'fc') + _len(4, b'fc6') + _tag(5, 0) + _varint(14)
        + _len(6, blob) + _tag(7, 5) + struct.pack('<f', 1.0))  # blobs_lr: skipped
  v1_deconv = _len(4, b'up') + _tag(5, 0) + _varint(39)
  layers = caffe_proto.parse_net(_len(2, v1) + _len(2, v1_deconv))
  assert [(l.name, l.type) for l in layers] == [('fc6', 'InnerProduct'), ('up', 'Deconvolution')]
  (blob,) = layers[0].blobs
  assert blob.shape == (1, 1, 2, 3) and blob.dtype == np.float32
  np.testing.assert_allclose(blob.ravel(), values.astype(np.float32))


@pytest.mark.parametrize('legacy', [False, True])
def test_round_trip(tmp_path, legacy):
  rng = np.random.default_rng(0)
  layers = [CaffeLayer('conv1_1', 'Convolution', (rng.standard_normal((4, 3, 3, 3), np.float32),
                                                 rng.standard_normal(4, np.float32))),
            CaffeLayer('relu1_1', 'ReLU'),
            CaffeLayer('fc6', 'InnerProduct', (rng.standard_normal((8, 196), np.float32),)),
            CaffeLayer('upscore', 'Deconvolution', (rng.standard_normal((2, 2, 4, 4),
                                                                        np.float32),))]
  path = caffe_proto.write_caffemodel(tmp_path / 'm.caffemodel', layers, legacy=legacy)
  assert not (tmp_path / 'm.caffemodel.tmp').exists()
  back = caffe_proto.read_caffemodel(path)
  assert [(l.name, l.type) for l in back] == [(l.name, l.type) for l in layers]
  for got, want in zip(back, layers):
    assert len(got.blobs) == len(want.blobs)
    for g, w in zip(got.blobs, want.blobs):
      # V1 blobs are 4-D (num, channels, height, width), padded at the front.
      assert g.shape == ((1,) * (4 - w.ndim) + w.shape if legacy else w.shape)
      np.testing.assert_array_equal(g.reshape(w.shape), w)


def test_truncated_and_foreign_files(tmp_path):
  layers = [CaffeLayer('conv1_1', 'Convolution', (np.ones((4, 3, 3, 3), np.float32),
                                                 np.zeros(4, np.float32)))]
  data = caffe_proto.serialize_net(layers)
  bad = tmp_path / 'cut.caffemodel'
  bad.write_bytes(data[:-7])
  with pytest.raises(ValueError, match=r'cut\.caffemodel: corrupt or truncated .* at byte \d+'):
    caffe_proto.read_caffemodel(bad)
  # Inner damage: a blob's length claims more bytes than its layer holds.
  inner = bytearray(data)
  inner[inner.index(b'Convolution') + len(b'Convolution') + 1] = 0x7F
  bad.write_bytes(bytes(inner))
  with pytest.raises(ValueError, match=r'at byte \d+ of \d+'):
    caffe_proto.read_caffemodel(bad)
  no_weights = tmp_path / 'deploy.caffemodel'
  no_weights.write_bytes(caffe_proto.serialize_net([CaffeLayer('relu', 'ReLU')]))
  with pytest.raises(ValueError, match=r'deploy\.caffemodel is not a trained Caffe model: '
                     r'expected a NetParameter'):
    caffe_proto.read_caffemodel(no_weights)
  text = tmp_path / 'text.caffemodel'
  text.write_bytes(b'{"layers": []}\n')
  with pytest.raises(ValueError, match=r'text\.caffemodel'):
    caffe_proto.read_caffemodel(text)
  with pytest.raises(FileNotFoundError, match='missing.caffemodel'):
    caffe_proto.read_caffemodel(tmp_path / 'missing.caffemodel')


# ---------------------------------------------------------------------------------------------
# Crop offsets by Caffe's coord_map: each layer maps bottom coordinates to top ones, y = a x + b.

def _conv_map(k, s, p):
  return fractions.Fraction(1, s), fractions.Fraction(2 * p - (k - 1), 2 * s)


def _deconv_map(k, s):
  return fractions.Fraction(s), fractions.Fraction(k - 1, 2)


def _then(first, second):
  (a1, b1), (a2, b2) = first, second
  return a2 * a1, a2 * b1 + b2


def caffe_offsets():
  """{crop name: offset} of voc-fcn*s, as caffe.coord_map.crop computes them."""
  maps, m = {}, (fractions.Fraction(1), fractions.Fraction(0))  # data
  for b, block in enumerate(VGG_BLOCKS, 1):
    for l in range(len(block)):
      m = _then(m, _conv_map(3, 1, 100 if (b, l) == (1, 0) else 1))
    m = _then(m, _conv_map(2, 2, 0))
    maps[f'pool{b}'] = m
  score_fr = _then(_then(m, _conv_map(7, 1, 0)), _conv_map(1, 1, 0))
  upscore2 = _then(score_fr, _deconv_map(4, 2))
  upscore_pool4 = _then(upscore2, _deconv_map(4, 2))

  def offset(top, reference):
    assert top[0] == reference[0]
    value = top[1] - reference[1]
    assert value.denominator == 1 and value >= 0
    return int(value)

  data = (fractions.Fraction(1), fractions.Fraction(0))
  return {'score_pool4c': offset(maps['pool4'], upscore2),
          'score_pool3c': offset(maps['pool3'], upscore_pool4),
          '32s': offset(_then(score_fr, _deconv_map(64, 32)), data),
          '16s': offset(_then(upscore2, _deconv_map(32, 16)), data),
          '8s': offset(_then(upscore_pool4, _deconv_map(16, 8)), data)}


# ---------------------------------------------------------------------------------------------
# PyTorch transcription of voc-fcn*s/net.py (NCHW, Caffe blob layouts as the torch weights).

def torch_fcn(blobs, x, variant, scales=(1.0, 1.0)):
  offsets = caffe_offsets()
  conv = lambda h, name, pad=0: F.conv2d(h, blobs[name][0], blobs[name][1], padding=pad)

  def crop(h, offset, like):
    return h[:, :, offset:offset + like.shape[2], offset:offset + like.shape[3]]

  h, pools = x, {}
  for b, block in enumerate(VGG_BLOCKS, 1):
    for l in range(1, len(block) + 1):
      h = F.relu(conv(h, f'conv{b}_{l}', 100 if (b, l) == (1, 1) else 1))
    h = F.max_pool2d(h, 2, 2, ceil_mode=True)
    pools[b] = h
  h = F.relu(conv(h, 'fc6'))  # drop6 / drop7: identity in the test phase.
  h = F.relu(conv(h, 'fc7'))
  score = conv(h, 'score_fr')
  up = lambda h, name, s: F.conv_transpose2d(h, blobs[name][0], stride=s)
  if variant == '32s':
    return crop(up(score, 'upscore', 32), offsets['32s'], x)
  upscore2 = up(score, 'upscore2', 2)
  fuse4 = upscore2 + crop(conv(pools[4] * scales[0], 'score_pool4'), offsets['score_pool4c'],
                          upscore2)
  if variant == '16s':
    return crop(up(fuse4, 'upscore16', 16), offsets['16s'], x)
  upscore_pool4 = up(fuse4, 'upscore_pool4', 2)
  fuse3 = upscore_pool4 + crop(conv(pools[3] * scales[1], 'score_pool3'),
                               offsets['score_pool3c'], upscore_pool4)
  return crop(up(fuse3, 'upscore8', 8), offsets['8s'], x)


def _c(channels):
  return max(1, int(round(channels * WIDTH)))


def fcn_layers(variant, rng, scales=None):
  """The Caffe layers (names, types, blob shapes) of voc-fcn{variant} at width 1/16."""
  def conv(name, out, inp, k, gain=2.0):
    std = np.sqrt(gain / (inp * k * k))
    return CaffeLayer(name, 'Convolution', (
        (rng.standard_normal((out, inp, k, k)) * std).astype(np.float32),
        (rng.standard_normal(out) * 0.1).astype(np.float32)))

  def deconv(name, k):
    return CaffeLayer(name, 'Deconvolution', (
        (rng.standard_normal((CLASSES, CLASSES, k, k)) * 0.3).astype(np.float32),))

  layers, inp = [CaffeLayer('data', 'Python')], 3
  for b, block in enumerate(VGG_BLOCKS, 1):
    for l, c in enumerate(block, 1):
      layers += [conv(f'conv{b}_{l}', _c(c), inp, 3), CaffeLayer(f'relu{b}_{l}', 'ReLU')]
      inp = _c(c)
    layers.append(CaffeLayer(f'pool{b}', 'Pooling'))
  layers += [conv('fc6', FC, inp, 7), CaffeLayer('drop6', 'Dropout'), conv('fc7', FC, FC, 1),
             conv('score_fr', CLASSES, FC, 1, gain=1.0)]
  # Skip scores weighted up by 1 / scale, so that the tiny at-once scales do not hide them.
  skip_gain = lambda i: 1.0 if scales is None else 1.0 / scales[i] ** 2
  if variant == '32s':
    return layers + [deconv('upscore', 64), CaffeLayer('score', 'Crop')]
  layers += [deconv('upscore2', 4)]
  if scales is not None:
    layers.append(CaffeLayer('scale_pool4', 'Scale', (np.full(_c(512), scales[0], np.float32),)))
  layers += [conv('score_pool4', CLASSES, _c(512), 1, gain=skip_gain(0)),
             CaffeLayer('score_pool4c', 'Crop'), CaffeLayer('fuse_pool4', 'Eltwise')]
  if variant == '16s':
    return layers + [deconv('upscore16', 32), CaffeLayer('score', 'Crop')]
  layers += [deconv('upscore_pool4', 4)]
  if scales is not None:
    layers.append(CaffeLayer('scale_pool3', 'Scale', (np.full(_c(256), scales[1], np.float32),)))
  return layers + [conv('score_pool3', CLASSES, _c(256), 1, gain=skip_gain(1)),
                   deconv('upscore8', 16), CaffeLayer('loss', 'SoftmaxWithLoss')]


@pytest.mark.parametrize('variant,atonce', [('32s', False), ('16s', False), ('8s', False),
                                            ('8s', True)])
def test_fcn_caffemodel_matches_pytorch_reference(tmp_path, variant, atonce):
  rng = np.random.default_rng({'32s': 1, '16s': 2, '8s': 3}[variant] + 10 * atonce)
  scales = (0.01, 0.0001) if atonce else None
  layers = fcn_layers(variant, rng, scales)
  path = caffe_proto.write_caffemodel(tmp_path / f'voc-fcn{variant}.caffemodel', layers)
  weights = caffe_fcn.fcn_weights(caffe_proto.read_caffemodel(path), str(path))
  assert weights.arch == f'fcn{variant}'
  assert weights.path == str(path)
  assert weights.normalization == {'space': 'BGR',
                                   'mean': [104.00698793, 116.66876762, 122.67891434],
                                   'std': [1.0, 1.0, 1.0], 'scale': 255.0}
  # The float32 0.01 / 0.0001 of the file, as the decimals a config writes.
  assert weights.model_fields == ({'skip_scales': (0.01, 0.0001)} if atonce else {})
  assert weights.sources['params/upscore8/kernel' if variant == '8s' else
                         'params/score_fr/bias'] == ('upscore8[0]' if variant == '8s'
                                                     else 'score_fr[1]')

  model = FCN(num_classes=CLASSES, variant=variant, geometry='caffe', width=WIDTH,
              skip_scales=weights.model_fields.get('skip_scales', (1.0, 1.0)))
  x = rng.uniform(-120, 150, (1, 3, 37, 45)).astype(np.float32)  # BGR minus the mean.
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 37, 45, 3)))
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep='/')
  assert set(weights.arrays) == set(flat)  # A whole model: every leaf, nothing else.
  for key, array in weights.arrays.items():
    assert array.shape == flat[key].shape, key
    flat[key] = array
  out = model.apply(traverse_util.unflatten_dict(flat, sep='/'),
                    jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)

  blobs = {l.name: [torch.from_numpy(b) for b in l.blobs] for l in layers if l.blobs}
  with torch.no_grad():
    want = torch_fcn(blobs, torch.from_numpy(x), variant, scales or (1.0, 1.0)).numpy()
  got = np.asarray(out).transpose(0, 3, 1, 2)
  assert got.shape == want.shape == (1, CLASSES, 37, 45)
  rel = np.abs(got - want).max() / np.abs(want).max()
  print(f'fcn{variant}{" at-once" if atonce else ""}: max rel error {rel:.2e}')
  assert rel < 1e-4


def test_crop_offsets_are_caffes():
  assert caffe_offsets() == {'score_pool4c': 5, 'score_pool3c': 9, '32s': 19, '16s': 27,
                             '8s': 31}


def test_other_class_counts_and_scales_from_the_file():
  """pascalcontext-fcn8s (60 classes); at-once scales are read, not assumed."""
  rng = np.random.default_rng(4)
  layers = [l if not l.blobs or l.type == 'Scale' else CaffeLayer(
      l.name, l.type, tuple(np.zeros(_pascal_shape(l.name, b.shape), np.float32)
                            for b in l.blobs)) for l in fcn_layers('8s', rng, (0.5, 0.25))]
  weights = caffe_fcn.fcn_weights(layers, 'pascalcontext-fcn8s.caffemodel')
  assert weights.arch == 'fcn8s'
  assert weights.model_fields == {'skip_scales': (0.5, 0.25)}
  assert weights.arrays['params/score_fr/kernel'].shape == (1, 1, FC, 60)
  assert weights.arrays['params/upscore8/kernel'].shape == (16, 16, 60, 60)


def _pascal_shape(name, shape):
  if name.startswith('upscore'):
    return (60, 60) + shape[2:]
  return ((60,) + shape[1:]) if name.startswith('score') else shape


def test_vgg_ilsvrc_legacy_layout(tmp_path):
  """VGG_ILSVRC_16_layers (V1, 4-D blobs): fc6/fc7 InnerProduct cast to convs, fc8 skipped."""
  rng = np.random.default_rng(5)
  layers, inp = [], 3
  for b, block in enumerate(VGG_BLOCKS, 1):
    for l, c in enumerate(block, 1):
      layers.append(CaffeLayer(f'conv{b}_{l}', 'Convolution', (
          rng.standard_normal((_c(c), inp, 3, 3), np.float32),
          rng.standard_normal(_c(c), np.float32))))
      inp = _c(c)
    layers.append(CaffeLayer(f'pool{b}', 'Pooling'))
  for name, shape in (('fc6', (FC, inp * 49)), ('fc7', (FC, FC)), ('fc8', (1000, FC))):
    layers.append(CaffeLayer(name, 'InnerProduct', (rng.standard_normal(shape, np.float32),
                                                    rng.standard_normal(shape[0], np.float32))))
  layers.append(CaffeLayer('prob', 'Softmax'))
  path = caffe_proto.write_caffemodel(tmp_path / 'VGG_ILSVRC_16_layers.caffemodel', layers,
                                      legacy=True)
  read = caffe_proto.read_caffemodel(path)
  assert read[-2].blobs[0].shape == (1, 1, 1000, FC)  # V1: every blob 4-D.
  weights = caffe_fcn.fcn_weights(read, str(path))
  assert weights.arch == 'vgg16'
  assert weights.skipped == ('fc8[0]', 'fc8[1]')
  assert weights.model_fields == {}
  by_name = {l.name: l.blobs for l in layers if l.blobs}
  expected = {f'params/backbone/{n}/{leaf}' for n in by_name if n.startswith('conv')
              for leaf in ('kernel', 'bias')} | {f'params/fc{i}/{leaf}' for i in (6, 7)
                                                 for leaf in ('kernel', 'bias')}
  assert set(weights.arrays) == expected
  np.testing.assert_array_equal(weights.arrays['params/backbone/conv2_1/kernel'],
                                by_name['conv2_1'][0].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(weights.arrays['params/fc7/bias'], by_name['fc7'][1])
  # fc6 as a 7x7 conv on pool5 computes the InnerProduct on Caffe's (C, H, W) flatten of pool5.
  pool5 = rng.standard_normal((inp, 7, 7), np.float32)
  kernel = weights.arrays['params/fc6/kernel']
  assert kernel.shape == (7, 7, inp, FC)
  np.testing.assert_allclose(np.einsum('hwio,ihw->o', kernel, pool5),
                             by_name['fc6'][0] @ pool5.ravel(), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(weights.arrays['params/fc7/kernel'][0, 0], by_name['fc7'][0].T)


def test_unknown_and_missing_layers_are_named():
  rng = np.random.default_rng(6)
  layers = fcn_layers('16s', rng)
  # SIFT Flow's two heads: another layout.
  renamed = [CaffeLayer(l.name + '_sem', l.type, l.blobs)
             if l.name in ('score_fr', 'upscore2', 'score_pool4', 'upscore16') else l
             for l in layers]
  with pytest.raises(ValueError, match=r"siftflow\.caffemodel: not a Caffe VGG16 .*: unknown "
                     r"layers score_fr_sem, score_pool4_sem, upscore16_sem, upscore2_sem"):
    caffe_fcn.fcn_weights(renamed, 'siftflow.caffemodel')
  without = [l for l in layers if l.name != 'upscore16']
  with pytest.raises(ValueError, match=r"closest: fcn16s\): missing layers upscore16"):
    caffe_fcn.fcn_weights(without, 'f.caffemodel')
  biased = [CaffeLayer(l.name, l.type, l.blobs + l.blobs) if l.name == 'upscore2' else l
            for l in layers]
  with pytest.raises(ValueError, match=r"f\.caffemodel: layer 'upscore2' \(Deconvolution\) has 2"):
    caffe_fcn.fcn_weights(biased, 'f.caffemodel')
  uneven = fcn_layers('8s', rng, (0.01, 0.0001))
  uneven = [CaffeLayer(l.name, l.type, (np.linspace(0.01, 0.02, _c(512), dtype=np.float32),))
            if l.name == 'scale_pool4' else l for l in uneven]
  with pytest.raises(ValueError, match=r"layer 'scale_pool4': jaxseg's FCN scales pool4/pool3 "
                     r'by one number'):
    caffe_fcn.fcn_weights(uneven, 'f.caffemodel')
