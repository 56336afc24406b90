"""PSPNet's released Caffe models (weights/caffe_pspnet.py) against a transcription of prototxts.

`caffe_spec` below rebuilds hszhao/PSPNet's evaluation/prototxt/pspnet50_ADE20K_473.prototxt,
pspnet101_VOC2012_473.prototxt and pspnet101_cityscapes_713.prototxt layer by layer (names, types,
bottoms/tops, convolution/pooling/interp parameters) for any depth, width and stage sizes; at full
size its canonical text hashes to that of the real prototxts (PROTOTXT_SHA256, computed once from
the repository, so CI needs no copy). `run_caffe` executes such a layer list with PyTorch the way
the fork's layers do: Convolution, BN (slope * (x - mean) / sqrt(var + 1e-5) + bias, bn_layer.cpp),
ceil-mode Pooling with Caffe's clipping and its AVE divisor (pooling_layer.cpp), Interp
(util/interp.cpp, align corners), Eltwise, Concat. Random blobs, BN statistics included, stored as
the fork stores them ((1, C, 1, 1)) are written with write_caffemodel, imported, loaded into
PSPNet(backbone='caffe') and compared in eval mode at width 1/16 on an 8k+1 crop (89 -> a 12x12
stride-8 map, divisible by every bin, as 473 -> 60).
"""
import dataclasses
import hashlib
import math

import numpy as np
import pytest

torch = pytest.importorskip('torch')
import torch.nn.functional as F  # noqa: E402

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import traverse_util  # noqa: E402

from jaxseg import weights as jaxseg_weights  # noqa: E402
from jaxseg.models import pspnet, resnet  # noqa: E402
from jaxseg.weights import caffe_proto, caffe_pspnet  # noqa: E402
from jaxseg.weights.caffe_proto import CaffeLayer  # noqa: E402

WIDTH = 1 / 16
SIZES = (1, 1, 2, 1)
CLASSES = 5
CROP = 89  # 8k+1: conv6_interp's 8 * 12 - 7 pixels are the input's.
FULL_SIZES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BGR_MEAN = (103.939, 116.779, 123.68)  # eval_all.m's mean_b, mean_g, mean_r.

# sha256 of '\n'.join(canonical layer lines) of each real prototxt (dev script over the
# hszhao/PSPNet repository: every layer's name, type, bottoms, tops and parameters).
PROTOTXT_SHA256 = {  # name: (depth, classes, crop, digest)
    'pspnet50_ADE20K_473': (
        50, 150, 473, '760380427336c7c978fb8cdfa529173df370603426fec1256028fa8d498eeaba'),
    'pspnet101_VOC2012_473': (
        101, 21, 473, '842879f0526430e1e6f28bf969e6e63b0cb117f27b5a479ac287d54c1a552dea'),
    'pspnet101_cityscapes_713': (
        101, 19, 713, '33a1cb7be569bdd9eb58bb6482e921f4ffd34c7c1be9d83de6f36ab2860c73eb'),
}
# The Convolution and BN layer names of the prototxts: (count, sha256[:16] of '\n'.join(names)).
PROTOTXT_WEIGHT_LAYERS = {50: (121, '105a5488068c83e0'), 101: (223, '4f7d7c071268f94e')}


# ---------------------------------------------------------------------------------------------
# The prototxt, transcribed.

def _conv_size(n, k, s, p, d=1):
  return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _pool_size(n, k, s, p):
  """Caffe's Pooling output size: ceil, then clipped when the last window starts in the pad."""
  out = int(math.ceil((n + 2 * p - k) / s)) + 1
  if p and (out - 1) * s >= n + p:
    out -= 1
  return out


def feature_size(crop):
  """The stride-8 map of a crop: conv1_1 3x3/2, pool1 3x3/2 (ceil), conv3_1's stride 2."""
  return _conv_size(_pool_size(_conv_size(crop, 3, 2, 1), 3, 2, 1), 1, 2, 0)


