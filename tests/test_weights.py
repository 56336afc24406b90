"""ImageNet weight import: torchvision VGG16 / ResNet-50/101 -> jaxseg, checked against PyTorch.

Parity: random-initialised torchvision models (random biases, non-trivial BatchNorm statistics and
affine) are converted, loaded into the real jaxseg models, and every backbone stage the heads use
is compared with torch's own forward pass, relative max error max|a - b| / max|b| <= 1e-4 in
float32, eval mode, on a square and a non-square input. Then the CLI and config round trips and
every bad-input path.
"""
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')
F = torch.nn.functional

import optax  # pylint: disable=g-import-not-at-top

from jaxseg import config_loading, parallel, train, weights  # pylint: disable=g-import-not-at-top
from jaxseg.models import create_model  # pylint: disable=g-import-not-at-top

TOLERANCE = 1e-4
VGG_SIZES = ((224, 224), (256, 320))  # 224: fc6 sees exactly torchvision's 7x7 pool5.
RESNET_SIZES = ((224, 224), (160, 224))
# torchvision vgg16().features index -> jaxseg VGG16 feature: each block's last ReLU and its pool.
TORCH_VGG_TAPS = {3: 'block1', 4: 'pool1', 8: 'block2', 9: 'pool2', 15: 'block3', 16: 'pool3',
                  22: 'block4', 23: 'pool4', 29: 'block5', 30: 'pool5'}
REPO = pathlib.Path(__file__).resolve().parents[1]


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.abs(a - b).max() / np.abs(b).max())


def nchw_to_nhwc(t) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def randomize(model):
  """Non-trivial biases, BN affine and running statistics (torchvision inits them to 0/1)."""
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
        module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.2)
        module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.2)
        module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) * 1.5 + 0.5)
      elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
        module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
  return model.eval()


def state_dict_np(model) -> dict:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def model_variables(model, converted_path, model_name, shape):
  """Real model's variable tree: converted backbone loaded, every other leaf zero."""
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  loaded, report = weights.load_pretrained(abstract, converted_path, model_name, log=None)
  fill = lambda leaf: jnp.zeros(leaf.shape, leaf.dtype) if isinstance(
      leaf, jax.ShapeDtypeStruct) else leaf
  return jax.tree.map(fill, loaded), report


def run_captured(model, variables, x, names):
  """Model forward (eval) returning the outputs of the named top-level submodules."""
  def forward(variables, x):
    _, state = model.apply(
        variables, x, train=False, mutable=['intermediates'],
        capture_intermediates=lambda mdl, method: method == '__call__' and mdl.name in names)
    return {name: state['intermediates'][name]['__call__'][0] for name in names}
  return jax.jit(forward)(variables, jnp.asarray(x))


@pytest.fixture(scope='module', autouse=True)
def _torch_threads():
  previous = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(previous)


@pytest.fixture(scope='module')
def torch_vgg16():
  torch.manual_seed(0)
  return randomize(torchvision.models.vgg16())


@pytest.fixture(scope='module')
def torch_resnet50():
  torch.manual_seed(0)
  return randomize(torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]))


@pytest.fixture(scope='module')
def resnet50_npz(torch_resnet50, tmp_path_factory):
  path = tmp_path_factory.mktemp('r50') / 'resnet50.npz'
  weights.save_npz(weights.convert_state_dict(state_dict_np(torch_resnet50), 'resnet50'), path)
  return path


@pytest.fixture(scope='module')
def resnet50_pth(torch_resnet50, tmp_path_factory):
  path = tmp_path_factory.mktemp('r50pth') / 'resnet50.pth'
  torch.save(torch_resnet50.state_dict(), path)
  return path


def abstract_variables(model_name, shape=(1, 224, 224, 3)):
  model = create_model(model_name, 21)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))


# ------------------------------------------------------------------ layout (NumPy only, fast)


