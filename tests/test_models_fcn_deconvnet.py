"""VGG16 trunk, FCN-32s/16s/8s and DeconvNet (jaxseg/models/{vgg,fcn,deconvnet}.py).

Independent references: torchvision's VGG16 layer list (`make_layers(cfgs['D'])`, so its indices
and shapes, not ours, drive the PyTorch forward), torch conv_transpose2d / max_pool2d(ceil_mode,
return_indices) / max_unpool2d / batch_norm / bilinear interpolate, the reference nets' crop
offsets, FCN's surgery.upsample_filt, and parameter counts from torchvision plus the layer shapes
of voc-fcn*s/net.py and DeconvNet's prototxt. Forward passes use width 1/16 and small inputs;
full-size models only go through jax.eval_shape. Test variables are filled from NumPy (on the
eval_shape structure) to avoid compiling jax.random for every test.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.vgg import cfgs, make_layers

from jaxseg.models import vgg
from jaxseg.models.deconvnet import DeconvNet, caffe_deconv_padding
from jaxseg.models.fcn import FCN, bilinear_kernel

WIDTH = 1 / 16
NUM_CLASSES = 5


def scaled(channels):
  return max(1, round(channels * WIDTH))


def count(tree):
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def random_variables(model, x, seed=0):
  """Variables with the model's structure, random values from NumPy (BN stats included)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      value = rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
    elif name in ('scale', 'var'):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:  # bias, BN mean.
      value = rng.normal(0, 0.1, leaf.shape)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def nchw(x):
  return torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2).copy())


def nhwc(x):
  return x.detach().numpy().transpose(0, 2, 3, 1)


def torch_weight(kernel):
  """Flax kernel -> torch weight. Conv HWIO -> OIHW; ConvTranspose(transpose_kernel=True)
  (kh, kw, out, in) -> torch conv_transpose (in, out, kh, kw): the same axis permutation."""
  return torch.from_numpy(np.asarray(kernel).transpose(3, 2, 0, 1).copy())


def tensor(x):
  return torch.from_numpy(np.asarray(x).copy())


def assert_close(ours, ref, rtol=1e-4):
  ref = np.asarray(ref)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=rtol, atol=rtol * np.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# PyTorch references (autograd-capable: every parameter is a torch leaf tensor)
# ---------------------------------------------------------------------------------------------


class TorchParams:
  """Flax params as torch leaf tensors (requires_grad) in torch layouts, keyed by flax path."""

  def __init__(self, params):
    self.leaves = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      key = tuple(k.key for k in path)
      value = torch_weight(leaf) if key[-1] == 'kernel' else tensor(leaf)
      self.leaves[key] = value.requires_grad_()

  def __call__(self, *key):
    return self.leaves[key]

  def grad(self, key):
    """Gradient of one leaf, back in the Flax layout."""
    g = self.leaves[key].grad.numpy()
    return g.transpose(2, 3, 1, 0) if key[-1] == 'kernel' else g


def torch_bn(tp, x, key, stats, train):
  """BatchNorm: batch statistics in train mode, running ones (from `stats`) in eval mode."""
  if train:
    mean = var = None
  else:
    node = functools.reduce(lambda d, k: d[k], key, stats)
    mean, var = tensor(node['mean']), tensor(node['var'])
  return F.batch_norm(x, mean, var, tp(*key, 'scale'), tp(*key, 'bias'), training=train, eps=1e-5)


