"""Whole, clear messages for bad input: each names the file or field and says what to do.

Every case here failed on the code before issue 17 (a raw library error, a misleading one, one cut
to its first line, or none at all); the expected texts are written out by hand.
"""
import io
import logging
import pathlib
import socket
import sys
import time

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds
import torch
from jax.sharding import Mesh

import jax
from jaxseg import cli, config_loading, preflight
from jaxseg.data import checks, pipeline
from jaxseg.inference import files, images
from jaxseg.weights import command as weights_command
from jaxseg.weights import convert
from jaxseg.weights import files as weight_files

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_train import tiny_config  # noqa: E402  pylint: disable=g-import-not-at-top

DEMO = str(config_loading.experiments_dir() / 'demo.py')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


# ------------------------------------------------------------------ defect 4: num_classes
def test_num_classes_below_the_datasets_is_refused_before_training(data_dir, caplog):
  config = tiny_config(data_dir)
  config.data.num_classes = 5  # synthetic_shapes has 7 (background, disk, ..., cross).
  with pytest.raises(ValueError, match=r"config\.data\.num_classes=5 is less than the 7 classes of "
                     r"config\.data\.dataset='synthetic_shapes/tiny' \(background, disk, square, "
                     r'triangle, \.\.\.\): labels 5\.\.6 would count as pixels without loss.*'
                     r'Set config\.data\.num_classes=7\.'):
    preflight.check_data(config, 1)
  config.data.num_classes = 9  # More: allowed, with a warning naming the unused outputs.
  with caplog.at_level(logging.WARNING):
    preflight.check_data(config, 1)
  assert 'config.data.num_classes=9 is more than the 7 classes' in caplog.text
  assert 'outputs 7..8 never occur' in caplog.text
  config.data.num_classes = 7
  preflight.check_data(config, 1)


BAD_IDS = {'train': 'bad_train_002', 'val': 'bad_val_001'}


