"""PSPNet and its dilated ResNet backbone, checked against PyTorch/torchvision.

References used here (all independent of jaxseg):
- torch.nn.functional.adaptive_avg_pool2d / interpolate for the pooling and resizing matrices;
- torchvision.models.ResNet (Bottleneck, replace_stride_with_dilation) for the backbone's layout,
  numerics and parameter counts;
- a transcription of hszhao/semseg model/pspnet.py (PPM + cls + aux heads) on that backbone for
  the full model's numerics.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')
from torch import nn as tnn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torchvision.models import resnet as tv_resnet  # noqa: E402

from jaxseg.models import pspnet, resnet  # noqa: E402

TINY = dict(width=1 / 16, stage_sizes=(1, 1, 1, 1))


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _nchw(a):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _numpy_variables(model, x, seed=0):
  """He-scaled random variables with the model's tree, without compiling its (slow) init."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      scale = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, scale, leaf.shape), jnp.float32)
    base = {'scale': 1.0, 'var': 1.0}.get(name, 0.0)
    return jnp.asarray(base + 0.1 * rng.random(leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


# ------------------------------------------------------------------ pooling and resizing

@pytest.mark.parametrize('size,bins', [((13, 29), (1, 2, 3, 6)), ((60, 47), (6, 5)),
                                       ((4, 5), (6,)), ((1, 7), (3,))])
def test_adaptive_avg_pool_matches_torch(size, bins):
  x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
  for b in bins:
    want = _nhwc(F.adaptive_avg_pool2d(_nchw(x).double(), b))
    got = jax.jit(pspnet.adaptive_avg_pool, static_argnums=1)(x, b)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('align_corners', [True, False])
@pytest.mark.parametrize('src,dst', [((9, 13), (65, 97)), ((60, 60), (473, 473)),
                                     ((13, 5), (3, 8)), ((1, 1), (5, 4)), ((7, 6), (1, 1))])
def test_resize_bilinear_matches_torch(src, dst, align_corners):
  x = np.random.default_rng(1).normal(size=(2, *src, 2)).astype(np.float32)
  # Reference in float64: torch's float32 kernel rounds the source coordinate of
  # align_corners=False (2e-5 off at 60 -> 473), ours is within 5e-7 of the exact value.
  want = _nhwc(F.interpolate(_nchw(x).double(), size=dst, mode='bilinear',
                             align_corners=align_corners))
  got = pspnet.resize_bilinear(jnp.asarray(x), dst, align_corners=align_corners)
  assert got.shape == (2, *dst, 2)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-6)


# ------------------------------------------------------------------ ResNet vs torchvision

def _torch_to_variables(state_dict, prefix=()):
  """Builds Flax variables from a torchvision ResNet state_dict via the documented mapping."""
  variables = {}
  for key, value in state_dict.items():
    target = resnet.torchvision_key_to_flax(key)
    if target is None:
      continue
    collection, path = target
    array = value.detach().numpy()
    if array.ndim == 4:
      array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    node = variables.setdefault(collection, {})
    for p in prefix + path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = jnp.asarray(array)
  return variables


def _randomise_bn(model: tnn.Module):
  """Non-trivial BN affine params and running stats, so the mapping of each is exercised."""
  g = torch.Generator().manual_seed(0)
  for m in model.modules():
    if isinstance(m, tnn.BatchNorm2d):
      with torch.no_grad():
        m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _torch_features(model, x):
  x = model.relu(model.bn1(model.conv1(x)))
  out = {'stem': x}
  x = model.maxpool(x)
  for i in range(1, 5):
    x = getattr(model, f'layer{i}')(x)
    out[f'layer{i}'] = x
  return out


@pytest.mark.parametrize('replace_stride,dilations', [
    ((False, True, True), (1, 1, 2, 4)),  # PSPNet: output stride 8.
    ((False, False, False), (1, 1, 1, 1)),  # Plain ResNet: strided 3x3 convs in every stage.
])
def test_resnet_matches_torchvision(replace_stride, dilations):
  torch.manual_seed(0)
  # Two blocks in the dilated stages: the first gets torchvision's previous_dilation.
  stage_sizes = (1, 1, 2, 2)
  ref = tv_resnet.ResNet(tv_resnet.Bottleneck, list(stage_sizes),
                         replace_stride_with_dilation=list(replace_stride)).eval()
  _randomise_bn(ref)
  x = np.random.default_rng(2).normal(size=(1, 37, 50, 3)).astype(np.float32)
  with torch.no_grad():
    want = _torch_features(ref, _nchw(x))

  model = resnet.ResNet(stage_sizes, dilations)
  variables = _torch_to_variables(ref.state_dict())
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert (jax.tree_util.tree_map(lambda a: a.shape, shapes)
          == jax.tree_util.tree_map(lambda a: a.shape, variables))
  got = jax.jit(model.apply)(variables, x)
  for name, value in want.items():
    assert got[name].shape == _nhwc(value).shape, name
    np.testing.assert_allclose(got[name], _nhwc(value), rtol=1e-4, atol=2e-4, err_msg=name)


@pytest.mark.parametrize('depth', [50, 101])
def test_full_resnet_layout_and_params_match_torchvision(depth):
  ref = getattr(torchvision.models, f'resnet{depth}')()  # weights=None: no download.
  model = resnet.ResNet(resnet.STAGE_SIZES[depth], (1, 1, 2, 4))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 33, 33, 3)))
  flat = {(c,) + tuple(k.key for k in path): leaf.shape
          for c in shapes for path, leaf in jax.tree_util.tree_flatten_with_path(shapes[c])[0]}
  mapped = set()
  for key, value in ref.state_dict().items():
    target = resnet.torchvision_key_to_flax(key)
    if target is None:
      continue
    full = (target[0],) + target[1]
    shape = tuple(value.shape)
    expected = (shape[2], shape[3], shape[1], shape[0]) if len(shape) == 4 else shape
    assert flat.get(full) == expected, (key, full)
    mapped.add(full)
  assert mapped == set(flat)  # Every Flax variable has a torchvision counterpart.
  torch_params = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith('fc.'))
  assert _count(shapes['params']) == torch_params