def torch_vgg(tp, x, first_padding=1, batch_norm=False, stats=None, train=False):
  """torchvision's VGG16 feature stack (cfg 'D') at the test width: its layer list and indices
  (not ours) drive the forward, parameters found through our index maps; Caffe's ceil-mode
  pooling. Returns our feature dict plus torch's switches."""
  cfg = [v if v == 'M' else scaled(v) for v in cfgs['D']]
  layers = make_layers(cfg, batch_norm=batch_norm)
  if batch_norm:
    conv_at = {i: name for name, (i, _) in vgg.TORCHVISION_VGG16_BN_INDICES.items()}
    bn_at = {j: 'bn' + name[len('conv'):]
             for name, (_, j) in vgg.TORCHVISION_VGG16_BN_INDICES.items()}
  else:
    conv_at = {i: name for name, i in vgg.TORCHVISION_VGG16_CONV_INDICES.items()}
    bn_at = {}
  feats, b = {}, 1
  for index, layer in enumerate(layers):
    if isinstance(layer, torch.nn.Conv2d):
      name = conv_at[index]
      pad = first_padding if index == 0 else layer.padding
      assert layer.weight.shape == tp('backbone', name, 'kernel').shape, name
      x = F.conv2d(x, tp('backbone', name, 'kernel'), tp('backbone', name, 'bias'), padding=pad)
    elif isinstance(layer, torch.nn.BatchNorm2d):
      x = torch_bn(tp, x, ('backbone', bn_at[index]), stats, train)
    elif isinstance(layer, torch.nn.ReLU):
      x = F.relu(x)
    else:
      assert isinstance(layer, torch.nn.MaxPool2d)
      feats[f'block{b}'] = x
      x, feats[f'switches{b}'] = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
      feats[f'pool{b}'] = x
      b += 1
  return feats


def torch_fcn(tp, x, variant, geometry):
  """FCN forward after voc-fcn{32,16,8}s/net.py, without dropout; NCHW in and out."""
  caffe = geometry == 'caffe'
  size = x.shape[2:]
  feats = torch_vgg(tp, x, first_padding=100 if caffe else 1)

  def conv(h, name, pad=0):
    return F.conv2d(h, tp(name, 'kernel'), tp(name, 'bias'), padding=pad)

  def up(h, name, factor):  # Caffe Deconvolution: stride f, kernel 2f, pad 0, no bias.
    return F.conv_transpose2d(h, tp(name, 'kernel'), stride=factor)

  def crop(h, offset, hw):
    return h[:, :, offset:offset + hw[0], offset:offset + hw[1]]

  # Offsets: 'caffe' = the reference's Caffe coord_map crops (score_pool4c 5, score_pool3c 9,
  # final 19 / 27 / 31); 'same' = f / 2 for an xf bilinear upsampling (its k = 2f kernel peaks at
  # f*i + f - 1/2 while stride-f cell i is centred at f*i + (f - 1)/2 on the finer grid).
  h = F.relu(conv(feats['pool5'], 'fc6', 0 if caffe else 3))
  h = F.relu(conv(h, 'fc7'))
  score = conv(h, 'score_fr')
  if variant == '32s':
    return crop(up(score, 'upscore', 32), 19 if caffe else 16, size)
  u = up(score, 'upscore2', 2)
  s4 = conv(feats['pool4'], 'score_pool4')
  score = u + crop(s4, 5, u.shape[2:]) if caffe else crop(u, 1, s4.shape[2:]) + s4
  if variant == '16s':
    return crop(up(score, 'upscore16', 16), 27 if caffe else 8, size)
  u = up(score, 'upscore_pool4', 2)
  s3 = conv(feats['pool3'], 'score_pool3')
  score = u + crop(s3, 9, u.shape[2:]) if caffe else crop(u, 1, s3.shape[2:]) + s3
  return crop(up(score, 'upscore8', 8), 31 if caffe else 4, size)


def torch_deconvnet(tp, x, stats=None, train=False):
  """DeconvNet forward after the reference prototxt; NCHW in and out."""
  feats = torch_vgg(tp, x, batch_norm=True, stats=stats, train=train)

  def bn_relu(h, name):
    return F.relu(torch_bn(tp, h, (name,), stats, train))

  def conv(h, name):
    return F.conv2d(h, tp(name, 'kernel'), tp(name, 'bias'))

  def deconv(h, name, pad):
    return F.conv_transpose2d(h, tp(name, 'kernel'), tp(name, 'bias'), padding=pad)

  decoder = {5: 3, 4: 3, 3: 3, 2: 2, 1: 2}  # deconv layers per stage (prototxt).
  h = bn_relu(conv(feats['pool5'], 'fc6'), 'bnfc6')
  h = bn_relu(conv(h, 'fc7'), 'bnfc7')
  h = bn_relu(deconv(h, 'fc6_deconv', 0), 'fc6_deconv_bn')
  for b, layers in decoder.items():
    h = F.max_unpool2d(h, feats[f'switches{b}'], 2, 2, output_size=feats[f'block{b}'].shape[2:])
    for l in range(1, layers + 1):
      h = bn_relu(deconv(h, f'deconv{b}_{l}', 1), f'debn{b}_{l}')
  return conv(h, 'seg_score')