def caffe_spec(depth, classes, crop, width=1.0, stage_sizes=None, aux=False):
  """The layers of hszhao/PSPNet's pspnet{depth} deploy prototxt (and, with aux, the training
  net's auxiliary head: conv4_{n+1} 3x3 -> BN -> ReLU -> dropout -> conv6_1, as pytorch-semseg's
  caffemodel loader names it). Each layer: {name, type, bottom, top, params}."""
  sizes = tuple(stage_sizes or FULL_SIZES[depth])
  ch = lambda c: max(1, int(round(c * width)))
  spec = []

  def add(name, kind, bottom, top=None, **params):
    spec.append(dict(name=name, type=kind, bottom=tuple(bottom), top=(top or name,),
                     params=params))

  def conv(name, bottom, out, k, stride=1, pad=0, dilation=1, bias=False, bn=True, relu=True):
    add(name, 'Convolution', [bottom], num_output=out, kernel_size=k, stride=stride, pad=pad,
        dilation=dilation, bias_term=bias)
    if bn:
      add(f'{name}/bn', 'BN', [name], name)
    if relu:
      add(f'{name}/relu', 'ReLU', [name], name)
    return name

  x = conv('conv1_1_3x3_s2', 'data', ch(64), 3, 2, 1)
  x = conv('conv1_2_3x3', x, ch(64), 3, 1, 1)
  x = conv('conv1_3_3x3', x, ch(128), 3, 1, 1)
  add('pool1_3x3_s2', 'Pooling', [x], pool='MAX', kernel_size=3, stride=2, pad=1)
  x = 'pool1_3x3_s2'
  for stage, (n, planes, dilation) in enumerate(zip(sizes, (64, 128, 256, 512), (1, 1, 2, 4)), 2):
    for j in range(1, n + 1):
      p = f'conv{stage}_{j}'
      stride = 2 if stage == 3 and j == 1 else 1
      # pspnet50_ADE20K strides conv3_1's 1x1 reduce, the ResNet-101 prototxts its 3x3.
      reduce_stride, mid_stride = (stride, 1) if depth == 50 else (1, stride)
      r = conv(f'{p}_1x1_reduce', x, ch(planes), 1, reduce_stride)
      m = conv(f'{p}_3x3', r, ch(planes), 3, mid_stride, dilation, dilation)
      i = conv(f'{p}_1x1_increase', m, ch(planes * 4), 1, relu=False)
      short = conv(f'{p}_1x1_proj', x, ch(planes * 4), 1, stride, relu=False) if j == 1 else x
      add(p, 'Eltwise', [short, i], operation='SUM')
      add(f'{p}/relu', 'ReLU', [p], p)
      x = p
    if stage == 4 and aux:
      a = conv(f'conv4_{n + 1}', x, ch(256), 3, 1, 1)
      add(f'{a}/dropout', 'Dropout', [a], a, dropout_ratio=0.1)
      conv('conv6_1', a, classes, 1, bias=True, bn=False, relu=False)
  size = feature_size(crop)
  for b in (1, 2, 3, 6):
    k = size // b
    add(f'{x}_pool{b}', 'Pooling', [x], pool='AVE', kernel_size=k, stride=k, pad=0)
    c = conv(f'{x}_pool{b}_conv', f'{x}_pool{b}', ch(512), 1)
    add(f'{x}_pool{b}_interp', 'Interp', [c], height=size, width=size)
  add(f'{x}_concat', 'Concat', [x] + [f'{x}_pool{b}_interp' for b in (6, 3, 2, 1)])
  h = conv('conv5_4', f'{x}_concat', ch(512), 3, 1, 1)
  add('conv5_4/dropout', 'Dropout', [h], h, dropout_ratio=0.1)
  conv('conv6', h, classes, 1, bias=True, bn=False, relu=False)
  add('conv6_interp', 'Interp', ['conv6'], zoom_factor=8)
  return spec