class JaxsegTestBadLabels(tfds.core.GeneratorBasedBuilder):
  """Labels 0..3, 255 and one pixel of 7 in one example per split; no class_names metadata."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'label': tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding='zlib'),
        'id': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in BAD_IDS}

  def _generate_examples(self, split):
    for i in range(4):
      label = np.full((16, 16), i % 4, np.uint8)
      label[:2] = 255
      example_id = f'bad_{split}_{i:03d}'
      if example_id == BAD_IDS[split]:
        label[9, 9] = 7
      yield i, {'image': np.zeros((16, 16, 3), np.uint8), 'label': label, 'id': example_id}


def _bad_label_config(data_dir, num_classes):
  config = tiny_config(data_dir)
  config.data.update(dict(dataset='jaxseg_test_bad_labels', num_classes=num_classes,
                          crop_size=(16, 16), eval_size=(16, 16), scale_range=(1.0, 1.0),
                          shuffle_buffer=4))
  config.train.batch_size = config.eval.batch_size = 4
  return config


def test_label_values_beyond_num_classes_stop_train_and_eval_naming_the_example(data_dir):
  mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  config = _bad_label_config(data_dir, num_classes=4)
  with pytest.raises(ValueError, match=r"example 'bad_train_002' of config\.data\.train_split="
                     r"'train' of jaxseg_test_bad_labels has label value 7, neither a class "
                     r'\(0\.\.3, config\.data\.num_classes=4\) nor the ignore label '
                     r'\(config\.data\.ignore_label=255\)\. Set config\.data\.num_classes'):
    next(pipeline.train_iterator(config, mesh))
  with pytest.raises(ValueError, match=r"example 'bad_val_001' of split 'val' has label value 7, "
                     r'neither a class \(0\.\.3, config\.data\.num_classes=4\)'):
    list(pipeline.eval_iterator(config, mesh))
  config = _bad_label_config(data_dir, num_classes=8)  # Every value is a class now.
  assert next(pipeline.train_iterator(config, mesh))['label'].shape == (4, 16, 16)
  assert sum(int(np.asarray(b['valid']).sum()) for b in pipeline.eval_iterator(config, mesh)) == 4


# ------------------------------------------------------------------ defect 6: whole messages
def test_cli_prints_the_whole_message(monkeypatch, capsys):
  def fails(args):
    raise FileNotFoundError('3 source files missing:\n  a.jpg\n  b.jpg\n  c.jpg\n'
                            'Download VOC and pass manual_dir.')
  monkeypatch.setattr(cli, 'cmd_demo', fails)
  assert cli.main(['demo']) == 2
  err = capsys.readouterr().err
  assert ('jaxseg: error: 3 source files missing:\n  a.jpg\n  b.jpg\n  c.jpg\n'
          'Download VOC and pass manual_dir.  (--traceback for details)') in err
  assert 'Traceback' not in err


# ------------------------------------------------------------------ defect 8: misleading messages
def test_eval_num_examples_beyond_the_split_says_so(data_dir):
  config = tiny_config(data_dir)
  config.eval.num_examples = 40
  with pytest.raises(ValueError, match=r"config\.eval\.num_examples=40 is more than the 16 "
                     r"examples of config\.data\.eval_split='val'; use at most 16, or -1"):
    pipeline.num_eval_examples(config)
  with pytest.raises(ValueError, match=r"num_examples=40 is more than the 32 examples of "
                     r"split='train'"):
    pipeline.num_eval_examples(config, 'train')
  config.eval.num_examples = 16
  assert pipeline.num_eval_examples(config) == 16


@pytest.mark.parametrize('field, text, shown, example', [
    ('data.crop_size', '0,0', '(0, 0)', '320,320'),
    ('data.crop_size', '32', '(32,)', '32,32'),
    ('data.eval_size', '64,64,3', '(64, 64, 3)', '320,320'),
    ('eval.crop_size', '473', '(473,)', '473,473'),
    ('eval.stride', '0,316', '(0, 316)', '320,320'),
])
def test_bad_sizes_name_the_field_when_given(field, text, shown, example):
  config = config_loading.load_config(DEMO)
  with pytest.raises(ValueError) as e:
    config_loading.apply_overrides(config, [(field, text)])
  assert str(e.value) == (f'config.{field}={shown} must be two positive ints (H, W), e.g. '
                          f'--config.{field}={example}')


def test_bad_size_in_a_recipe_names_the_field(tmp_path):
  recipe = tmp_path / 'recipe.py'
  recipe.write_text(f'import importlib.util\n'
                    f'spec = importlib.util.spec_from_file_location("d", {DEMO!r})\n'
                    'demo = importlib.util.module_from_spec(spec)\n'
                    'spec.loader.exec_module(demo)\n\n\n'
                    'def get_config():\n'
                    '  config = demo.get_config()\n'
                    '  config.eval.stride = (316,)\n'
                    '  return config\n')
  with pytest.raises(ValueError, match=r'config\.eval\.stride=\(316,\) must be two positive ints'):
    config_loading.load_config(recipe)


def test_config_file_with_a_syntax_error_names_file_and_line(tmp_path, capsys):
  recipe = tmp_path / 'broken.py'
  recipe.write_text('def get_config():\n  config = dict(\n    a=1,\n    b=(2, 3\n  return config\n')
  with pytest.raises(ValueError) as e:
    config_loading.load_config(recipe)
  assert str(e.value).startswith(f"config file '{recipe}', line 4: SyntaxError: ")
  assert '\n    b=(2, 3\n      ^' in str(e.value)
  assert cli.main(['train', '--config', str(recipe), '--workdir', str(tmp_path / 'w')]) == 2
  err = capsys.readouterr().err
  assert f"config file '{recipe}', line 4" in err and 'b=(2, 3' in err and 'Traceback' not in err


class _Predictor:
  def __call__(self, image, name):
    return np.zeros(image.shape[:2], np.int32)


def test_predict_output_that_is_or_lies_under_a_file(tmp_path):
  image = tmp_path / 'in' / 'a.jpg'
  image.parent.mkdir()
  PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  blocker = tmp_path / 'file.txt'
  blocker.write_text('x')
  palette = np.zeros((256, 3), np.uint8)
  with pytest.raises(ValueError, match=rf'--output {blocker} is a file; give a folder'):
    files.predict_files(_Predictor(), [image.parent], blocker, palette, log=io.StringIO())
  with pytest.raises(ValueError, match=rf'--output {blocker}/sub lies under the file {blocker}; '
                     'give a folder'):
    files.predict_files(_Predictor(), [image.parent], blocker / 'sub', palette, log=io.StringIO())
  written = files.predict_files(_Predictor(), [image.parent], tmp_path / 'new' / 'out', palette,
                                log=io.StringIO())
  assert written['written'] == [str(tmp_path / 'new' / 'out' / 'a.png')]


def _tiny_weights():
  norm = {'space': 'rgb', 'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225],
          'scale': 1.0}
  arrays = {'params/head/kernel': np.arange(6, dtype=np.float32).reshape(2, 3)}
  return convert.PretrainedWeights('vgg16', arrays, {k: k for k in arrays}, (), norm)


def test_weights_output_folder_is_created_or_named(tmp_path):
  target = tmp_path / 'new' / 'deeper' / 'x.npz'
  weight_files.save_npz(_tiny_weights(), target)  # Before: "[Errno 2] ... x.npz.tmp".
  with np.load(target, allow_pickle=False) as data:
    np.testing.assert_array_equal(data['params/head/kernel'], np.arange(6).reshape(2, 3))
  blocker = tmp_path / 'file.txt'
  blocker.write_text('x')
  with pytest.raises(ValueError, match=rf'output {blocker}/x\.npz: {blocker} is a file, not a '
                     'folder'):
    weight_files.save_npz(_tiny_weights(), blocker / 'x.npz')
  with pytest.raises(ValueError, match=rf'--output {blocker}/sub/x\.npz: {blocker} is a file, not '
                     'a folder'):  # Checked before the input is read (it does not even exist).
    weights_command.convert_weights(None, tmp_path / 'missing.pth', blocker / 'sub' / 'x.npz')


class _NotATensor:
  pass


def test_unsafe_weight_files_are_refused_without_unsafe_advice(tmp_path):
  pth = tmp_path / 'model.pth'
  torch.save({'w': torch.zeros(2), 'extra': _NotATensor()}, pth)
  with pytest.raises(ValueError) as e:
    weight_files.read_state_dict(pth)
  message = str(e.value)
  assert message.startswith(f'cannot read PyTorch weights file {pth}: it holds Python objects '
                            'besides tensors (e.g. test_messages._NotATensor), which jaxseg does '
                            'not unpickle, since unpickling can run arbitrary code.')
  assert 'torch.save(model.state_dict(), "weights.pth")' in message
  npz = tmp_path / 'objects.npz'
  np.savez(npz, a=np.array([{'k': 1}], dtype=object),
           **{weight_files.META_KEY: np.array('{}')})
  with pytest.raises(ValueError) as e:
    weight_files.read_npz(npz)
  message += str(e.value)
  assert str(e.value).startswith(f'cannot read weights file {npz}: it holds pickled Python '
                                 'objects (object arrays), which jaxseg does not load')
  assert 'jaxseg convert-weights --input ORIGINAL --output objects.npz' in str(e.value)
  for unsafe in ('weights_only', 'allow_pickle', 'can still be loaded', 'add_safe_globals', '\x1b'):
    assert unsafe not in message


class _Offline:
  """A download manager whose network is down: it fails at once, recording the bounds in force."""

  def __init__(self):
    self.seen = None

  def download_and_extract(self, urls):
    import requests.adapters  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.core.download import downloader  # pylint: disable=g-import-not-at-top
    self.seen = (downloader.MAX_RETRIES, requests.adapters.HTTPAdapter.send)
    raise ConnectionError('[Errno 101] Network is unreachable')


def test_offline_download_fails_fast_with_the_manual_instructions():
  import requests.adapters  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import downloader  # pylint: disable=g-import-not-at-top
  original = (downloader.MAX_RETRIES, requests.adapters.HTTPAdapter.send)
  manager = _Offline()
  with pytest.raises(FileNotFoundError) as e:  # The CLI prints it whole, as bad input.
    checks.download_or_explain(manager, {'voc': 'http://example.org/VOC.tar'},
                               '\nPut VOC.tar into manual_dir.')
  assert str(e.value) == (
      'Could not download http://example.org/VOC.tar (ConnectionError: [Errno 101] Network is '
      'unreachable).\nDownload the files yourself and pass their folder as manual_dir '
      '(tfds.download.DownloadConfig(manual_dir=...) or config.data.manual_dir).\n'
      'Put VOC.tar into manual_dir.')
  assert isinstance(e.value, RuntimeError)
  assert manager.seen[0] == checks.DOWNLOAD_RETRIES == 2 < original[0]  # TFDS's own: 10.
  assert manager.seen[1] is not original[1]  # requests got a default timeout...
  assert (downloader.MAX_RETRIES, requests.adapters.HTTPAdapter.send) == original  # ...restored.


def test_tfds_downloads_are_bounded_in_retries_and_time(tmp_path):
  """TFDS's real downloader: refused connections and a silent server each fail in seconds."""
  closed = socket.socket()
  closed.bind(('127.0.0.1', 0))
  closed_port = closed.getsockname()[1]
  closed.close()
  silent = socket.socket()  # Accepts connections, never answers.
  silent.bind(('127.0.0.1', 0))
  silent.listen(8)
  manager = tfds.download.DownloadManager(download_dir=tmp_path)
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError, match=r'(?s)Could not download http://127\.0\.0\.1:\d+/'
                     r'a\.tar \(ConnectionError: .*Max retries exceeded.*manual_dir'):
    checks.download_or_explain(manager, {'a': f'http://127.0.0.1:{closed_port}/a.tar'}, '')
  refused = time.perf_counter() - start  # TFDS's 10 retries alone back off for ~200 s.
  start = time.perf_counter()
  with pytest.raises(Exception, match='Read timed out'):
    with checks.bounded_downloads(timeout=(1.0, 1.0)):
      manager.download_and_extract({'b': f'http://127.0.0.1:{silent.getsockname()[1]}/b.tar'})
  waited = time.perf_counter() - start  # No timeout at all in TFDS: forever.
  silent.close()
  assert refused < 10 and waited < 15