# ---------------------------------------------------------------------------------------------
# Shapes, names, parameter counts (eval_shape only)
# ---------------------------------------------------------------------------------------------


def output_shape(model, shape, **kwargs):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, **kwargs)[0], x)


@pytest.mark.parametrize('geometry', ['caffe', 'same'])
@pytest.mark.parametrize('variant', ['32s', '16s', '8s'])
def test_fcn_output_is_input_size(variant, geometry):
  model = FCN(NUM_CLASSES, variant=variant, geometry=geometry, width=WIDTH)
  for hw in [(1, 1), (97, 131), (224, 224), (250, 187), (33, 500), (512, 512)]:
    out = output_shape(model, (2, *hw, 3))
    assert out.shape == (2, *hw, NUM_CLASSES) and out.dtype == jnp.float32, (hw, out)


def test_deconvnet_output_is_input_size():
  model = DeconvNet(NUM_CLASSES, width=WIDTH)
  for hw in [(193, 193), (224, 224), (250, 301), (225, 417)]:
    out = output_shape(model, (1, *hw, 3))
    assert out.shape == (1, *hw, NUM_CLASSES) and out.dtype == jnp.float32, (hw, out)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  for model, hw in [(FCN(3, width=WIDTH, dtype=jnp.bfloat16), (64, 64)),
                    (DeconvNet(3, width=WIDTH, dtype='bfloat16'), (224, 224))]:
    out, variables = jax.eval_shape(
        lambda x, m=model: m.init_with_output(jax.random.key(0), x), jnp.zeros((1, *hw, 3)))
    assert out.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_bad_fields_and_inputs_raise():
  x = jnp.zeros((1, 64, 64, 3))
  with pytest.raises(ValueError, match='variant must be one of'):
    output_shape(FCN(3, variant='4s'), x.shape)
  with pytest.raises(ValueError, match='geometry must be one of'):
    output_shape(FCN(3, geometry='valid'), x.shape)
  with pytest.raises(ValueError, match='width'):
    output_shape(FCN(3, width=0.0), x.shape)
  with pytest.raises(ValueError, match='dropout_rate must be in'):
    output_shape(FCN(3, dropout_rate=1.0), x.shape)
  with pytest.raises(ValueError, match='num_classes must be a positive int'):
    output_shape(FCN(0), x.shape)
  with pytest.raises(ValueError, match='NHWC'):
    output_shape(FCN(3), (64, 64, 3))
  with pytest.raises(ValueError, match=r'height and width >= 193 .*pool5'):
    output_shape(DeconvNet(3, width=WIDTH), (1, 192, 300, 3))
  output_shape(DeconvNet(3, width=WIDTH), (1, 193, 193, 3))  # The documented minimum works.


@functools.cache
def torchvision_vgg16():
  with torch.device('meta'):  # Shapes only, nothing allocated.
    return torchvision.models.vgg16(), torchvision.models.vgg16_bn()