def test_fc6_surgery_keeps_torch_flatten_order():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(5, 3 * 7 * 7)).astype(np.float32)
  b = rng.normal(size=(5,)).astype(np.float32)
  pool5 = rng.normal(size=(3, 7, 7)).astype(np.float32)  # torch (C, H, W).
  linear = w @ pool5.reshape(-1) + b  # torch.flatten(x, 1) then Linear.
  kernel = weights.convert._fc6_kernel(w, 'classifier.0.weight')  # pylint: disable=protected-access
  conv = np.einsum('hwio,hwi->o', kernel, pool5.transpose(1, 2, 0)) + b  # Valid 7x7 conv, NHWC.
  np.testing.assert_allclose(conv, linear, rtol=1e-5, atol=1e-5)
  fc7 = weights.convert._fc_as_1x1(w[:, :4], 'classifier.3.weight')  # pylint: disable=protected-access
  np.testing.assert_array_equal(fc7[0, 0], w[:, :4].T)


# ------------------------------------------------------------------ parity with PyTorch


def test_vgg16_parity_fcn_trunk_and_fc6_fc7(torch_vgg16, tmp_path):
  tv = torch_vgg16
  path = tmp_path / 'vgg16.npz'
  weights.save_npz(weights.convert_state_dict(state_dict_np(tv), 'vgg16'), path)
  model = create_model('fcn32s', 21, geometry='same')
  variables, report = model_variables(model, path, 'fcn32s', (1, 224, 224, 3))
  assert len(report.loaded) == 30 and all(k.split('/')[1] in ('backbone', 'fc6', 'fc7')
                                          for k in report.loaded)
  w6 = tv.classifier[0].weight.reshape(4096, 512, 7, 7)  # avgpool-free convolutional fc6.
  w7 = tv.classifier[3].weight.reshape(4096, 4096, 1, 1)
  errors = {}
  rng = np.random.default_rng(0)
  for h, w in VGG_SIZES:
    x = rng.normal(size=(1, 3, h, w)).astype(np.float32)
    with torch.no_grad():
      ref, t = {}, torch.from_numpy(x)
      for i, layer in enumerate(tv.features):
        t = layer(t)
        if i in TORCH_VGG_TAPS:
          ref[TORCH_VGG_TAPS[i]] = t
      fc6 = F.conv2d(ref['pool5'], w6, tv.classifier[0].bias, padding=3)  # FCN 'same': SAME.
      fc7 = F.conv2d(F.relu(fc6), w7, tv.classifier[3].bias)
      if (h, w) == (224, 224):  # torchvision's own classifier path on the 7x7 pool5.
        flat = torch.flatten(tv.avgpool(ref['pool5']), 1)
        linear6 = tv.classifier[0](flat)
        linear7 = tv.classifier[3](F.relu(linear6))
    out = run_captured(model, variables, x.transpose(0, 2, 3, 1), ('backbone', 'fc6', 'fc7'))
    for name, value in ref.items():
      errors[f'{name} {h}x{w}'] = rel_err(out['backbone'][name], nchw_to_nhwc(value))
    errors[f'fc6 conv {h}x{w}'] = rel_err(out['fc6'], nchw_to_nhwc(fc6))
    errors[f'fc7 conv {h}x{w}'] = rel_err(out['fc7'], nchw_to_nhwc(fc7))
    if (h, w) == (224, 224):
      errors['fc6 = classifier.0(flatten(pool5)) 224x224'] = rel_err(out['fc6'][:, 3, 3], linear6)
      errors['fc7 = classifier.3(relu(fc6)) 224x224'] = rel_err(out['fc7'][:, 3, 3], linear7)
  print('\nvgg16 relative max errors:\n' + '\n'.join(f'  {k}: {v:.2e}' for k, v in errors.items()))
  failing = {k: v for k, v in errors.items() if not v <= TOLERANCE}
  assert not failing, failing


def torch_resnet_stages(tv, x) -> dict:
  with torch.no_grad():
    stem = tv.relu(tv.bn1(tv.conv1(torch.from_numpy(x))))
    out, t = {'stem': stem}, tv.maxpool(stem)
    for i in range(1, 5):
      t = getattr(tv, f'layer{i}')(t)
      out[f'layer{i}'] = t
  return out