def _value(v):
  if isinstance(v, bool):
    return 'true' if v else 'false'
  return str(v)


def canonical(spec):
  """One line per layer: name|type|bottoms|tops|sorted params (what the hashes are over)."""
  return '\n'.join(
      f'{l["name"]}|{l["type"]}|{",".join(l["bottom"])}|{",".join(l["top"])}|'
      + ';'.join(f'{k}={_value(v)}' for k, v in sorted(l['params'].items())) for l in spec)


# ---------------------------------------------------------------------------------------------
# The fork's layers, in PyTorch (NCHW, float64).

def _caffe_pool(x, kind, k, s, p):
  """pooling_layer.cpp Forward_cpu: windows clipped to the image; AVE divides by the window
  clipped to image + pad (before clipping to the image)."""
  n, c, height, width = x.shape
  oh, ow = _pool_size(height, k, s, p), _pool_size(width, k, s, p)
  out = x.new_zeros((n, c, oh, ow))
  for i in range(oh):
    for j in range(ow):
      h0, w0 = i * s - p, j * s - p
      h1, w1 = min(h0 + k, height + p), min(w0 + k, width + p)
      area = (h1 - h0) * (w1 - w0)
      window = x[:, :, max(h0, 0):min(h1, height), max(w0, 0):min(w1, width)]
      out[:, :, i, j] = (window.amax((2, 3)) if kind == 'MAX' else window.sum((2, 3)) / area)
  return out


def _interp_axis(n_in, n_out):
  """interp.cpp's source index, neighbour step and weight per output index (float32 maths)."""
  r = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
  src = r * np.arange(n_out, dtype=np.float32)
  lo = src.astype(np.int64)
  step = (lo < n_in - 1).astype(np.int64)
  return lo, lo + step, torch.from_numpy((src - lo).astype(np.float64))


def _caffe_interp(x, height, width):
  if x.shape[2:] == (height, width):
    return x.clone()
  h0, h1, hl = _interp_axis(x.shape[2], height)
  w0, w1, wl = _interp_axis(x.shape[3], width)
  rows = x[:, :, h0] * (1 - hl)[:, None] + x[:, :, h1] * hl[:, None]
  return rows[..., w0] * (1 - wl) + rows[..., w1] * wl


def run_caffe(spec, blobs, data):
  """Executes `spec` (TEST phase: dropout off, BN on its stored statistics) -> every top."""
  tops = {'data': data}
  for layer in spec:
    kind, p, name = layer['type'], layer['params'], layer['name']
    x = tops[layer['bottom'][0]]
    if kind == 'Convolution':
      w = blobs[name][0]
      y = F.conv2d(x, w, blobs[name][1] if p['bias_term'] else None, p['stride'], p['pad'],
                   p['dilation'])
    elif kind == 'BN':
      slope, bias, mean, var = blobs[name]
      y = slope * (x - mean) / torch.sqrt(var + 1e-5) + bias
    elif kind == 'ReLU':
      y = torch.relu(x)
    elif kind == 'Dropout':
      y = x
    elif kind == 'Eltwise':
      y = sum(tops[b] for b in layer['bottom'])
    elif kind == 'Concat':
      y = torch.cat([tops[b] for b in layer['bottom']], 1)
    elif kind == 'Pooling':
      y = _caffe_pool(x, p['pool'], p['kernel_size'], p['stride'], p['pad'])
    elif kind == 'Interp':
      if 'zoom_factor' in p:
        z = p['zoom_factor']
        size = [s + (s - 1) * (z - 1) for s in x.shape[2:]]
      else:
        size = [p['height'], p['width']]
      y = _caffe_interp(x, *size)
    else:
      raise AssertionError(kind)
    tops[layer['top'][0]] = y
  return tops


