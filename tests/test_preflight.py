"""Every eval setting is checked before step 1: a wrong one fails at once, and claims nothing."""
import pathlib
import sys

import pytest

from jaxseg import train

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_train import tiny_config  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _bad(config_fn):
  def make(data_dir):
    config = tiny_config(data_dir, eval_every=2)
    config_fn(config)
    return config
  return make


def _eval_batch(config):
  config.eval.batch_size = 12


def _misspelt_split(config):
  config.data.eval_split = 'vall'


def _too_many(config):
  config.eval.num_examples = 100


def _stride(config):
  config.eval.mode, config.eval.crop_size, config.eval.stride = 'slide', (32, 32), (40, 40)


def _deconvnet_small_eval(config):
  config.model.name = 'deconvnet'
  config.data.crop_size = (224, 224)  # Fits DeconvNet; the 64x64 eval canvas does not.


CASES = {
    'eval batch': (_eval_batch, r'config\.eval\.batch_size=12 must be a positive multiple of the '
                   r'number of devices \(8\)'),
    'eval split': (_misspelt_split, r"config\.data\.eval_split='vall' is not a split"),
    'eval size': (_too_many, r'config\.eval\.num_examples=100 is more than the 16 examples'),
    'slide stride': (_stride, r"eval\.mode='slide'.*stride 40 > crop 32"),
    'deconvnet eval': (_deconvnet_small_eval, r'evaluation cannot run: deconvnet .*eval_size=\(64, '
                       r'64\)'),
}


@pytest.mark.parametrize('case', CASES)
def test_bad_eval_setting_fails_before_training(tmp_path, data_dir, case):
  change, message = CASES[case]
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(_bad(change)(data_dir), tmp_path / 'run')
  assert not (tmp_path / 'run').exists()  # Nothing written: not even the folder.


def test_eval_every_minus_one_trains_without_evaluating(tmp_path, data_dir):
  config = tiny_config(data_dir, eval_every=-1, num_steps=2, checkpoint_every=0)
  config.data.eval_split = 'no_such_split'  # Never read.
  final = train.train_and_evaluate(config, tmp_path)
  assert final['step'] == 2 and 'mean_iou' not in final
  assert not (tmp_path / 'eval').exists()


def test_float16_is_refused_with_the_reason():
  config = tiny_config('')
  config.model.dtype = 'float16'
  with pytest.raises(ValueError, match=r"config\.model\.dtype='float16' is not offered.*loss "
                     r'scaling.*bfloat16'):
    train.build_model(config)
