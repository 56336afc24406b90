"""The ADE20K and Cityscapes recipes start from their docstrings' commands on fixture data.

Each `jaxseg train` line runs through the CLI as written, with the substitutions of
test_recipes.py (a width-1/16 semseg ResNet .pth for init_from, the workdir in tmp_path) and the
dataset's own fixture in its real layout as manual_dir (written by test_ade20k / test_cityscapes),
shrunk to one step at width 1/16; the ADE20K run is evaluated once with the recipe's eval mode
(multiscale) on small windows.
"""
import json

import numpy as np
import pytest

pytest.importorskip('torch')

from jaxseg import cli, config_loading  # noqa: E402
from jaxseg.data import classes  # noqa: E402

# tests/ is on sys.path: the fixture writers and recipe helpers of the other test modules.
import test_ade20k  # noqa: E402
import test_cityscapes  # noqa: E402
import test_recipes  # noqa: E402

EXPERIMENTS = config_loading.experiments_dir()


def _shrunk(tfds_dir, manual_dir):
  crop = '33,33'  # PSPNet: a crop of 8k + 1.
  return [f'--config.data.data_dir={tfds_dir}', f'--config.data.manual_dir={manual_dir}',
          f'--config.data.crop_size={crop}', '--config.data.eval_size=64,64',
          '--config.model.width=0.0625', '--config.model.dtype=float32',
          '--config.train.batch_size=8', '--config.eval.batch_size=8',
          '--config.train.num_steps=1', '--config.train.eval_every=0',
          '--config.train.checkpoint_every=1', '--config.data.shuffle_buffer=16',
          '--config.eval.base_size=0', f'--config.eval.crop_size={crop}',
          '--config.eval.stride=22,22']


def _run(recipe, tmp_path, manual_dir, evaluate=True):
  (argv,) = [a for a in test_recipes.docstring_commands(recipe) if a[0] == 'train']
  stand_in = {'initmodel/resnet50_v2.pth': 50, 'initmodel/resnet101_v2.pth': 101}
  out = []
  for i, arg in enumerate(argv):
    if arg.startswith('--config.model.init_from='):
      depth = stand_in[arg.split('=', 1)[1]]
      arg = ('--config.model.init_from='
             f'{test_recipes.semseg_resnet_pth(tmp_path / f"resnet{depth}.pth", depth)}')
    elif arg.startswith('--config.data.manual_dir='):
      continue  # Replaced by the fixture below.
    elif i and argv[i - 1] == '--workdir':
      arg = str(tmp_path / 'work')
    out.append(arg)
  config = config_loading.load_config(EXPERIMENTS / recipe)
  overrides = _shrunk(tmp_path / 'tfds', manual_dir)
  if not evaluate:  # The suite's time: PSPNet-101's eval program is another long compile.
    overrides.append('--config.train.eval_every=-1')
  assert cli.main(out + overrides) == 0, recipe
  return tmp_path / 'work', config


def _check(workdir, config, split='val'):
  assert (workdir / 'checkpoints' / '1').is_dir()
  if not (workdir / 'eval').is_dir():
    return
  results = json.loads((workdir / 'eval' / f'{split}_step1.json').read_text())
  assert len(results['per_class_iou']) == config.data.num_classes
  assert results['class_names'] == list(classes.dataset_spec(config.data.dataset).class_names)


def test_ade20k_pspnet50_recipe_on_the_release_layout(tmp_path):
  manual = tmp_path / 'manual'
  test_ade20k._write_ade(manual, np.random.default_rng(0))  # pylint: disable=protected-access
  workdir, config = _run('ade20k_pspnet50.py', tmp_path, manual)
  assert (config.data.dataset, config.data.num_classes) == ('ade20k', 150)
  assert (config.eval.mode, config.eval.base_size) == ('multiscale', 512)
  _check(workdir, config)


def test_cityscapes_pspnet101_recipe_on_the_official_zips(tmp_path):
  source, manual = tmp_path / 'source', tmp_path / 'manual'
  test_cityscapes._write_cityscapes(source, np.random.default_rng(0))  # pylint: disable=protected-access
  manual.mkdir()
  for folder, archive in (('leftImg8bit', 'leftImg8bit_trainvaltest.zip'),
                          ('gtFine', 'gtFine_trainvaltest.zip')):
    test_cityscapes._zip(source, folder, manual / archive)  # pylint: disable=protected-access
  workdir, config = _run('cityscapes_pspnet101.py', tmp_path, manual, evaluate=False)
  assert (config.data.dataset, config.data.num_classes) == ('cityscapes_fine', 19)
  assert tuple(config.data.eval_size) == (1024, 2048) and config.eval.base_size == 2048
  _check(workdir, config)