def random_blobs(spec, seed=0):
  """Random blobs in the fork's shapes: conv (O, I, k, k) (+ bias (O,)), BN 4 x (1, C, 1, 1)."""
  rng = np.random.default_rng(seed)
  channels, blobs = {'data': 3}, {}
  for layer in spec:
    bottom, top, p = layer['bottom'], layer['top'][0], layer['params']
    if layer['type'] == 'Convolution':
      cin, k = channels[bottom[0]], p['kernel_size']
      w = rng.normal(0, math.sqrt(2 / (cin * k * k)), (p['num_output'], cin, k, k))
      blobs[layer['name']] = (w,) + ((rng.normal(0, 0.1, p['num_output']),)
                                     if p['bias_term'] else ())
      channels[top] = p['num_output']
    elif layer['type'] == 'BN':
      c = (1, channels[bottom[0]], 1, 1)
      blobs[layer['name']] = (rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                              rng.normal(0, 0.2, c), rng.uniform(0.5, 2.0, c))
    elif layer['type'] == 'Concat':
      channels[top] = sum(channels[b] for b in bottom)
    else:
      channels[top] = channels[bottom[0]]
  return {k: tuple(np.asarray(b, np.float32) for b in v) for k, v in blobs.items()}


def caffe_layers(spec, blobs):
  """The net as a .caffemodel holds it: every layer, blobs on those with weights."""
  return [CaffeLayer(l['name'], l['type'], blobs.get(l['name'], ())) for l in spec]


def _image(crop, seed=1):
  rng = np.random.default_rng(seed)
  pixels = rng.uniform(0, 255, (1, 3, crop, crop))
  return pixels - np.asarray(BGR_MEAN)[None, :, None, None]  # Already BGR, as pre_img.m.


def _reference(spec, blobs, image):
  torch_blobs = {k: tuple(torch.from_numpy(b.astype(np.float64)) for b in v)
                 for k, v in blobs.items()}
  return run_caffe(spec, torch_blobs, torch.from_numpy(image))


def _nhwc(t):
  return np.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


def _model_variables(model, weights, crop):
  """A fresh model's variables with every leaf replaced by the weights' (all must match)."""
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, crop, crop, 3)))
  flat = traverse_util.flatten_dict(flax.core.unfreeze(variables), sep='/')
  assert set(weights.arrays) == set(flat)
  for key, value in weights.arrays.items():
    assert flat[key].shape == value.shape, key
    flat[key] = jnp.asarray(value)
  return traverse_util.unflatten_dict(flat, sep='/')


def _errors(got, want):
  diff = np.abs(np.asarray(got, np.float64) - want).max()
  return diff, diff / np.abs(want).max()


@pytest.fixture(scope='module', params=[50, 101])
def imported(request, tmp_path_factory):
  """(depth, spec, blobs, weights) of a tiny Caffe PSPNet with the aux head, via a file."""
  depth = request.param
  spec = caffe_spec(depth, CLASSES, CROP, WIDTH, SIZES, aux=True)
  blobs = random_blobs(spec, seed=depth)
  path = tmp_path_factory.mktemp('caffe') / f'pspnet{depth}_tiny.caffemodel'
  caffe_proto.write_caffemodel(path, caffe_layers(spec, blobs))
  weights = caffe_pspnet.pspnet_weights(caffe_proto.read_caffemodel(path), str(path),
                                        depth=depth)
  return depth, spec, blobs, weights


# ---------------------------------------------------------------------------------------------
# The transcription and the name generator against the real prototxts.

@pytest.mark.parametrize('name', sorted(PROTOTXT_SHA256))
def test_transcription_is_the_prototxt(name):
  depth, classes, crop, digest = PROTOTXT_SHA256[name]
  assert feature_size(crop) == caffe_pspnet.PROTOTXT_PPM_KERNELS[crop][0]
  text = canonical(caffe_spec(depth, classes, crop))
  assert hashlib.sha256(text.encode()).hexdigest() == digest