def test_backbone_names_and_shapes_match_torchvision():
  tv, tv_bn = torchvision_vgg16()
  shapes = jax.eval_shape(DeconvNet(21).init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  p, s = shapes['params'], shapes['batch_stats']
  for name in vgg.CONV_NAMES:
    conv = tv.features[vgg.TORCHVISION_VGG16_CONV_INDICES[name]]
    i, j = vgg.TORCHVISION_VGG16_BN_INDICES[name]
    assert isinstance(conv, torch.nn.Conv2d) and isinstance(tv_bn.features[j], torch.nn.BatchNorm2d)
    assert tv_bn.features[i].weight.shape == conv.weight.shape
    kernel = p['backbone'][name]['kernel'].shape
    assert (kernel[3], kernel[2], kernel[0], kernel[1]) == tuple(conv.weight.shape), name
    assert p['backbone'][name]['bias'].shape == tuple(conv.bias.shape)
    bn = 'bn' + name[len('conv'):]
    assert p['backbone'][bn]['scale'].shape == tuple(tv_bn.features[j].weight.shape)
    assert s['backbone'][bn]['var'].shape == tuple(tv_bn.features[j].running_var.shape)
  # torchvision's classifier.0 / .3 are fc6 (7x7 conv over 512 channels) / fc7 (1x1) as convs.
  assert p['fc6']['kernel'].shape == (7, 7, 512, 4096) and tv.classifier[0].weight.shape == (
      4096, 512 * 7 * 7)
  assert p['fc7']['kernel'].shape == (1, 1, 4096, 4096) and tv.classifier[3].weight.shape == (
      4096, 4096)


def test_full_size_parameter_counts_match_references():
  """Counts for num_classes=21 against torchvision + the reference layer shapes.

  - torchvision docs: vgg16 has 138,357,544 parameters, vgg16_bn 138,365,992; their `features`
    (conv1_1..conv5_3) 14,714,688 / 14,723,136; classifier.0 (= fc6) 102,764,544 and
    classifier.3 (= fc7) 16,781,312 -- taken from torchvision's modules, not from ours.
  - FCN heads (voc-fcn*s/net.py): score_fr / score_pool4 / score_pool3 are 1x1 convs with bias
    from 4096 / 512 / 256 channels; Deconvolution layers have num_output 21 over 21 inputs
    (a full 21x21 kernel, bilinear on the diagonal) and bias_term=False. FCN-8s: 134,489,759,
    the "134M" of the FCN paper's Table 1 (FCN-32s's fixed 64x64 upsampling adds 1.8M on top).
  - DeconvNet (stage_2_train.prototxt): every conv/deconv has a bias, every BN layer a scale and
    a shift; fc6_deconv is 7x7 4096 -> 512; decoder 3x3 deconvs as listed in DECODER; 1x1 score.
    Total 251,805,653, the paper's "approximately 252M parameters".
  """
  tv, tv_bn = torchvision_vgg16()
  n = lambda m: sum(p.numel() for p in m.parameters())
  assert (n(tv), n(tv_bn)) == (138_357_544, 138_365_992)
  features, features_bn = n(tv.features), n(tv_bn.features)
  fc6, fc7 = n(tv.classifier[0]), n(tv.classifier[3])
  c = 21
  score = lambda cin: cin * c + c
  upsample = lambda k: c * c * k * k
  expected = {
      '32s': features + fc6 + fc7 + score(4096) + upsample(64),
      '16s': features + fc6 + fc7 + score(4096) + score(512) + upsample(4) + upsample(32),
      '8s': (features + fc6 + fc7 + score(4096) + score(512) + score(256) + 2 * upsample(4)
             + upsample(16)),
  }
  x = jnp.zeros((1, 224, 224, 3))
  for variant, want in expected.items():
    for geometry in ('caffe', 'same'):
      params = jax.eval_shape(FCN(c, variant=variant, geometry=geometry).init,
                              jax.random.key(0), x)['params']
      assert count(params) == want, (variant, geometry, count(params), want)
      assert count(params['backbone']) == features == 14_714_688
  assert expected['8s'] == 134_489_759 and round(expected['8s'] / 1e6) == 134

  # Weight, bias, BN scale and shift.
  conv_bn = lambda k, cin, cout: k * k * cin * cout + cout + 2 * cout
  decoder = [(512, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 256),
             (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64), (64, 64)]
  want = (features_bn + fc6 + 2 * 4096 + fc7 + 2 * 4096 + conv_bn(7, 4096, 512)
          + sum(conv_bn(3, cin, cout) for cin, cout in decoder) + score(64))
  variables = jax.eval_shape(DeconvNet(c).init, jax.random.key(0), x)
  assert count(variables['params']) == want == 251_805_653
  assert abs(want - 252e6) < 0.5e6
  assert count(variables['params']['backbone']) == features_bn == 14_723_136


# ---------------------------------------------------------------------------------------------
# Upsampling: bilinear init and transposed-convolution semantics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('size', [3, 4, 5, 16, 32, 64])
def test_bilinear_kernel_matches_fcn_surgery(size):
  # fcn.berkeleyvision.org surgery.upsample_filt, then interp(): the filter on the diagonal.
  factor = (size + 1) // 2
  center = factor - 1 if size % 2 == 1 else factor - 0.5
  og = np.ogrid[:size, :size]
  filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
  kernel = bilinear_kernel(size, 3)
  for i in range(3):
    for j in range(3):
      np.testing.assert_allclose(kernel[:, :, i, j], filt if i == j else 0, atol=1e-7)


@pytest.mark.parametrize('factor', [2, 8, 16, 32])
def test_bilinear_upsampling_is_interpolation(factor):
  """The x-f transposed conv with the bilinear kernel, cropped at f/2 (the 'same' geometry),
  equals torch's bilinear interpolation (align_corners=False) away from the borders."""
  x = np.random.default_rng(factor).normal(size=(1, 5, 6, 2)).astype(np.float32)
  layer = nn.ConvTranspose(2, (2 * factor, 2 * factor), strides=(factor, factor),
                           padding='VALID', use_bias=False, transpose_kernel=True)
  up = layer.apply({'params': {'kernel': bilinear_kernel(2 * factor, 2)}}, x)
  assert up.shape == (1, 6 * factor, 7 * factor, 2)  # (n - 1) * f + 2f.
  ours = np.asarray(up)[:, factor // 2:, factor // 2:][:, :5 * factor, :6 * factor]
  ref = nhwc(F.interpolate(nchw(x), scale_factor=factor, mode='bilinear', align_corners=False))
  inner = np.s_[:, factor:4 * factor, factor:5 * factor]
  np.testing.assert_allclose(ours[inner], ref[inner], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kernel,stride,pad,hw', [
    (4, 2, 0, (5, 7)), (16, 8, 0, (3, 4)), (64, 32, 0, (2, 3)), (4, 2, 1, (5, 6)),
    (3, 1, 1, (6, 5)), (7, 1, 0, (1, 2)), (7, 1, 0, (3, 4))])
def test_conv_transpose_matches_torch(kernel, stride, pad, hw):
  """nn.ConvTranspose(transpose_kernel=True) with VALID (pad 0, FCN) or k - 1 - p padding
  (DeconvNet) is torch's conv_transpose2d: output (n - 1) * s + k - 2p, non-symmetric kernel."""
  rng = np.random.default_rng(kernel * 10 + pad)
  x = rng.normal(size=(2, *hw, 3)).astype(np.float32)
  w = rng.normal(size=(3, 4, kernel, kernel)).astype(np.float32)  # torch (in, out, kh, kw).
  b = rng.normal(size=(4,)).astype(np.float32)
  ref = nhwc(F.conv_transpose2d(nchw(x), torch.from_numpy(w), torch.from_numpy(b), stride=stride,
                                padding=pad))
  paddings = [caffe_deconv_padding(kernel, pad)] + (['VALID'] if pad == 0 else [])
  for padding in paddings:
    layer = nn.ConvTranspose(4, (kernel, kernel), strides=(stride, stride), padding=padding,
                             transpose_kernel=True)
    params = {'kernel': w.transpose(2, 3, 1, 0), 'bias': b}  # Inverse of torch_weight.
    ours = layer.apply({'params': params}, x)
    assert ours.shape == ref.shape == (2, *((n - 1) * stride + kernel - 2 * pad for n in hw), 4)
    assert_close(ours, ref, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Forward passes against PyTorch (width 1/16)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('geometry,hw', [('caffe', (37, 50)), ('same', (45, 71))])
@pytest.mark.parametrize('variant', ['32s', '16s', '8s'])
def test_fcn_matches_torch_reference(variant, geometry, hw):
  model = FCN(NUM_CLASSES, variant=variant, geometry=geometry, width=WIDTH)
  x = np.random.default_rng(1).normal(size=(2, *hw, 3)).astype(np.float32)
  variables = random_variables(model, x)
  ours = jax.jit(model.apply)(variables, x)
  with torch.no_grad():
    ref = torch_fcn(TorchParams(variables['params']), nchw(x), variant, geometry)
  assert_close(ours, nhwc(ref))


def test_fcn_same_geometry_commutes_with_flips():
  """Alignment check of the 'same' crops independent of any reference: with flip-symmetric
  kernels, on a size divisible by 32, flipping the input flips the logits."""
  model = FCN(NUM_CLASSES, variant='8s', geometry='same', width=WIDTH)
  x = np.random.default_rng(2).normal(size=(1, 64, 96, 3)).astype(np.float32)
  symmetric = lambda k: (k + k[::-1] + k[:, ::-1] + k[::-1, ::-1]) / 4 if k.ndim == 4 else k
  variables = jax.tree.map(symmetric, random_variables(model, x))
  batch = np.concatenate([x, x[:, ::-1], x[:, :, ::-1]])
  out = np.asarray(jax.jit(model.apply)(variables, batch))
  assert_close(out[1], out[0][::-1], rtol=1e-5)
  assert_close(out[2], out[0][:, ::-1], rtol=1e-5)


def test_deconvnet_matches_torch_reference():
  model = DeconvNet(NUM_CLASSES, width=WIDTH)
  x = np.random.default_rng(3).normal(size=(1, 195, 201, 3)).astype(np.float32)  # Not /32.
  variables = random_variables(model, x)
  ours = jax.jit(model.apply)(variables, x)
  with torch.no_grad():
    ref = torch_deconvnet(TorchParams(variables['params']), nchw(x), variables['batch_stats'])
  assert_close(ours, nhwc(ref))


def test_fcn_reference_initialisation():
  """Zero class scores (score_fr and the skips), bilinear bias-free upsampling: the fresh net
  outputs zeros, and adding a skip leaves the coarser net's prediction unchanged."""
  model = FCN(3, variant='8s', geometry='caffe', width=WIDTH)
  x = jnp.ones((1, 20, 30, 3))
  out, variables = jax.jit(model.init_with_output)(jax.random.key(0, impl='rbg'), x)
  p = variables['params']
  for name in ('score_fr', 'score_pool4', 'score_pool3'):
    assert not np.any(np.asarray(p[name]['kernel'])) and not np.any(np.asarray(p[name]['bias']))
  for name, size in (('upscore2', 4), ('upscore_pool4', 4), ('upscore8', 16)):
    assert set(p[name]) == {'kernel'}  # No bias (bias_term=False).
    np.testing.assert_array_equal(p[name]['kernel'], bilinear_kernel(size, 3))
  assert not np.any(np.asarray(out))
  assert np.std(np.asarray(p['backbone']['conv1_1']['kernel'])) > 0


# ---------------------------------------------------------------------------------------------
# Training behaviour: BatchNorm, dropout, gradients
# ---------------------------------------------------------------------------------------------


def test_deconvnet_batchnorm_updates_only_in_train_and_has_no_dropout():
  model = DeconvNet(NUM_CLASSES, width=WIDTH)
  x = np.random.default_rng(4).normal(size=(2, 193, 197, 3)).astype(np.float32)
  variables = random_variables(model, x)
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))

  out_train, new = apply(variables, x, train=True, mutable=('batch_stats',),
                         rngs={'dropout': jax.random.key(0)})
  again, _ = apply(variables, x, train=True, mutable=('batch_stats',),
                   rngs={'dropout': jax.random.key(1)})
  np.testing.assert_array_equal(out_train, again)  # Paper DeconvNet: no dropout.
  old_leaves = jax.tree.leaves(variables['batch_stats'])
  new_leaves = jax.tree.leaves(new['batch_stats'])
  assert len(new_leaves) == len(old_leaves) == 2 * (13 + 3 + 13)
  assert all(not np.allclose(a, b) for a, b in zip(old_leaves, new_leaves))
  # Momentum 0.9 on the batch statistics of conv1_1 (computed with torch).
  p, s = variables['params']['backbone'], variables['batch_stats']['backbone']
  h = F.conv2d(nchw(x), torch_weight(p['conv1_1']['kernel']), tensor(p['conv1_1']['bias']),
               padding=1).numpy()
  assert_close(new['batch_stats']['backbone']['bn1_1']['mean'],
               0.9 * np.asarray(s['bn1_1']['mean']) + 0.1 * h.mean(axis=(0, 2, 3)), rtol=1e-5)
  assert_close(new['batch_stats']['backbone']['bn1_1']['var'],
               0.9 * np.asarray(s['bn1_1']['var']) + 0.1 * h.var(axis=(0, 2, 3)), rtol=1e-4)

  out_eval, same = apply(variables, x, train=False, mutable=('batch_stats',))
  for a, b in zip(old_leaves, jax.tree.leaves(same['batch_stats'])):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(out_eval, out_train)