# ------------------------------------------------------------------ defect 9: inputs
def test_predict_on_a_folder_without_images_exits_2_naming_it(tmp_path, capsys):
  empty = tmp_path / 'photos'
  empty.mkdir()
  (empty / 'notes.txt').write_text('x')
  argv = ['predict', '--workdir', str(tmp_path / 'no_workdir'), '--input', str(empty),
          '--output', str(tmp_path / 'out')]
  assert cli.main(argv) == 2  # Before the (missing) workdir is even looked at.
  err = capsys.readouterr().err
  assert (f'--input folder {empty} holds no image files (it holds 1 other entries, e.g. '
          'notes.txt); images are found by suffix: .jpg .jpeg .png .bmp .gif .tif .tiff .webp '
          '.ppm .pgm (any case).') in err
  assert not (tmp_path / 'out').exists()


def test_stale_incomplete_folders_are_removed_before_preparing(tmp_path, caplog):
  config = tiny_config(str(tmp_path / 'tfds'))
  stale = tmp_path / 'tfds' / 'synthetic_shapes' / 'tiny' / 'incomplete.K1LLED_1.1.0'
  stale.mkdir(parents=True)
  (stale / 'synthetic_shapes-train.tfrecord-00000-of-00001').write_bytes(b'half' * 1000)
  with caplog.at_level(logging.INFO):
    builder = pipeline.load_builder(config)
  assert builder.info.splits['train'].num_examples == 32
  assert not stale.exists()
  assert f'removing {stale}, left by an interrupted prepare of synthetic_shapes' in caplog.text
  assert not list(stale.parent.glob('incomplete.*'))