@pytest.mark.parametrize('depth', [50, 101])
def test_layer_names_are_the_prototxt(depth):
  names = caffe_pspnet.layer_names(FULL_SIZES[depth])
  count, digest = PROTOTXT_WEIGHT_LAYERS[depth]
  assert (len(names), names[0], names[-1]) == (count, 'conv1_1_3x3_s2', 'conv6')
  assert hashlib.sha256('\n'.join(names).encode()).hexdigest()[:16] == digest
  spec = caffe_spec(depth, 21, 473)
  assert names == [l['name'] for l in spec if l['type'] in ('Convolution', 'BN')]
  assert caffe_pspnet.stage_sizes_of(names) == FULL_SIZES[depth]


# ---------------------------------------------------------------------------------------------
# Parity.

def test_import_matches_caffe_forward(imported):
  depth, spec, blobs, weights = imported
  assert weights.arch == f'pspnet{depth}'
  assert weights.model_fields == {'backbone': 'caffe'}
  assert weights.normalization == {'space': 'BGR', 'mean': list(BGR_MEAN),
                                   'std': [1.0, 1.0, 1.0], 'scale': 255.0}
  assert weights.sources['batch_stats/backbone/layer1_0/downsample_bn/var'] == \
      'conv2_1_1x1_proj/bn[3]'
  model = pspnet.PSPNet(CLASSES, depth=depth, width=WIDTH, stage_sizes=SIZES, backbone='caffe')
  variables = _model_variables(model, weights, CROP)
  image = _image(CROP)
  ref = _reference(spec, blobs, image)
  want = _nhwc(ref['conv6_interp'])
  assert want.shape == (1, CROP, CROP, CLASSES)
  x = jnp.asarray(image.transpose(0, 2, 3, 1), jnp.float32)
  got = model.apply(variables, x, train=False)
  abs_err, rel_err = _errors(got, want)
  print(f'pspnet{depth} logits: max abs {abs_err:.2e}, max rel {rel_err:.2e}')
  assert rel_err < 1e-4

  # The aux head (training only in jaxseg) on Caffe's conv4_n output.
  layer3 = ref[f'conv4_{SIZES[2]}']
  head = pspnet._Head(resnet.scaled_channels(pspnet.AUX_FEATURES, WIDTH), CLASSES, 0.1)
  aux = head.apply({'params': variables['params']['aux'],
                    'batch_stats': variables['batch_stats']['aux']},
                   jnp.asarray(_nhwc(layer3), jnp.float32), train=False)
  abs_err, rel_err = _errors(aux, _nhwc(ref['conv6_1']))
  print(f'pspnet{depth} aux: max abs {abs_err:.2e}, max rel {rel_err:.2e}')
  assert rel_err < 1e-4

  # The checks can fail: conv5_4's input channels left in Caffe's concat order.
  flat = traverse_util.flatten_dict(variables, sep='/')
  kernel = flat['params/cls/conv_bn/conv/kernel']
  c5 = resnet.scaled_channels(2048, WIDTH)
  branch = resnet.scaled_channels(pspnet.PPM_FEATURES, WIDTH)
  caffe_order = np.concatenate([np.arange(c5)] + [c5 + np.arange(branch) + branch * i
                                                  for i in (3, 2, 1, 0)])
  flat['params/cls/conv_bn/conv/kernel'] = jnp.asarray(np.asarray(kernel)[:, :, caffe_order])
  wrong = model.apply(traverse_util.unflatten_dict(flat, sep='/'), x, train=False)
  assert _errors(wrong, want)[1] > 1e-2


