"""PSPNet's authors' ResNet variants and hszhao/semseg's weights, checked against PyTorch.

The reference is an independent PyTorch transcription of hszhao/semseg model/resnet.py
(deep_base=True) and model/pspnet.py (layer0 Sequential, the dilation loop over named_modules,
PPM, cls, aux), shrunk by a channel divisor and fewer blocks. Its state dicts are saved in
semseg's exact layouts (resnet*_v2.pth; a DataParallel checkpoint {'state_dict': 'module.*'}),
read back with torch.load(weights_only=True), converted by jaxseg.weights.semseg and loaded into
jaxseg's ResNet / PSPNet. The Caffe variant is checked against the same transcription with the
stride moved to the 1x1 conv and Caffe's ceil-mode pool1 (hszhao/PSPNet
evaluation/prototxt/pspnet50_ADE20K_473.prototxt).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip('torch')
from torch import nn as tnn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from jaxseg.models import pspnet, resnet  # noqa: E402
from jaxseg.weights import convert, semseg  # noqa: E402

DIV = 16  # Channel divisor of the transcription = jaxseg width 1/16 (all channel counts exact).
WIDTH = 1 / DIV
CLASSES = 5


# ------------------------------------------------------------------ transcription of semseg

def _c(channels: int) -> int:
  return channels // DIV


class _Bottleneck(tnn.Module):
  """semseg model/resnet.py Bottleneck; stride_1x1 moves the stride to conv1 (Caffe ResNet v1)."""
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None, stride_1x1=False):
    super().__init__()
    self.conv1 = tnn.Conv2d(inplanes, planes, 1, stride=stride if stride_1x1 else 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, stride=1 if stride_1x1 else stride, padding=1,
                            bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(planes * 4)
    self.relu = tnn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    residual = x if self.downsample is None else self.downsample(x)
    return self.relu(out + residual)


class _ResNet(tnn.Module):
  """semseg model/resnet.py ResNet(Bottleneck, layers, deep_base=True), channels / DIV."""

  def __init__(self, layers, stride_1x1=False, ceil_mode=False):
    super().__init__()
    self.stride_1x1 = stride_1x1
    self.inplanes = _c(128)
    self.conv1 = tnn.Conv2d(3, _c(64), 3, stride=2, padding=1, bias=False)
    self.bn1 = tnn.BatchNorm2d(_c(64))
    self.conv2 = tnn.Conv2d(_c(64), _c(64), 3, padding=1, bias=False)
    self.bn2 = tnn.BatchNorm2d(_c(64))
    self.conv3 = tnn.Conv2d(_c(64), _c(128), 3, padding=1, bias=False)
    self.bn3 = tnn.BatchNorm2d(_c(128))
    self.relu = tnn.ReLU(inplace=True)
    self.maxpool = tnn.MaxPool2d(3, stride=2, padding=1, ceil_mode=ceil_mode)
    self.layer1 = self._make_layer(_c(64), layers[0])
    self.layer2 = self._make_layer(_c(128), layers[1], stride=2)
    self.layer3 = self._make_layer(_c(256), layers[2], stride=2)
    self.layer4 = self._make_layer(_c(512), layers[3], stride=2)
    self.fc = tnn.Linear(_c(512) * 4, 1000)

  def _make_layer(self, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * 4:
      downsample = tnn.Sequential(
          tnn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
          tnn.BatchNorm2d(planes * 4))
    layers = [_Bottleneck(self.inplanes, planes, stride, downsample, self.stride_1x1)]
    self.inplanes = planes * 4
    layers += [_Bottleneck(self.inplanes, planes, stride_1x1=self.stride_1x1)
               for _ in range(1, blocks)]
    return tnn.Sequential(*layers)

  def features(self, x):
    x = self.relu(self.bn1(self.conv1(x)))
    x = self.relu(self.bn2(self.conv2(x)))
    x = self.relu(self.bn3(self.conv3(x)))
    out = {'stem': x}
    x = self.maxpool(x)
    for i in range(1, 5):
      x = getattr(self, f'layer{i}')(x)
      out[f'layer{i}'] = x
    return out


def _dilate(layer3, layer4, stride_1x1=False):
  """semseg model/pspnet.py's loop: every conv2 dilated (padding = dilation, stride 1), and the
  downsample stride 1; with the stride on the 1x1 conv (Caffe), conv1's stride is dropped too."""
  for layer, d in ((layer3, 2), (layer4, 4)):
    for n, m in layer.named_modules():
      if 'conv2' in n:
        m.dilation, m.padding, m.stride = (d, d), (d, d), (1, 1)
      elif 'downsample.0' in n or (stride_1x1 and 'conv1' in n):
        m.stride = (1, 1)