def test_sync_batchnorm_averages_over_the_axis():
  """sync_bn_axis: statistics of two shards of one image each equal local BN over both."""
  x = np.random.default_rng(5).normal(size=(2, 16, 16, 3)).astype(np.float32)
  local = vgg.VGG16(width=WIDTH, batch_norm=True)
  variables = random_variables(local, x)
  _, want = jax.jit(functools.partial(local.apply, train=True, mutable=['batch_stats']))(
      variables, x)
  synced = vgg.VGG16(width=WIDTH, batch_norm=True, sync_bn_axis='data')
  step = lambda xs: synced.apply(variables, xs, train=True, mutable=['batch_stats'])[1]
  got = jax.jit(jax.vmap(step, axis_name='data'))(x[:, None])
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    assert_close(b[0], a, rtol=1e-4)  # Float32 rounding of the two mean orders, 13 layers deep.
    assert_close(b[1], a, rtol=1e-4)


def test_fcn_dropout_only_in_train():
  model = FCN(NUM_CLASSES, variant='8s', geometry='same', width=WIDTH)
  x = np.random.default_rng(6).normal(size=(1, 32, 40, 3)).astype(np.float32)
  variables = random_variables(model, x)
  apply = jax.jit(model.apply, static_argnames='train')
  eval_out = apply(variables, x)
  train_a = apply(variables, x, train=True, rngs={'dropout': jax.random.key(0)})
  train_b = apply(variables, x, train=True, rngs={'dropout': jax.random.key(1)})
  assert not np.allclose(train_a, train_b) and not np.allclose(train_a, eval_out)
  no_dropout = FCN(NUM_CLASSES, variant='8s', geometry='same', width=WIDTH, dropout_rate=0.0)
  assert_close(jax.jit(no_dropout.apply, static_argnames='train')(
      variables, x, train=True, rngs={'dropout': jax.random.key(0)}), eval_out, rtol=1e-6)