def check_resnet_parity(tv, arch, model_name, path):
  model = create_model(model_name, 21)
  variables, report = model_variables(model, path, model_name, (1, 64, 64, 3))
  assert {k.split('/')[0] for k in report.loaded} == {'params', 'batch_stats'}
  errors, rng = {}, np.random.default_rng(0)
  for h, w in RESNET_SIZES:
    x = rng.normal(size=(1, 3, h, w)).astype(np.float32)
    ref = torch_resnet_stages(tv, x)
    out = run_captured(model, variables, x.transpose(0, 2, 3, 1), ('backbone',))['backbone']
    assert out['layer4'].shape[1:3] == (h // 8, w // 8)  # Dilated: output stride 8.
    for name, value in ref.items():
      errors[f'{name} {h}x{w}'] = rel_err(out[name], nchw_to_nhwc(value))
  print(f'\n{arch} (dilated 2/4) relative max errors:\n'
        + '\n'.join(f'  {k}: {v:.2e}' for k, v in errors.items()))
  failing = {k: v for k, v in errors.items() if not v <= TOLERANCE}
  assert not failing, failing


def test_resnet50_parity_pspnet_backbone(torch_resnet50, resnet50_npz):
  check_resnet_parity(torch_resnet50, 'resnet50', 'pspnet50', resnet50_npz)


def test_resnet101_parity_pspnet_backbone(tmp_path):
  torch.manual_seed(0)
  tv = randomize(torchvision.models.resnet101(replace_stride_with_dilation=[False, True, True]))
  path = tmp_path / 'resnet101.npz'
  weights.save_npz(weights.convert_state_dict(state_dict_np(tv), 'resnet101'), path)
  check_resnet_parity(tv, 'resnet101', 'pspnet101', path)


# ------------------------------------------------------------------ CLI and config round trips


def run_cli(argv) -> int:
  from jaxseg import cli  # pylint: disable=g-import-not-at-top
  return cli.main(argv)


def training_config(*overrides):
  """experiments/default.py with `--config.a.b=value`-style overrides, as `jaxseg train` does."""
  return config_loading.apply_overrides(
      config_loading.load_config(REPO / 'experiments' / 'default.py'), overrides)


def test_cli_round_trip_and_training_init(torch_resnet50, resnet50_pth, tmp_path, capsys):
  out = tmp_path / 'r50.npz'
  assert run_cli(['convert-weights', '--arch', 'resnet50', '--input', str(resnet50_pth),
                  '--output', str(out)]) == 0
  printed = capsys.readouterr().out
  assert 'fc.weight, fc.bias' in printed and '265 arrays' in printed
  assert weights.weights_normalization(out) == weights.TORCHVISION_NORMALIZATION

  # The trainer's own initialisation (train.create_train_state) with model.init_from set.
  common = [('model.name', 'pspnet50'), ('model.width', '1.0'), ('data.crop_size', '64,64'),
            ('data.normalization', 'imagenet')]
  mesh = parallel.create_mesh(jax.devices()[:1])
  config = training_config(*common, ('model.init_from', str(out)))
  state = train.create_train_state(config, train.build_model(config), optax.sgd(0.1), mesh)
  sd = torch_resnet50.state_dict()
  bb = state.params['backbone']
  np.testing.assert_array_equal(bb['layer4_2']['conv3']['kernel'],
                                sd['layer4.2.conv3.weight'].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(bb['layer2_0']['downsample_bn']['scale'],
                                sd['layer2.0.downsample.1.weight'].numpy())
  np.testing.assert_array_equal(state.batch_stats['backbone']['bn1']['var'],
                                sd['bn1.running_var'].numpy())
  assert 'ppm' in state.params and 'aux' in state.params
  config = training_config(*common)
  unchanged, report = weights.init_from_config(state, config)
  assert unchanged is state and report is None


def test_new_layers_keep_their_values_and_report_lists_them(resnet50_npz):
  abstract = abstract_variables('pspnet50', (1, 64, 64, 3))
  rng = np.random.default_rng(0)
  before = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), abstract)
  logs = []
  after, report = weights.load_pretrained(before, resnet50_npz, 'pspnet50', log=logs.append)
  for head in ('ppm', 'cls', 'aux'):
    jax.tree.map(np.testing.assert_array_equal, after['params'][head], before['params'][head])
    jax.tree.map(np.testing.assert_array_equal, after['batch_stats'][head],
                 before['batch_stats'][head])
  np.testing.assert_array_equal(after['params']['backbone']['bn1']['scale'],
                                weights.read_npz(resnet50_npz).arrays['params/backbone/bn1/scale'])
  assert {k.split('/')[1] for k in report.new} == {'ppm', 'cls', 'aux'}
  assert len(report.loaded) == 265 and not set(report.loaded) & set(report.new)
  assert 'loaded 265 arrays' in logs[0] and 'ppm/bin1/conv{kernel}' in logs[0]
  assert 'fc.weight, fc.bias' in logs[0]


