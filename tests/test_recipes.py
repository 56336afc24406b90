"""Every paper recipe starts from the commands in its docstring (one step, width 1/16, tiny data).

The docstring's `jaxseg convert-weights` / `jaxseg train` lines are parsed and run through the CLI
as written, with three substitutions a test must make: the weights file it names is replaced by
a file of the same kind and original layout at width 1/16 (a Caffe VGG16 .caffemodel, a semseg
ResNet .pth, a torchvision VGG16 .pth), a workdir it names is the one an earlier recipe of the
chain trained here (FCN-32s -> 16s -> 8s), and the data, width and length are shrunk by
overrides appended after the docstring's own.
"""
import pathlib
import re
import shlex

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from jaxseg import cli, config_loading  # noqa: E402
from jaxseg.weights import caffe_proto  # noqa: E402

EXPERIMENTS = config_loading.experiments_dir()
WIDTH = 1 / 16
VGG_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _channels(c):
  return max(1, int(round(c * WIDTH)))


def docstring_commands(recipe: str) -> list[list[str]]:
  """The `jaxseg ...` commands of a recipe's docstring as argv lists (continuations joined)."""
  text = (EXPERIMENTS / recipe).read_text()
  doc = text.split('"""')[1].replace('\\\n', ' ')
  return [shlex.split(line.strip())[1:] for line in doc.splitlines()
          if line.strip().startswith(('jaxseg train', 'jaxseg convert-weights'))]


def _rng():
  return np.random.default_rng(0)


def vgg_caffemodel(path: pathlib.Path) -> pathlib.Path:
  """VGG_ILSVRC_16_layers at width 1/16: conv blobs (O, I, 3, 3), fc6-8 InnerProduct."""
  rng, layers, inp = _rng(), [], 3
  for b, block in enumerate(VGG_BLOCKS, 1):
    for l, c in enumerate(block, 1):
      out = _channels(c)
      layers.append(caffe_proto.CaffeLayer(f'conv{b}_{l}', 'Convolution', (
          (rng.standard_normal((out, inp, 3, 3)) * 0.1).astype(np.float32),
          np.zeros(out, np.float32))))
      inp = out
  fc = _channels(4096)
  for name, shape in (('fc6', (fc, inp * 49)), ('fc7', (fc, fc)), ('fc8', (1000, fc))):
    layers.append(caffe_proto.CaffeLayer(name, 'InnerProduct', (
        (rng.standard_normal(shape) * 0.01).astype(np.float32), np.zeros(shape[0], np.float32))))
  caffe_proto.write_caffemodel(path, layers)
  return path


def torchvision_vgg16_pth(path: pathlib.Path) -> pathlib.Path:
  """torchvision vgg16() state dict names at width 1/16."""
  rng, state, inp, index = _rng(), {}, 3, 0
  for block in VGG_BLOCKS:
    for c in block:
      out = _channels(c)
      state[f'features.{index}.weight'] = torch.from_numpy(
          (rng.standard_normal((out, inp, 3, 3)) * 0.1).astype(np.float32))
      state[f'features.{index}.bias'] = torch.zeros(out)
      inp, index = out, index + 2
    index += 1  # The pool.
  fc = _channels(4096)
  for i, shape in ((0, (fc, inp * 49)), (3, (fc, fc)), (6, (1000, fc))):
    state[f'classifier.{i}.weight'] = torch.from_numpy(
        (rng.standard_normal(shape) * 0.01).astype(np.float32))
    state[f'classifier.{i}.bias'] = torch.zeros(shape[0])
  torch.save(state, path)
  return path