def cross_entropy(logits, labels):
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1))


@pytest.mark.parametrize('name', ['fcn8s_caffe', 'deconvnet'])
def test_jit_grad_matches_torch_autograd(name):
  """jit(value_and_grad) of a cross-entropy in train mode (DeconvNet: batch-statistics BN through
  pooling switches and unpooling; FCN: dropout off so both sides are deterministic) against
  torch autograd of the reference forward, for every parameter. In float64 on both sides: with
  BN over few cells (fc6 is 1x1 here) float32 rounding is amplified into ~10% gradient noise."""
  with jax.enable_x64(True):
    if name == 'deconvnet':
      model, hw = DeconvNet(NUM_CLASSES, width=WIDTH, dtype=jnp.float64), (193, 199)
    else:
      model = FCN(NUM_CLASSES, '8s', 'caffe', width=WIDTH, dtype=jnp.float64, dropout_rate=0.0)
      hw = (24, 31)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, *hw, 3))
    labels = rng.integers(0, NUM_CLASSES, size=(2, *hw))
    variables = jax.tree.map(lambda v: np.asarray(v, np.float64), random_variables(model, x))
    params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}

    def loss_fn(params):
      logits, new_state = model.apply({'params': params, **state}, x, train=True,
                                      rngs={'dropout': jax.random.key(0)}, mutable=list(state))
      return cross_entropy(logits, jnp.asarray(labels)), new_state

    (loss, new_state), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

  tp = TorchParams(params)
  x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  if name == 'deconvnet':
    logits = torch_deconvnet(tp, x_torch, train=True)
  else:
    logits = torch_fcn(tp, x_torch, '8s', 'caffe')
  ref_loss = F.cross_entropy(logits, torch.from_numpy(labels))
  ref_loss.backward()
  np.testing.assert_allclose(float(loss), ref_loss.item(), rtol=1e-6)  # Logits leave as float32.
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert len(flat) == len(tp.leaves)
  for path, g in flat:
    key = tuple(k.key for k in path)
    ref = tp.grad(key)
    # A bias before a train-mode BN has zero gradient: compare on the scale of its kernel's.
    scale = np.abs(ref).max()
    if key[-1] == 'bias' and key[:-1] + ('kernel',) in tp.leaves:
      scale = max(scale, np.abs(tp.grad(key[:-1] + ('kernel',))).max())
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5 * scale, err_msg=str(key))
  assert np.abs(grads['backbone']['conv1_1']['kernel']).max() > 0
  if name == 'deconvnet':
    assert set(new_state) == {'batch_stats'}