def test_torchvision_key_mapping_examples():
  assert resnet.torchvision_key_to_flax('layer3.5.bn2.running_mean') == (
      'batch_stats', ('layer3_5', 'bn2', 'mean'))
  assert resnet.torchvision_key_to_flax('layer1.0.downsample.0.weight') == (
      'params', ('layer1_0', 'downsample_conv', 'kernel'))
  assert resnet.torchvision_key_to_flax('layer1.0.downsample.1.weight') == (
      'params', ('layer1_0', 'downsample_bn', 'scale'))
  assert resnet.torchvision_key_to_flax('bn1.bias') == ('params', ('bn1', 'bias'))
  assert resnet.torchvision_key_to_flax('fc.weight') is None
  assert resnet.torchvision_key_to_flax('bn1.num_batches_tracked') is None
  with pytest.raises(ValueError, match='not a torchvision ResNet'):
    resnet.torchvision_key_to_flax('features.0.weight')


def test_resnet_rejects_bad_dilations():
  x = jnp.zeros((1, 16, 16, 3))
  with pytest.raises(ValueError, match='keep or double'):
    jax.eval_shape(resnet.ResNet((1, 1, 1, 1), (1, 1, 4, 4)).init, jax.random.key(0), x)
  with pytest.raises(ValueError, match='4 stage_sizes'):
    jax.eval_shape(resnet.ResNet((1, 1, 1), (1, 1, 1)).init, jax.random.key(0), x)