class _PSPNet(tnn.Module):
  """semseg model/pspnet.py PSPNet (eval forward; the aux head returned too), channels / DIV."""

  def __init__(self, layers, classes, bins=(1, 2, 3, 6)):
    super().__init__()
    r = _ResNet(layers)
    self.layer0 = tnn.Sequential(r.conv1, r.bn1, r.relu, r.conv2, r.bn2, r.relu, r.conv3, r.bn3,
                                 r.relu, r.maxpool)
    self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
    _dilate(self.layer3, self.layer4)
    fea_dim = _c(2048)
    self.ppm = _PPM(fea_dim, fea_dim // len(bins), bins)
    self.cls = tnn.Sequential(
        tnn.Conv2d(fea_dim * 2, _c(512), 3, padding=1, bias=False), tnn.BatchNorm2d(_c(512)),
        tnn.ReLU(inplace=True), tnn.Dropout2d(p=0.1), tnn.Conv2d(_c(512), classes, 1))
    self.aux = tnn.Sequential(
        tnn.Conv2d(_c(1024), _c(256), 3, padding=1, bias=False), tnn.BatchNorm2d(_c(256)),
        tnn.ReLU(inplace=True), tnn.Dropout2d(p=0.1), tnn.Conv2d(_c(256), classes, 1))

  def forward(self, x):
    # semseg upsamples to (H - 1) / 8 * 8 + 1 = H for its 8k+1 crops; the input size in general.
    up = functools.partial(F.interpolate, size=x.shape[2:], mode='bilinear', align_corners=True)
    x = self.layer2(self.layer1(self.layer0(x)))
    x_tmp = self.layer3(x)
    x = self.cls(self.ppm(self.layer4(x_tmp)))
    return up(x), up(self.aux(x_tmp))


class _PPM(tnn.Module):

  def __init__(self, in_dim, reduction_dim, bins):
    super().__init__()
    self.features = tnn.ModuleList([tnn.Sequential(
        tnn.AdaptiveAvgPool2d(b), tnn.Conv2d(in_dim, reduction_dim, 1, bias=False),
        tnn.BatchNorm2d(reduction_dim), tnn.ReLU(inplace=True)) for b in bins])

  def forward(self, x):
    out = [x] + [F.interpolate(f(x), x.shape[2:], mode='bilinear', align_corners=True)
                 for f in self.features]
    return torch.cat(out, 1)


def _randomise(model: tnn.Module, seed: int = 0):
  """Non-trivial BN affine params and running stats, so each mapping is exercised."""
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, tnn.BatchNorm2d):
      with torch.no_grad():
        m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
  return model.eval()


def _saved(obj, tmp_path):
  """torch.save + torch.load(weights_only=True) + the 'state_dict' unwrap of files.py."""
  path = tmp_path / 'weights.pth'
  torch.save(obj, path)
  obj = torch.load(path, map_location='cpu', weights_only=True)
  obj = obj.get('state_dict', obj)
  return {k: v.numpy() for k, v in obj.items()}, str(path)


def _variables(weights: convert.PretrainedWeights, shapes, strip: str = ''):
  """Flax variables from converted weights; every leaf of `shapes` set, with its shape."""
  arrays = {k.replace(strip, '', 1): v for k, v in weights.arrays.items()}
  want = {k: v.shape for k, v in traverse_util.flatten_dict(shapes, sep='/').items()}
  assert set(arrays) == set(want)
  for key, shape in want.items():
    assert arrays[key].shape == shape, key
  return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in arrays.items()}, sep='/')