def test_raw_pth_init_of_full_width_fcn(torch_vgg16, tmp_path):
  """config.model.init_from pointing at a torchvision .pth (no conversion step), FCN-8s width 1."""
  path = tmp_path / 'vgg16-random.pth'
  torch.save(torch_vgg16.state_dict(), path)
  config = training_config(('model.name', 'fcn8s'), ('model.init_from', str(path)),
                           ('model.geometry', 'caffe'))
  abstract = jax.eval_shape(lambda: train.build_model(config).init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  variables, report = weights.init_from_config(abstract, config, log=None)
  assert report.skipped == ('classifier.6.weight', 'classifier.6.bias')
  assert {k.split('/')[1] for k in report.new} == {
      'score_fr', 'score_pool4', 'score_pool3', 'upscore2', 'upscore_pool4', 'upscore8'}
  np.testing.assert_array_equal(variables['params']['fc7']['kernel'][0, 0],
                                torch_vgg16.classifier[3].weight.detach().numpy().T)
  np.testing.assert_array_equal(variables['params']['backbone']['conv5_3']['bias'],
                                torch_vgg16.features[28].bias.detach().numpy())
  assert isinstance(variables['params']['score_fr']['kernel'], jax.ShapeDtypeStruct)


def test_npz_route_works_without_torch(resnet50_npz):
  code = (
      'import sys; sys.modules["torch"] = None\n'  # Any `import torch` now fails.
      'import jax, jax.numpy as jnp\n'
      'from jaxseg import weights\n'
      'from jaxseg.models import create_model\n'
      'm = create_model("pspnet50", 21)\n'
      'v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))\n'
      f'_, r = weights.load_pretrained(v, {str(resnet50_npz)!r}, "pspnet50", log=None)\n'
      'print(len(r.loaded), weights.weights_normalization(r.path)["space"])\n')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                          cwd=REPO, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ['265', 'RGB']


# ------------------------------------------------------------------ bad inputs


def test_shape_mismatch_names_tensor_shapes_and_file(resnet50_npz, tmp_path):
  w = weights.read_npz(resnet50_npz)
  assert w.sources['params/backbone/layer1_0/conv1/kernel'] == 'layer1.0.conv1.weight'
  arrays = dict(w.arrays)
  arrays['params/backbone/layer1_0/conv1/kernel'] = np.zeros((1, 1, 64, 32), np.float32)
  bad = tmp_path / 'bad.npz'
  weights.save_npz(weights.PretrainedWeights(w.arch, arrays, w.sources, w.skipped,
                                             w.normalization), bad)
  with pytest.raises(ValueError, match=r"shape mismatch for tensor 'layer1\.0\.conv1\.weight' "
                     r'.*expects \(1, 1, 64, 64\), file has \(1, 1, 64, 32\)') as e:
    weights.load_pretrained(abstract_variables('pspnet50', (1, 64, 64, 3)), bad, 'pspnet50', log=None)
  assert str(bad) in str(e.value)


def test_width_below_one_is_refused(resnet50_npz):
  small = create_model('pspnet50', 21, width=0.25)
  variables = jax.eval_shape(lambda: small.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  with pytest.raises(ValueError, match=r"shape mismatch for tensor 'conv1\.weight'(.|\n)*"
                     r"--config\.model\.width=1\.0"):
    weights.load_pretrained(variables, resnet50_npz, 'pspnet50', log=None)


def test_unused_tensor_fails(torch_resnet50, resnet50_npz, tmp_path):
  sd = state_dict_np(torch_resnet50)
  sd['layer4.3.conv1.weight'] = sd['layer4.2.conv1.weight']
  with pytest.raises(ValueError, match=r"unused tensor.*layer4\.3\.conv1\.weight"):
    weights.convert_state_dict(sd, 'resnet50', 'extra.pth')
  # A model lacking a leaf the file fills (e.g. a renamed layer): unused at load time.
  variables = abstract_variables('pspnet50', (1, 64, 64, 3))
  for collection in ('params', 'batch_stats'):
    del variables[collection]['backbone']['layer4_2']
  with pytest.raises(ValueError, match=r"unused tensor 'layer4\.2\.conv1\.weight'.*no such leaf"):
    weights.load_pretrained(variables, resnet50_npz, 'pspnet50', log=None)


def test_missing_tensor_and_unrecognised_state_dict(torch_resnet50, tmp_path):
  sd = state_dict_np(torch_resnet50)
  del sd['layer3.5.bn3.running_var']
  with pytest.raises(ValueError, match=r"missing: layer3\.5\.bn3\.running_var"):
    weights.convert_state_dict(sd, 'resnet50', 'trunc.pth')
  path = tmp_path / 'other.pth'
  torch.save({'weight': torch.zeros(3)}, path)
  with pytest.raises(ValueError, match=r'other\.pth is neither a torchvision '
                     r'vgg16/resnet50/resnet101 state dict nor a semseg'):
    weights.read_weights(path)
  with pytest.raises(ValueError, match=r'other\.pth: 1 unused tensor\(s\) .*: weight\.'):
    weights.read_weights(path, arch='vgg16')


def test_wrong_arch(resnet50_npz, resnet50_pth, tmp_path, capsys):
  abstract = {'params': {}}  # The arch check comes before any leaf is looked at.
  with pytest.raises(ValueError, match=r"holds resnet50 weights, but model 'fcn8s' .*loads "
                     r'vgg16 or fcn8s or fcn16s'):
    weights.load_pretrained(abstract, resnet50_npz, 'fcn8s')
  with pytest.raises(ValueError, match=r"holds resnet50 weights, but model "
                     r"'pspnet101' .*loads resnet101 or pspnet101"):
    weights.load_pretrained(abstract, resnet50_pth, 'pspnet101')
  with pytest.raises(ValueError, match=r'holds resnet50 weights, not resnet101'):
    weights.convert_weights('resnet101', resnet50_pth, tmp_path / 'x.npz')
  assert run_cli(['convert-weights', '--arch', 'vgg16', '--input', str(resnet50_pth),
                  '--output', str(tmp_path / 'x.npz')]) == 2
  assert 'holds resnet50 weights, not vgg16' in capsys.readouterr().err
  assert not (tmp_path / 'x.npz').exists()
  with pytest.raises(ValueError, match=r"model 'unet' has no weights import"):
    weights.load_pretrained(abstract, resnet50_npz, 'unet')


class NotATensor:  # weights_only=True refuses to unpickle arbitrary classes.
  pass


def test_corrupt_missing_and_unsafe_files(resnet50_npz, tmp_path):
  with pytest.raises(FileNotFoundError, match=r'nope\.npz does not exist'):
    weights.load_pretrained({}, tmp_path / 'nope.npz', 'pspnet50')
  garbage = tmp_path / 'garbage.pth'
  garbage.write_bytes(b'not a pickle at all' * 10)
  with pytest.raises(ValueError, match=r'cannot read PyTorch weights file .*garbage\.pth'):
    weights.load_pretrained({}, garbage, 'pspnet50')
  truncated = tmp_path / 'truncated.npz'
  truncated.write_bytes(resnet50_npz.read_bytes()[:1_000_000])
  with pytest.raises(ValueError, match=r'cannot read weights file .*truncated\.npz'):
    weights.load_pretrained({}, truncated, 'pspnet50')
  with pytest.raises(ValueError, match=r'cannot read weights file .*truncated\.npz'):
    weights.weights_normalization(truncated)
  plain = tmp_path / 'plain.npz'
  np.savez(plain, a=np.zeros(3))
  with pytest.raises(ValueError, match=r'plain\.npz is not a jaxseg weights file'):
    weights.read_npz(plain)
  unsafe = tmp_path / 'unsafe.pth'
  torch.save({'x': NotATensor()}, unsafe)
  with pytest.raises(ValueError, match=r'cannot read PyTorch weights file .*unsafe\.pth'):
    weights.read_state_dict(unsafe)
  with pytest.raises(ValueError, match=r"unsupported suffix '\.h5'"):
    (tmp_path / 'w.h5').write_bytes(b'')
    weights.read_weights(tmp_path / 'w.h5')
  with pytest.raises(ValueError, match=r'must end in \.npz'):
    weights.convert_weights('resnet50', resnet50_npz, tmp_path / 'out.bin')


def test_normalisation_checks(resnet50_npz):
  abstract = abstract_variables('pspnet50', (1, 64, 64, 3))
  with pytest.raises(ValueError, match=r"expect RGB input .* but config\.data\.normalization is "
                     r"'caffe' \(BGR\); set --config\.data\.normalization=imagenet"):
    weights.load_pretrained(abstract, resnet50_npz, 'pspnet50', normalization='caffe')
  rgb_other = dict(weights.TORCHVISION_NORMALIZATION, mean=[0.5, 0.5, 0.5])
  with pytest.warns(UserWarning, match='uses other constants'):
    weights.check_normalization('imagenet', rgb_other, 'w.npz')
  rgb_255 = dict(weights.TORCHVISION_NORMALIZATION, scale=255.0)
  with pytest.raises(ValueError, match=r'expect RGB input in \[0, 255\.0\]'):
    weights.check_normalization('imagenet', rgb_255, 'w.npz')
  caffe = {'space': 'BGR', 'mean': [104.0, 117.0, 123.0], 'std': [1.0, 1.0, 1.0], 'scale': 255.0}
  assert weights.normalization_name(caffe) == 'caffe'
  with pytest.raises(ValueError, match=r"set --config\.data\.normalization=caffe"):
    weights.check_normalization('imagenet', caffe, 'w.npz')
  with pytest.raises(ValueError, match=r"normalization='bgr'"):
    weights.check_normalization('bgr', weights.TORCHVISION_NORMALIZATION, 'w.npz')


def test_pipeline_constants_match_torchvision():
  """config.data.normalization='imagenet' feeds the model exactly what the weights expect."""
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top
  assert list(pipeline.IMAGENET_MEAN) == weights.TORCHVISION_NORMALIZATION['mean']
  assert list(pipeline.IMAGENET_STD) == weights.TORCHVISION_NORMALIZATION['std']


def test_check_init_from_fails_early(resnet50_npz, tmp_path):
  """The trainer's pre-flight check: shapes from jax.eval_shape, nothing computed."""
  ok = training_config(('model.name', 'pspnet50'), ('model.init_from', str(resnet50_npz)))
  weights.check_init_from(ok)
  weights.check_init_from(training_config())  # init_from '' : nothing to check.
  cases = [
      ([('model.name', 'deconvnet')], r"holds resnet50 weights, but model 'deconvnet'"),
      ([('model.width', '0.5')], r'shape mismatch(.|\n)*--config\.model\.width=1\.0'),
      ([('data.normalization', 'caffe')], r"normalization is 'caffe'"),
      ([('model.init_from', str(tmp_path / 'gone.npz'))], r'gone\.npz does not exist'),
  ]
  for overrides, message in cases:
    config = training_config(('model.name', 'pspnet50'), ('model.init_from', str(resnet50_npz)),
                             *overrides)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      weights.check_init_from(config)


def _fcn_variables(name, seed=1):
  """Random values in the shapes of an FCN's variables (no compile: shapes from eval_shape)."""
  model = create_model(name, 5, width=1 / 16, geometry='caffe')
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 40, 40, 3))))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def _whole_model_npz(path, arch, variables, **model_fields):
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep='/')
  arrays = {k: np.asarray(v) for k, v in flat.items()}
  norm = {'space': 'BGR', 'mean': [104.0, 116.7, 122.7], 'std': [1.0, 1.0, 1.0], 'scale': 255.0}
  weights.save_npz(weights.PretrainedWeights(arch, arrays, {k: k for k in arrays}, (), norm,
                                             model_fields=model_fields), path)
  return path