@pytest.mark.parametrize('size', [(65, 97), (64, 64), (33, 17)])
def test_dilated_resnet_output_stride_8(size):
  model = resnet.ResNet((1, 1, 1, 1), (1, 1, 2, 4), width=1 / 16)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0],
                       jnp.zeros((2, *size, 3)))
  down = lambda n, k, s, p: (n + 2 * p - k) // s + 1  # torch conv/pool output size.
  stem = [down(n, 7, 2, 3) for n in size]
  pooled = [down(n, 3, 2, 1) for n in stem]
  os8 = [down(n, 3, 2, 1) for n in pooled]
  assert out['stem'].shape == (2, *stem, 4)
  assert out['layer1'].shape == (2, *pooled, 16)
  for name, channels in (('layer2', 32), ('layer3', 64), ('layer4', 128)):
    assert out[name].shape == (2, *os8, channels), name
  assert os8 == [-(-n // 8) for n in size]


# ------------------------------------------------------------------ PSPNet vs semseg (torch)

class _TorchPSPNet(tnn.Module):
  """hszhao/semseg model/pspnet.py (PPM, cls, aux) on a torchvision dilated ResNet."""

  def __init__(self, backbone, classes, bins=(1, 2, 3, 6)):
    super().__init__()
    self.backbone = backbone
    self.ppm = tnn.ModuleList([tnn.Sequential(
        tnn.AdaptiveAvgPool2d(b), tnn.Conv2d(2048, 512, 1, bias=False), tnn.BatchNorm2d(512),
        tnn.ReLU(inplace=True)) for b in bins])
    self.cls = tnn.Sequential(
        tnn.Conv2d(4096, 512, 3, padding=1, bias=False), tnn.BatchNorm2d(512),
        tnn.ReLU(inplace=True), tnn.Dropout2d(p=0.1), tnn.Conv2d(512, classes, 1))
    self.aux = tnn.Sequential(
        tnn.Conv2d(1024, 256, 3, padding=1, bias=False), tnn.BatchNorm2d(256),
        tnn.ReLU(inplace=True), tnn.Dropout2d(p=0.1), tnn.Conv2d(256, classes, 1))

  def forward(self, x):
    size = x.shape[2:]
    feats = _torch_features(self.backbone, x)
    f4 = feats['layer4']
    y = torch.cat([f4] + [F.interpolate(m(f4), f4.shape[2:], mode='bilinear',
                                        align_corners=True) for m in self.ppm], 1)
    up = functools.partial(F.interpolate, size=size, mode='bilinear', align_corners=True)
    return up(self.cls(y)), up(self.aux(feats['layer3']))


def _psp_variables(ref: _TorchPSPNet):
  variables = _torch_to_variables(ref.backbone.state_dict(), prefix=('backbone',))
  heads = {}
  for i, b in enumerate((1, 2, 3, 6)):
    heads[f'ppm.{i}.1'] = ('ppm', f'bin{b}', 'conv')
    heads[f'ppm.{i}.2'] = ('ppm', f'bin{b}', 'bn')
  for head in ('cls', 'aux'):
    heads.update({f'{head}.0': (head, 'conv_bn', 'conv'), f'{head}.1': (head, 'conv_bn', 'bn'),
                  f'{head}.4': (head, 'classifier')})
  leaf_names = {('conv', 'weight'): ('params', 'kernel'), ('conv', 'bias'): ('params', 'bias'),
                ('bn', 'weight'): ('params', 'scale'), ('bn', 'bias'): ('params', 'bias'),
                ('bn', 'running_mean'): ('batch_stats', 'mean'),
                ('bn', 'running_var'): ('batch_stats', 'var')}
  for key, value in ref.state_dict().items():
    if key.startswith('backbone.') or key.endswith('num_batches_tracked'):
      continue
    module, _, leaf = key.rpartition('.')
    path = heads[module]
    kind = 'bn' if path[-1] == 'bn' else 'conv'
    collection, name = leaf_names[(kind, leaf)]
    array = value.detach().numpy()
    if array.ndim == 4:
      array = array.transpose(2, 3, 1, 0)
    node = variables[collection]
    for p in path:
      node = node.setdefault(p, {})
    node[name] = jnp.asarray(array)
  return variables


def test_pspnet_matches_torch_reference():
  torch.manual_seed(0)
  backbone = tv_resnet.ResNet(tv_resnet.Bottleneck, [1, 1, 2, 2],
                              replace_stride_with_dilation=[False, True, True])
  ref = _TorchPSPNet(backbone, classes=5)
  _randomise_bn(ref)
  x = np.random.default_rng(3).normal(size=(2, 41, 30, 3)).astype(np.float32)
  model = pspnet.PSPNet(num_classes=5, stage_sizes=(1, 1, 2, 2), dropout_rate=0.0)
  variables = _psp_variables(ref)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert (jax.tree_util.tree_map(lambda a: a.shape, shapes)
          == jax.tree_util.tree_map(lambda a: a.shape, variables))

  ref.eval()
  with torch.no_grad():
    want, _ = ref(_nchw(x))
  got = jax.jit(model.apply)(variables, x)
  np.testing.assert_allclose(got, _nhwc(want), rtol=1e-4, atol=1e-4)

  # Train mode (dropout off): batch statistics in BN, and the aux head is returned.
  for m in ref.modules():
    m.train(not isinstance(m, tnn.Dropout2d))
  with torch.no_grad():
    want, want_aux = ref(_nchw(x))
  (got, got_aux), _ = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
      variables, x)
  np.testing.assert_allclose(got, _nhwc(want), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got_aux, _nhwc(want_aux), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ PSPNet shapes, counts, training

@pytest.mark.parametrize('size', [(65, 97), (64, 48)])
def test_pspnet_output_shapes(size):
  model = pspnet.PSPNet(num_classes=7, **TINY)
  x = jnp.zeros((2, *size, 3))
  variables = _numpy_variables(model, x)
  logits = jax.jit(model.apply)(variables, x)
  assert logits.shape == (2, *size, 7) and logits.dtype == jnp.float32
  (logits, aux), _ = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
      variables, x, rngs={'dropout': jax.random.key(1)})
  assert logits.shape == aux.shape == (2, *size, 7)


# Expected parameter counts (trainable, i.e. torch parameters(); BN running stats excluded):
#   backbone: torchvision resnet50 / resnet101 without fc. torchvision's docs list 25,557,032 /
#     44,549,160 parameters with the 2048x1000+1000 = 2,049,000-parameter fc; also recomputed here
#     from the torchvision models themselves.
#   heads (semseg model/pspnet.py, 21 classes):
#     PPM  4 x (2048*512 conv + 2*512 BN)              =  4,198,400
#     cls  4096*512*9 conv + 2*512 BN + 512*21 + 21    = 18,886,165
#     aux  1024*256*9 conv + 2*256 BN + 256*21 + 21    =  2,365,205   -> heads 25,449,770
TORCHVISION_DOCS_PARAMS = {50: 25_557_032, 101: 44_549_160}
HEAD_PARAMS_21 = (4 * (2048 * 512 + 2 * 512) + (4096 * 512 * 9 + 2 * 512 + 512 * 21 + 21)
                  + (1024 * 256 * 9 + 2 * 256 + 256 * 21 + 21))
EXPECTED_PSPNET_PARAMS = {50: 48_957_802, 101: 67_949_930}


@pytest.mark.parametrize('depth', [50, 101])
def test_pspnet_full_parameter_count(depth):
  ref = getattr(torchvision.models, f'resnet{depth}')()
  backbone = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith('fc.'))
  assert backbone == TORCHVISION_DOCS_PARAMS[depth] - (2048 * 1000 + 1000)
  assert HEAD_PARAMS_21 == 25_449_770
  assert backbone + HEAD_PARAMS_21 == EXPECTED_PSPNET_PARAMS[depth]

  model = pspnet.PSPNet(num_classes=21, depth=depth)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 473, 473, 3)))
  assert _count(shapes['params']) == EXPECTED_PSPNET_PARAMS[depth]
  assert _count(shapes['params']['backbone']) == backbone
  # Running mean + var: twice the BN channels (= BN scale + bias count).
  bn_channels = sum(m.num_features for m in ref.modules() if isinstance(m, tnn.BatchNorm2d))
  assert _count(shapes['batch_stats']) == 2 * (bn_channels + 4 * 512 + 512 + 256)