def _nchw(a):
  return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _check_close(got, want, name, tol=1e-4):
  """Max error relative to the reference's largest magnitude; printed for the report."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (name, got.shape, want.shape)
  rel = float(np.abs(got - want).max() / np.abs(want).max())
  print(f'{name}: max abs {np.abs(got - want).max():.2e}, max rel {rel:.2e}')
  assert rel < tol, name


# ------------------------------------------------------------------ trained PSPNet checkpoint

@pytest.fixture(scope='module')
def psp_checkpoint(tmp_path_factory):
  torch.manual_seed(0)
  ref = _randomise(_PSPNet((1, 1, 2, 1), CLASSES))
  ckpt = {'epoch': 50, 'state_dict': tnn.DataParallel(ref).state_dict(), 'optimizer': {}}
  state_dict, path = _saved(ckpt, tmp_path_factory.mktemp('semseg'))
  assert all(k.startswith('module.') for k in state_dict)
  return ref, state_dict, path


@pytest.mark.parametrize('size', [(65, 65), (50, 43)])  # 8k+1 (semseg's crops) and not.
def test_semseg_pspnet_checkpoint_matches_torch(psp_checkpoint, size):
  ref, state_dict, path = psp_checkpoint
  weights = semseg.convert_semseg(state_dict, path, stage_sizes=(1, 1, 2, 1))
  assert weights.arch == 'pspnet50' and weights.model_fields == {'backbone': 'semseg'}
  assert weights.normalization == convert.TORCHVISION_NORMALIZATION
  assert weights.sources['params/cls/classifier/bias'] == 'module.cls.4.bias'
  assert weights.skipped == ()

  model = pspnet.PSPNet(CLASSES, width=WIDTH, stage_sizes=(1, 1, 2, 1), backbone='semseg')
  x = np.random.default_rng(1).normal(size=(1, *size, 3)).astype(np.float32)
  variables = _variables(weights, jax.eval_shape(model.init, jax.random.key(0), x))
  with torch.no_grad():
    want, want_aux = ref(_nchw(x))
  _check_close(jax.jit(model.apply)(variables, x), _nhwc(want), f'PSPNet logits {size}')

  if size == (65, 65):  # The aux head, which eval mode skips, on jaxseg's own layer3.
    backbone = resnet.ResNet((1, 1, 2, 1), pspnet.PSP_DILATIONS, WIDTH,
                             **pspnet.backbone_fields('semseg', 50))
    features = backbone.apply({c: variables[c]['backbone'] for c in variables}, x)
    head = pspnet._Head(_c(256), CLASSES, 0.1)  # pylint: disable=protected-access
    aux = head.apply({c: variables[c]['aux'] for c in variables}, features['layer3'], False)
    aux = pspnet.resize_bilinear(aux, size)
    _check_close(aux, _nhwc(want_aux), 'PSPNet aux logits')


def test_semseg_pspnet_without_prefix_and_without_aux(psp_checkpoint):
  _, state_dict, _ = psp_checkpoint
  plain = {k[len('module.'):]: v for k, v in state_dict.items()}
  convert_tiny = functools.partial(semseg.convert_semseg, stage_sizes=(1, 1, 2, 1))
  full = convert_tiny(plain)
  assert full.arrays.keys() == convert_tiny(state_dict).arrays.keys()
  assert full.sources['params/cls/classifier/bias'] == 'cls.4.bias'
  no_aux = convert_tiny({k: v for k, v in plain.items() if not k.startswith('aux.')})
  assert set(full.arrays) - set(no_aux.arrays) == {k for k in full.arrays if '/aux/' in k}
  assert any('/aux/' in k for k in full.arrays)


def test_semseg_recognised_by_names():
  # Full-depth transcriptions (names only; no forward pass).
  for depth, sizes in resnet.STAGE_SIZES.items():
    backbone = list(_ResNet(sizes).state_dict())
    model = list(tnn.DataParallel(_PSPNet(sizes, CLASSES)).state_dict())
    assert semseg.is_semseg_backbone(backbone) == f'resnet{depth}_semseg'
    assert semseg.is_semseg_pspnet(backbone) is None
    assert semseg.is_semseg_pspnet(model) == semseg.is_semseg_pspnet(
        [n[len('module.'):] for n in model]) == f'pspnet{depth}'
    assert semseg.is_semseg_backbone(model) is None
  tiny = list(_ResNet((1, 1, 2, 1)).state_dict())  # Not ResNet-50/101: not recognised.
  assert semseg.is_semseg_backbone(tiny) is None
  with pytest.raises(ValueError, match='r.pth: a semseg ResNet whose layer3 has 2 blocks'):
    semseg.convert_semseg({n: np.zeros(1, np.float32) for n in tiny}, 'r.pth')
  torchvision_names = ['conv1.weight', 'bn1.weight', 'layer1.0.conv1.weight', 'fc.weight']
  assert semseg.is_semseg_backbone(torchvision_names) is None
  assert semseg.is_semseg_pspnet(torchvision_names) is None
  with pytest.raises(ValueError, match='tv.pth is neither a semseg'):
    semseg.convert_semseg({n: np.zeros(1, np.float32) for n in torchvision_names}, 'tv.pth')


def test_semseg_errors_name_file_and_tensors(psp_checkpoint):
  _, state_dict, _ = psp_checkpoint
  convert_tiny = functools.partial(semseg.convert_semseg, stage_sizes=(1, 1, 2, 1))
  broken = dict(state_dict)
  del broken['module.ppm.features.2.2.running_var']
  with pytest.raises(ValueError, match=r'ck\.pth: 1 tensor.*missing: ppm\.features\.2\.2\.running'):
    convert_tiny(broken, 'ck.pth')
  partial_aux = {k: v for k, v in state_dict.items() if k != 'module.aux.4.bias'}
  with pytest.raises(ValueError, match=r'missing: aux\.4\.bias'):
    convert_tiny(partial_aux, 'ck.pth')
  extra = {**state_dict, 'module.extra.weight': np.zeros(3, np.float32)}
  with pytest.raises(ValueError, match=r'ck\.pth: 1 tensor.*does not have: module\.extra\.weight'):
    convert_tiny(extra, 'ck.pth')
  wrong_rank = {**state_dict, 'module.cls.4.weight': np.zeros((5, 32), np.float32)}
  with pytest.raises(ValueError, match=r"ck\.pth: tensor 'module\.cls\.4\.weight' has shape"):
    convert_tiny(wrong_rank, 'ck.pth')


# ------------------------------------------------------------------ ImageNet backbone file

@pytest.mark.parametrize('dilated', [False, True])
def test_semseg_backbone_file_matches_torch(tmp_path, dilated):
  torch.manual_seed(1)
  stage_sizes = (1, 1, 2, 2)
  ref = _randomise(_ResNet(stage_sizes), seed=1)
  state_dict, path = _saved(ref.state_dict(), tmp_path)  # fc.* and num_batches_tracked included.
  weights = semseg.convert_semseg(state_dict, path, stage_sizes=stage_sizes)
  assert weights.arch == 'resnet50_semseg' and set(weights.skipped) == {'fc.weight', 'fc.bias'}
  assert weights.sources['params/backbone/conv3/kernel'] == 'conv3.weight'
  if dilated:  # semseg's PSPNet backbone: the first blocks of layer3/4 are dilated too.
    _dilate(ref.layer3, ref.layer4)
  model = resnet.ResNet(stage_sizes, (1, 1, 2, 4) if dilated else (1, 1, 1, 1), WIDTH,
                        stem='deep', dilate_first_block=True)
  x = np.random.default_rng(2).normal(size=(1, 57, 40, 3)).astype(np.float32)
  variables = _variables(weights, jax.eval_shape(model.init, jax.random.key(0), x),
                         strip='backbone/')
  with torch.no_grad():
    want = ref.features(_nchw(x))
  got = jax.jit(model.apply)(variables, x)
  for name in ('stem', 'layer4'):
    _check_close(got[name], _nhwc(want[name]), f'backbone {name} (dilated={dilated})')


def test_deep_stem_key_mapping():
  assert resnet.torchvision_key_to_flax('conv3.weight', stem='deep') == (
      'params', ('conv3', 'kernel'))
  assert resnet.torchvision_key_to_flax('bn2.running_var', stem='deep') == (
      'batch_stats', ('bn2', 'var'))
  with pytest.raises(ValueError, match='not a torchvision ResNet'):
    resnet.torchvision_key_to_flax('conv2.weight')
  with pytest.raises(ValueError, match="stem must be one of"):
    resnet.torchvision_key_to_flax('conv1.weight', stem='caffe')


# ------------------------------------------------------------------ Caffe variant

def test_caffe_backbone_stride_on_1x1_matches_torch(tmp_path):
  torch.manual_seed(2)
  stage_sizes = (1, 2, 2, 1)
  ref = _randomise(_ResNet(stage_sizes, stride_1x1=True, ceil_mode=True), seed=2)
  _dilate(ref.layer3, ref.layer4, stride_1x1=True)
  assert ref.layer2[0].conv1.stride == (2, 2) and ref.layer2[0].conv2.stride == (1, 1)
  state_dict, _ = _saved(ref.state_dict(), tmp_path)
  weights = semseg.convert_semseg(state_dict, stage_sizes=stage_sizes)
  fields = pspnet.backbone_fields('caffe', 50)
  assert fields['stride_on'] == '1x1'  # pspnet50_ADE20K_473; the 101-layer models: '3x3'.
  assert pspnet.backbone_fields('caffe', 101)['stride_on'] == '3x3'
  model = resnet.ResNet(stage_sizes, pspnet.PSP_DILATIONS, WIDTH, **fields)
  # 64 -> stem 32 (even): Caffe's ceil-mode pool1 gives 17, floor mode would give 16.
  x = np.random.default_rng(3).normal(size=(1, 64, 47, 3)).astype(np.float32)
  variables = _variables(weights, jax.eval_shape(model.init, jax.random.key(0), x),
                         strip='backbone/')
  with torch.no_grad():
    want = ref.features(_nchw(x))
  got = jax.jit(model.apply)(variables, x)
  assert got['layer1'].shape[1:3] == (17, 13)
  for name in ('layer1', 'layer2', 'layer4'):
    _check_close(got[name], _nhwc(want[name]), f'caffe backbone {name}')
  # Moving the stride back to the 3x3 conv (same parameters) changes layer2 far beyond the
  # parity error (the identity-dominated residual keeps the change small in absolute terms).
  v15 = resnet.ResNet(stage_sizes, pspnet.PSP_DILATIONS, WIDTH,
                      **{**fields, 'stride_on': '3x3'}).apply(variables, x)
  ref_layer2 = _nhwc(want['layer2'])
  assert np.abs(np.asarray(v15['layer2']) - ref_layer2).max() / np.abs(ref_layer2).max() > 1e-3


def test_pspnet_backbone_validation():
  x = jnp.zeros((1, 33, 33, 3))
  init = lambda m: jax.eval_shape(m.init, jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"config\.model\.backbone\) must be one of"):
    init(pspnet.PSPNet(3, width=WIDTH, stage_sizes=(1, 1, 1, 1), backbone='deep'))
  with pytest.raises(ValueError, match="stem must be one of 'torchvision', 'deep'"):
    init(resnet.ResNet((1, 1, 1, 1), width=WIDTH, stem='semseg'))
  with pytest.raises(ValueError, match="stride_on must be one of '3x3', '1x1'"):
    init(resnet.ResNet((1, 1, 1, 1), width=WIDTH, stride_on='3x1'))
  # The torchvision default keeps its tree; 'semseg' adds the deep stem's conv2/conv3.
  tv = init(pspnet.PSPNet(3, width=WIDTH, stage_sizes=(1, 1, 1, 1)))['params']['backbone']
  deep = init(pspnet.PSPNet(3, width=WIDTH, stage_sizes=(1, 1, 1, 1),
                            backbone='semseg'))['params']['backbone']
  assert tv['conv1']['kernel'].shape == (7, 7, 3, 4) and 'conv2' not in tv
  assert deep['conv1']['kernel'].shape == (3, 3, 3, 4)
  assert deep['conv3']['kernel'].shape == (3, 3, 4, 8)
  assert deep['layer1_0']['downsample_conv']['kernel'].shape == (1, 1, 8, 16)