def test_conv3_stride_placement_matters(imported):
  """The same weights in the other depth's variant (conv3_1's stride on the other conv) fail."""
  depth, spec, blobs, weights = imported
  other = pspnet.PSPNet(CLASSES, depth=50 if depth == 101 else 101, width=WIDTH,
                        stage_sizes=SIZES, backbone='caffe')
  variables = _model_variables(other, weights, CROP)
  image = _image(CROP)
  want = _nhwc(_reference(spec, blobs, image)['conv6_interp'])
  got = other.apply(variables, jnp.asarray(image.transpose(0, 2, 3, 1), jnp.float32))
  assert _errors(got, want)[1] > 1e-2


def test_backbone_ceil_mode_pool(imported):
  """92x92: the stem's 46x46 map pools to 24 (Caffe's ceil) rather than 23."""
  depth, _, blobs, weights = imported
  crop = 92
  spec = caffe_spec(depth, CLASSES, crop, WIDTH, SIZES, aux=True)  # Same layers, other kernels.
  image = _image(crop, seed=2)
  ref = _reference(spec, blobs, image)
  assert ref['pool1_3x3_s2'].shape[2] == 24
  backbone = resnet.ResNet(SIZES, pspnet.PSP_DILATIONS, WIDTH,
                           **pspnet.backbone_fields('caffe', depth))
  variables = {c: traverse_util.unflatten_dict(
      {k.split('/', 2)[2]: v for k, v in weights.arrays.items()
       if k.startswith(f'{c}/backbone/')}, sep='/') for c in ('params', 'batch_stats')}
  features = backbone.apply(variables, jnp.asarray(image.transpose(0, 2, 3, 1), jnp.float32))
  abs_err, rel_err = _errors(features['layer4'], _nhwc(ref[f'conv5_{SIZES[3]}']))
  print(f'pspnet{depth} backbone at {crop}: max abs {abs_err:.2e}, max rel {rel_err:.2e}')
  assert rel_err < 1e-4


def test_ppm_pooling_is_adaptive_at_prototxt_sizes():
  rng = np.random.default_rng(3)
  for crop, (size, kernels) in caffe_pspnet.PROTOTXT_PPM_KERNELS.items():
    x = rng.normal(size=(1, 2, size, size))
    for b, k in kernels.items():
      want = _caffe_pool(torch.from_numpy(x), 'AVE', k, k, 0).numpy()
      got = pspnet.adaptive_avg_pool(jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32), b)
      np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, atol=1e-5)
  # A 505 crop (64x64 map) under the 473 prototxt's kernels: not 6 bins but 7 (nor 1 but 2).
  x = torch.zeros((1, 1, 64, 64), dtype=torch.float64)
  assert _caffe_pool(x, 'AVE', 10, 10, 0).shape[2:] == (7, 7)
  assert _caffe_pool(x, 'AVE', 60, 60, 0).shape[2:] == (2, 2)


def test_full_layout_file_loads_through_load_pretrained(tmp_path):
  """A deploy-like file in pspnet50's full layout (3-4-6-3, width 1/16): read by suffix, depth
  told from the names, checked (arch, normalisation 'caffe', backbone='caffe') and loaded whole."""
  spec = caffe_spec(50, CLASSES, 473, WIDTH)
  path = tmp_path / 'pspnet50_ADE20K.caffemodel'
  caffe_proto.write_caffemodel(path, caffe_layers(spec, random_blobs(spec)))
  model = pspnet.PSPNet(CLASSES, depth=50, width=WIDTH, backbone='caffe')
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 65, 65, 3))))
  variables, report = jaxseg_weights.load_pretrained(
      abstract, path, 'pspnet50', backbone='caffe', normalization='caffe',
      model_fields={'backbone': 'caffe'}, whole=True, log=None)
  assert report.arch == 'pspnet50' and all('/aux/' in k for k in report.new)
  assert np.array_equal(variables['params']['cls']['classifier']['bias'],
                        random_blobs(spec)['conv6'][1])
  with pytest.raises(ValueError,
                     match=r"trained with model\.backbone='caffe'.*config has 'semseg'"):
    jaxseg_weights.load_pretrained(abstract, path, 'pspnet50', backbone='caffe',
                                   model_fields={'backbone': 'semseg'}, log=None)