def semseg_resnet_pth(path: pathlib.Path, depth: int) -> pathlib.Path:
  """semseg's resnet{depth}_v2.pth layout at width 1/16, from a jaxseg deep-stem backbone's tree."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from jaxseg.models import resnet  # pylint: disable=g-import-not-at-top
  net = resnet.ResNet(resnet.STAGE_SIZES[depth], (1, 1, 2, 4), WIDTH, stem='deep',
                      dilate_first_block=True)
  variables = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3))))
  rng, state = _rng(), {}
  leaf_names = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                'var': 'running_var'}
  for key, leaf in traverse_util.flatten_dict(variables, sep='/').items():
    _, *modules, name = key.split('/')
    module = '.'.join(m.replace('_', '.') if m.startswith('layer') else m for m in modules)
    module = module.replace('downsample_conv', 'downsample.0').replace('downsample_bn',
                                                                         'downsample.1')
    value = rng.standard_normal(leaf.shape).astype(np.float32) * 0.1
    if name == 'kernel':
      value = value.transpose(3, 2, 0, 1)
    elif name in ('scale', 'var'):
      value = np.abs(value) + 0.5
    state[f'{module}.{leaf_names[name]}'] = torch.from_numpy(np.ascontiguousarray(value))
  state['fc.weight'] = torch.zeros(1000, _channels(2048))
  state['fc.bias'] = torch.zeros(1000)
  torch.save(state, path)
  return path


def tiny_overrides(data_dir, model_name):
  """Synthetic 7-class data, width 1/16, one step, no evaluation (8 simulated devices)."""
  crop = '33,33' if model_name.startswith('pspnet') else '32,32'
  return [f'--config.data.data_dir={data_dir}', '--config.data.dataset=synthetic_shapes/tiny',
          '--config.data.num_classes=7', '--config.data.train_split=train',
          '--config.data.eval_split=val', f'--config.data.crop_size={crop}',
          '--config.data.eval_size=64,64', '--config.model.width=0.0625',
          '--config.model.dtype=float32', '--config.train.batch_size=8',
          '--config.eval.batch_size=8', '--config.train.num_steps=1',
          '--config.train.eval_every=-1', '--config.train.checkpoint_every=1',
          '--config.data.shuffle_buffer=16']


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return tmp_path_factory.mktemp('recipes')


class StandIns(dict):
  """Docstring weights path -> a width-1/16 file of the same kind, built on first use."""

  def __init__(self, root):
    super().__init__()
    self._builders = {
        'weights/VGG_ILSVRC_16_layers.caffemodel':
            lambda: vgg_caffemodel(root / 'vgg16.caffemodel'),
        'vgg16-397923af.pth': lambda: torchvision_vgg16_pth(root / 'vgg16-397923af.pth'),
        'initmodel/resnet50_v2.pth': lambda: semseg_resnet_pth(root / 'resnet50_v2.pth', 50),
    }

  def get(self, key, default=None):
    if key not in self and key in self._builders:
      self[key] = self._builders[key]()
    return super().get(key, default)

  def __getitem__(self, key):
    return self.get(key)


@pytest.fixture(scope='module')
def weights_files(root):
  return StandIns(root)


def run_docstring(recipe, root, data_dir, weights_files, workdirs):
  """Runs the recipe's docstring commands; returns the train command's workdir."""
  commands = docstring_commands(recipe)
  assert commands and commands[-1][0] == 'train', f'{recipe}: no `jaxseg train` command'
  produced = {}
  trained = None
  for argv in commands:
    argv = list(argv)
    for i, arg in enumerate(argv):
      value = arg.split('=', 1)[1] if arg.startswith('--config.model.init_from=') else None
      if arg == '--input' or arg == '--output':
        continue
      if i and argv[i - 1] == '--input':
        argv[i] = str(weights_files[arg])
      elif i and argv[i - 1] == '--output':
        produced[arg] = root / pathlib.Path(arg).name
        argv[i] = str(produced[arg])
      elif i and argv[i - 1] == '--workdir':
        trained = root / pathlib.Path(arg).name
        argv[i] = str(trained)
      elif value is not None:
        source = produced.get(value) or weights_files.get(value) or workdirs.get(value)
        assert source is not None, f'{recipe}: no test stand-in for init_from={value}'
        argv[i] = f'--config.model.init_from={source}'
    if argv[0] == 'train':
      config = config_loading.load_config(EXPERIMENTS / recipe)
      argv += tiny_overrides(data_dir, config.model.name)
    assert cli.main(argv) == 0, f'{recipe}: {shlex.join(argv)}'
  return trained


# Each chain runs in order: a finer FCN starts from the coarser one's workdir.
CHAINS = {
    'fcn_staged': ('fcn32s_voc.py', 'fcn16s_voc.py', 'fcn8s_voc.py'),
    'fcn_atonce': ('fcn8s_atonce_voc.py',),
    'fcn_torchvision': ('fcn32s_voc_torchvision.py',),
    'pspnet50': ('pspnet50_voc.py',),
}


@pytest.mark.parametrize('chain', sorted(CHAINS))
def test_recipe_starts_from_its_docstring(chain, root, weights_files):
  workdirs = {}
  for recipe in CHAINS[chain]:
    (root / chain).mkdir(exist_ok=True)
    trained = run_docstring(recipe, root / chain, root / 'tfds', weights_files, workdirs)
    assert (trained / 'checkpoints').is_dir()
    workdirs[f'workdirs/{trained.name}'] = trained


def test_every_paper_recipe_is_exercised():
  """New VOC recipes join a chain above (camvid/demo recipes are run by their own tests)."""
  covered = {r for chain in CHAINS.values() for r in chain}
  papers = {p.name for p in EXPERIMENTS.glob('*_voc*.py')}
  # DeconvNet's two stages are stepped from their docstrings by tests/test_windows.py.
  missing = papers - covered - {'pspnet101_voc.py', 'fcn8s_atonce_voc_train_aug.py',
                                'deconvnet_voc_stage1.py', 'deconvnet_voc_stage2.py'}
  assert not missing, f'recipes without a start test: {sorted(missing)}'
  # The train_aug variant is fcn8s_atonce_voc.py with another split and the same command.
  variant = config_loading.load_config(EXPERIMENTS / 'fcn8s_atonce_voc_train_aug.py')
  base = config_loading.load_config(EXPERIMENTS / 'fcn8s_atonce_voc.py')
  assert variant.data.train_split == 'train_aug' and base.data.train_split == 'sbd_train'
  variant.data.train_split = base.data.train_split
  assert variant.to_dict() == base.to_dict()
  assert (docstring_commands('fcn8s_atonce_voc_train_aug.py')[0][5:]
          == docstring_commands('fcn8s_atonce_voc.py')[0][5:])
  # pspnet101_voc.py differs from pspnet50_voc.py by the depth only (a 101-layer compile is
  # too slow for the suite); its docstring's command must still name the semseg backbone.
  assert re.search(r'init_from=initmodel/resnet101_v2\.pth',
                   (EXPERIMENTS / 'pspnet101_voc.py').read_text().replace('\\\n', ''))