def test_init_mode_does_not_change_the_parameter_tree():
  model = pspnet.PSPNet(num_classes=3, **TINY)
  x = jnp.zeros((1, 33, 33, 3))
  eval_init = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  train_init = jax.eval_shape(
      lambda r, x: model.init({'params': r, 'dropout': r}, x, train=True), jax.random.key(0), x)
  assert 'aux' in eval_init['params']
  assert (jax.tree_util.tree_structure(eval_init) == jax.tree_util.tree_structure(train_init))


def test_batch_stats_update_in_train_mode_only():
  model = pspnet.PSPNet(num_classes=3, **TINY)
  x = jax.random.normal(jax.random.key(0), (2, 33, 41, 3))
  variables = _numpy_variables(model, x)
  _, updated = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
      variables, x, rngs={'dropout': jax.random.key(2)})
  changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                   variables['batch_stats'], updated['batch_stats'])
  assert all(jax.tree_util.tree_leaves(changed))  # Every BN layer, aux head included.
  _, same = jax.jit(functools.partial(model.apply, train=False, mutable=['batch_stats']))(
      variables, x)
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables['batch_stats'],
                         same['batch_stats'])


def test_jit_grad_of_loss():
  model = pspnet.PSPNet(num_classes=4, **TINY)
  x = jax.random.normal(jax.random.key(0), (2, 25, 31, 3))
  labels = jax.random.randint(jax.random.key(1), (2, 25, 31), 0, 4)
  variables = _numpy_variables(model, x)

  def loss_fn(params):
    (logits, aux), _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                   x, train=True, mutable=['batch_stats'],
                                   rngs={'dropout': jax.random.key(3)})
    ce = lambda l: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(l), labels[..., None], -1))
    return ce(logits) + 0.4 * ce(aux)

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
  assert np.isfinite(loss)
  norms = jax.tree_util.tree_map(lambda g: float(jnp.linalg.norm(g)), grads)
  assert all(np.isfinite(n) for n in jax.tree_util.tree_leaves(norms))
  # Both heads and the backbone receive gradient.
  for head in ('cls', 'aux', 'ppm', 'backbone'):
    assert sum(jax.tree_util.tree_leaves(norms[head])) > 0, head


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = pspnet.PSPNet(num_classes=3, dtype=jnp.bfloat16, **TINY)
  x = jnp.ones((1, 33, 33, 3))
  variables = _numpy_variables(model, x)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert {a.dtype for a in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype('float32')}
  assert jax.jit(model.apply)(variables, x).dtype == jnp.float32