# ---------------------------------------------------------------------------------------------
# Errors.

@pytest.fixture(scope='module')
def tiny_layers():
  spec = caffe_spec(50, CLASSES, CROP, WIDTH, SIZES)
  return caffe_layers(spec, random_blobs(spec))


def _replace(layers, name, **changes):
  return [dataclasses.replace(l, **changes) if l.name == name else l for l in layers]


def test_deploy_model_has_no_aux_leaves(tiny_layers):
  weights = caffe_pspnet.pspnet_weights(tiny_layers, 'deploy.caffemodel', depth=50)
  assert not any('/aux/' in k for k in weights.arrays)
  assert any(k.startswith('params/ppm/bin6/') for k in weights.arrays)


@pytest.mark.parametrize('edit, match', [
    (lambda ls: [l for l in ls if l.name != 'conv5_4/bn'], r"missing layers conv5_4/bn"),
    (lambda ls: ls + [CaffeLayer('conv7', 'Convolution', (np.zeros((1, 1, 1, 1), np.float32),))],
     r"unknown layers conv7"),
    (lambda ls: ls + [CaffeLayer('conv6_1', 'Convolution', (np.zeros((5, 16, 1, 1), np.float32),
                                                            np.zeros(5, np.float32)))],
     r"with the aux head.*missing layers conv4_3, conv4_3/bn"),
    (lambda ls: _replace(ls, 'conv2_1_3x3/bn', type='BatchNorm'), r"'conv2_1_3x3/bn' \(BatchNorm\)"
     r": expected hszhao/PSPNet's BN layer"),
    (lambda ls: _replace(ls, 'conv5_4', blobs=(np.zeros((32, 8, 3, 3), np.float32),)),
     r"'conv5_4' \(Convolution\): weights of shape \(32, 8, 3, 3\); "
     r"expected \(outputs, 256, 3, 3\)"),
    (lambda ls: _replace(ls, 'conv6', blobs=(np.zeros((5, 32, 1, 1), np.float32),)),
     r"'conv6' \(Convolution\): 1 blob\(s\); expected 2"),
    (lambda ls: _replace(ls, 'conv1_1_3x3_s2/bn', blobs=(np.ones((1, 3, 1, 1), np.float32),) * 4),
     r"blob 0 of shape \(1, 3, 1, 1\); expected \(1, 4, 1, 1\)"),
])
def test_errors_name_file_and_layers(tiny_layers, edit, match):
  with pytest.raises(ValueError, match=r'^bad\.caffemodel: .*' + match):
    caffe_pspnet.pspnet_weights(edit(list(tiny_layers)), 'bad.caffemodel', depth=50)


def test_tiny_network_needs_depth(tiny_layers):
  with pytest.raises(ValueError, match=r'bad\.caffemodel: a Caffe PSPNet with 1-1-2-1 blocks.*'
                     r'pass depth=50 or 101'):
    caffe_pspnet.pspnet_weights(tiny_layers, 'bad.caffemodel')
  names = caffe_pspnet.layer_names(FULL_SIZES[101])
  real = [CaffeLayer(n, 'BN' if n.endswith('/bn') else 'Convolution', (np.zeros(1),))
          for n in names]
  with pytest.raises(ValueError, match=r'depth=50 does not fit .* 3-4-23-3 .*; use 101'):
    caffe_pspnet.pspnet_weights(real, 'bad.caffemodel', depth=50)


def test_not_a_pspnet():
  layers = [CaffeLayer('conv1_1', 'Convolution', (np.zeros((64, 3, 3, 3), np.float32),))]
  with pytest.raises(ValueError, match=r'^fcn\.caffemodel is not a PSPNet Caffe model'):
    caffe_pspnet.pspnet_weights(layers, 'fcn.caffemodel')