def test_images_beyond_max_pixels_are_refused_from_their_header(tmp_path):
  small = tmp_path / 'small.png'
  PIL.Image.fromarray(np.full((50, 100, 3), 7, np.uint8)).save(small)
  with pytest.raises(ValueError) as e:
    images.load_rgb(small, max_pixels=4999)
  assert str(e.value) == ('image is 100x50 = 5,000 pixels, more than the limit of 4,999 '
                          '(--max-pixels; a guard against decompression bombs, small files that '
                          'decode to gigabytes). If you trust the file, pass --max-pixels 5000 '
                          'or more.')
  assert images.load_rgb(small, max_pixels=5000).shape == (50, 100, 3)
  bomb = tmp_path / 'bomb.png'  # 200 M pixels in a 25 KB file.
  PIL.Image.new('1', (20_000, 10_000)).save(bomb)
  assert bomb.stat().st_size < 100_000
  limit = PIL.Image.MAX_IMAGE_PIXELS
  with pytest.raises(ValueError, match=r'image is 20000x10000 = 200,000,000 pixels, more than the '
                     r'limit of 178,956,970 \(--max-pixels'):
    images.load_rgb(bomb)
  assert PIL.Image.MAX_IMAGE_PIXELS == limit  # PIL's global is left as it was.
  args = cli.build_parser().parse_args(['predict', '--input', 'x', '--output', 'y',
                                        '--max-pixels', '1000'])
  assert args.max_pixels == 1000


def test_max_pixels_default_is_pils_limit_and_documented(capsys):
  assert images.MAX_PIXELS == 2 * PIL.Image.MAX_IMAGE_PIXELS  # Where PIL raises, not warns.
  with pytest.raises(SystemExit):
    cli.build_parser().parse_args(['predict', '--help'])
  assert '178,956,970' in capsys.readouterr().out