@pytest.mark.parametrize('fields,message', [
    ({'depth': 34}, 'depth must be one of'),
    ({'dropout_rate': 1.0}, r'dropout_rate must be in \[0, 1\)'),
    ({'num_classes': 0}, 'num_classes must be a positive int'),
])
def test_pspnet_rejects_bad_fields(fields, message):
  model = pspnet.PSPNet(**{'num_classes': 3, **fields})
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 33, 33, 3)))
  with pytest.raises(ValueError, match='NHWC'):
    jax.eval_shape(pspnet.PSPNet(num_classes=3).init, jax.random.key(0), jnp.zeros((33, 33, 3)))


def test_sync_bn_over_devices_equals_global_batch_bn():
  """With sync_bn_axis, per-device BN statistics are those of the whole (global) batch."""
  if jax.device_count() < 2:
    pytest.skip('needs 2 devices (tests/conftest.py forces 8 CPU devices)')
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ('data',))
  P = jax.sharding.PartitionSpec
  kw = dict(num_classes=3, dropout_rate=0.0, **TINY)
  x = jax.random.normal(jax.random.key(0), (4, 25, 19, 3))
  variables = _numpy_variables(pspnet.PSPNet(**kw), x)

  def step(model, variables, x):
    (logits, aux), state = model.apply(variables, x, train=True, mutable=['batch_stats'])
    return logits, aux, state['batch_stats']

  want = jax.jit(functools.partial(step, pspnet.PSPNet(**kw)))(variables, x)
  synced = jax.jit(jax.shard_map(
      functools.partial(step, pspnet.PSPNet(sync_bn_axis='data', **kw)), mesh=mesh,
      in_specs=(P(), P('data')), out_specs=(P('data'), P('data'), P())))
  got = synced(variables, x)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