def test_staged_fcn_copies_shared_layers_by_name(tmp_path):
  """FCN-16s from FCN-32s (voc-fcn16s/solve.py copy_from): shared layers copied, x32 left out."""
  fcn32 = _fcn_variables('fcn32s')
  path = _whole_model_npz(tmp_path / 'fcn32s.npz', 'fcn32s', fcn32, geometry='caffe')
  fresh = _fcn_variables('fcn16s', seed=2)
  assert not np.array_equal(fresh['params']['fc6']['kernel'], fcn32['params']['fc6']['kernel'])
  loaded, report = weights.load_pretrained(fresh, path, 'fcn16s', normalization='caffe',
                                           model_fields={'geometry': 'caffe'}, log=None)
  for layer in ('fc6', 'fc7', 'score_fr'):
    np.testing.assert_array_equal(loaded['params'][layer]['kernel'],
                                  fcn32['params'][layer]['kernel'])
  np.testing.assert_array_equal(loaded['params']['backbone']['conv3_2']['bias'],
                                fcn32['params']['backbone']['conv3_2']['bias'])
  np.testing.assert_array_equal(loaded['params']['score_pool4']['kernel'],  # New: its own init.
                                fresh['params']['score_pool4']['kernel'])
  assert 'upscore/kernel' in ' '.join(report.skipped)
  assert 'params/score_pool4/kernel' in report.new
  with pytest.raises(ValueError, match=r"model\.geometry='caffe'.*set --config\.model\."
                     r"geometry=caffe"):
    weights.load_pretrained(fresh, path, 'fcn16s', model_fields={'geometry': 'same'}, log=None)
  # A whole model of an unrelated arch is refused; the staged order is one way.
  fcn16 = _whole_model_npz(tmp_path / 'fcn16s.npz', 'fcn16s', loaded)
  with pytest.raises(ValueError, match=r"holds fcn16s weights, but model 'fcn32s'"):
    weights.load_pretrained(fcn32, fcn16, 'fcn32s', log=None)


def test_whole_model_needed_for_eval(tmp_path, resnet50_npz):
  """`eval --weights` must not evaluate a half-random model."""
  fcn8 = _fcn_variables('fcn8s')
  path = _whole_model_npz(tmp_path / 'fcn8s.npz', 'fcn8s', fcn8)
  again, _ = weights.load_pretrained(_fcn_variables('fcn8s', seed=2), path, 'fcn8s', whole=True, log=None)
  np.testing.assert_array_equal(again['params']['fc6']['kernel'], fcn8['params']['fc6']['kernel'])
  abstract = abstract_variables('pspnet50', (1, 64, 64, 3))
  with pytest.raises(ValueError, match=r'resnet50 weights without \d+ variable\(s\) of model '
                     r"'pspnet50': batch_stats/cls"):
    weights.load_pretrained(abstract, resnet50_npz, 'pspnet50', whole=True, log=None)
