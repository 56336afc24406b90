"""`jaxseg train -> eval -> predict` end to end on a tiny config, and clean CLI errors."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from jaxseg import cli, config_loading

DEMO = str(config_loading.experiments_dir() / 'demo.py')


def tiny_overrides(data_dir):
  """A width-1/16 FCN-8s on synthetic_shapes/tiny (64x64), a few steps, batches of 8 devices."""
  return [f'--config.data.data_dir={data_dir}', '--config.data.dataset=synthetic_shapes/tiny',
          '--config.model.width=0.0625', '--config.data.crop_size=32,32',
          '--config.data.eval_size=64,64', '--config.train.batch_size=8',
          '--config.eval.batch_size=8', '--config.train.num_steps=3',
          '--config.train.checkpoint_every=2', '--config.train.log_every=1',
          '--config.optim.warmup_steps=0']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp('cli')
  workdir = root / 'work'
  argv = ['train', '--config', DEMO, '--workdir', str(workdir)] + tiny_overrides(root / 'tfds')
  assert cli.main(argv) == 0
  return workdir


def test_train_writes_workdir(trained):
  assert (trained / 'config.json').is_file()
  assert json.loads((trained / 'config.json').read_text())['model']['width'] == 0.0625
  records = [json.loads(line) for line in (trained / 'metrics.jsonl').read_text().splitlines()]
  assert any(r['split'] == 'train' and r['step'] == 3 for r in records)
  final = [r for r in records if r['split'] == 'val']
  assert final and 0.0 <= final[-1]['mean_iou'] <= 1.0
  saved = json.loads((trained / 'eval' / 'val_step3.json').read_text())
  assert len(saved['confusion_matrix']) == 7 and saved['class_names'][1] == 'disk'
  assert saved['num_images'] == 16 and len(saved['per_image']) == 16  # None dropped/padded.
  assert np.sum(saved['confusion_matrix']) > 0


def test_eval_restores_checkpoint_and_prints_table(trained, capsys):
  assert cli.main(['eval', '--workdir', str(trained), '--checkpoint', 'latest',
                   '--config.eval.mode=slide', '--config.eval.crop_size=48,48',
                   '--config.eval.stride=16,16']) == 0
  out = capsys.readouterr().out
  assert 'eval.mode=slide' in out and 'triangle' in out and 'mean IoU' in out
  assert (trained / 'eval' / 'val_step3.json').is_file()


def test_eval_ensemble_with_itself_keeps_the_plain_results(trained, capsys):
  """EDeconvNet's mechanics on a tiny workdir: the mean of two identical models' probabilities
  predicts what one does, and its results file sits beside the plain one."""
  assert cli.main(['eval', '--workdir', str(trained), '--checkpoint', 'latest']) == 0
  plain = json.loads((trained / 'eval' / 'val_step3.json').read_text())
  assert cli.main(['eval', '--workdir', str(trained), '--checkpoint', 'latest',
                   '--ensemble-with', str(trained), '--config.eval.ensemble_rule=mean']) == 0
  assert 'val_step3_ensemble.json' in capsys.readouterr().out
  both = json.loads((trained / 'eval' / 'val_step3_ensemble.json').read_text())
  assert both['inference'] == 'ensemble' and plain['inference'] == ''
  assert both['confusion_matrix'] == plain['confusion_matrix']
  assert json.loads((trained / 'eval' / 'val_step3.json').read_text()) == plain


def test_eval_of_a_weights_file_equals_eval_of_its_workdir(trained, tmp_path, capsys):
  """convert-weights from a workdir, then `eval --config --weights`: the same scores, no workdir."""
  npz = tmp_path / 'demo.npz'
  assert cli.main(['convert-weights', '--input', str(trained / 'checkpoints' / '3'),
                   '--output', str(npz)]) == 0
  assert 'of fcn8s from' in capsys.readouterr().out
  data = [o for o in tiny_overrides(trained.parent / 'tfds') if 'data_dir' in o or 'dataset' in o
          or 'width' in o or 'eval_size' in o or 'eval.batch' in o]
  assert cli.main(['eval', '--workdir', str(trained), '--checkpoint', '3']) == 0
  from_workdir = capsys.readouterr().out
  assert cli.main(['eval', '--config', DEMO, '--weights', str(npz), *data]) == 0
  from_weights = capsys.readouterr().out
  assert f'fcn8s {npz} on synthetic_shapes/tiny val' in from_weights
  table = lambda text: text[text.index('mean IoU'):].split('\nwrote ')[0].strip()
  assert table(from_weights) == table(from_workdir)
  assert cli.main(['eval', '--weights', str(npz)]) == 2
  assert '--weights needs --config' in capsys.readouterr().err
  image = tmp_path / 'photo.png'
  PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 50, 3), np.uint8)).save(image)
  assert cli.main(['predict', '--config', DEMO, '--weights', str(npz), *data, '--input',
                   str(image), '--output', str(tmp_path / 'out')]) == 0
  assert f'fcn8s {npz}' in capsys.readouterr().out
  assert PIL.Image.open(tmp_path / 'out' / 'photo.png').size == (50, 40)


def test_predict_never_overwrites_its_inputs(trained, tmp_path, capsys):
  """--output = the input folder: refused before anything is written (the photos survive)."""
  photos = tmp_path / 'photos'
  photos.mkdir()
  rng = np.random.default_rng(4)
  for name in ('a.png', 'b.jpg'):
    PIL.Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8)).save(photos / name)
  before = {p.name: p.read_bytes() for p in photos.iterdir()}
  assert cli.main(['predict', '--workdir', str(trained), '--input', str(photos),
                   '--output', str(photos)]) == 2
  err = capsys.readouterr().err
  assert f'would overwrite input image(s) {photos / "a.png"}' in err and 'nothing was written' in err
  assert {p.name: p.read_bytes() for p in photos.iterdir()} == before
  as_file = tmp_path / 'labels.png'
  as_file.write_bytes(b'x')
  assert cli.main(['predict', '--workdir', str(trained), '--input', str(photos / 'b.jpg'),
                   '--output', str(as_file)]) == 2
  assert 'is a file; give a folder' in capsys.readouterr().err


def test_predict_any_image_reports_bad_files(trained, tmp_path, capsys):
  rng = np.random.default_rng(0)
  inputs = tmp_path / 'in'
  inputs.mkdir()
  PIL.Image.fromarray(rng.integers(0, 255, (50, 70), np.uint8)).save(inputs / 'gray.png')
  PIL.Image.fromarray(rng.integers(0, 255, (30, 90, 4), np.uint8)).save(inputs / 'rgba.png')
  PIL.Image.fromarray(rng.integers(0, 255, (130, 40, 3), np.uint8)).save(inputs / 'big.jpg')
  (inputs / 'corrupt.jpg').write_bytes(b'\xff\xd8 this is not a jpeg')
  out = tmp_path / 'out'
  code = cli.main(['predict', '--workdir', str(trained), '--output', str(out), '--input',
                   str(inputs / 'corrupt.jpg'), str(inputs / 'gray.png'),
                   str(inputs / 'rgba.png'), str(inputs / 'big.jpg')])
  captured = capsys.readouterr()
  assert code == 1  # One file failed...
  assert 'corrupt.jpg' in captured.err and '3 of 4' in captured.out
  for name, size in (('gray', (70, 50)), ('rgba', (90, 30)), ('big', (40, 130))):
    label = PIL.Image.open(out / f'{name}.png')  # ...the others were still written.
    assert label.mode == 'P' and label.size == size
    assert np.asarray(label).max() < 7  # Values are class ids.
    assert label.getpalette()[3:6] == [230, 25, 75]  # The dataset's palette (class 1).
    overlay = PIL.Image.open(out / f'{name}_overlay.png')
    assert overlay.mode == 'RGB' and overlay.size == size


def test_demo_on_a_trained_workdir_prints_table_and_writes_predictions(trained, capsys):
  # Same config as `trained`, already at num_steps: the demo re-evaluates, then predicts.
  argv = ['demo', '--workdir', str(trained), '--num_predictions', '2']
  argv += tiny_overrides(trained.parent / 'tfds')
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert 'demo mean IoU' in out and 'star' in out
  names = {p.name for p in (trained / 'predictions').iterdir()}
  ids = {n[:-len('.png')] for n in names if n.count('_') == 1}  # val_NNNNN.png
  assert len(ids) == 2 and all(i.startswith('val_') for i in ids)
  assert names == {f'{i}{suffix}.png' for i in ids
                   for suffix in ('', '_image', '_overlay', '_truth')}
  label = np.asarray(PIL.Image.open(trained / 'predictions' / f'{min(ids)}.png'))
  assert label.shape == (64, 64) and label.max() < 7


def test_train_typo_override_is_a_clean_error(tmp_path, capsys):
  code = cli.main(['train', '--config', DEMO, '--workdir', str(tmp_path),
                   '--config.train.batch_sise=8'])
  err = capsys.readouterr().err
  assert code == 2
  assert "unknown config field 'train.batch_sise'" in err and 'train.batch_size' in err
  assert 'Traceback' not in err


def test_missing_config_file_exits_2_without_traceback(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [sys.executable, '-m', 'jaxseg.cli', 'train', '--config', str(tmp_path / 'nope.py'),
       '--workdir', str(tmp_path / 'w')], capture_output=True, text=True, env=env,
      cwd=pathlib.Path(__file__).parents[1], timeout=300)
  assert result.returncode == 2
  assert 'nope.py' in result.stderr and 'not found' in result.stderr
  assert 'Traceback' not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('jaxseg: error')]
  assert len(errors) == 1


def test_eval_of_missing_workdir_and_bad_arguments(tmp_path, capsys):
  assert cli.main(['eval', '--workdir', str(tmp_path / 'none')]) == 2
  assert 'does not exist' in capsys.readouterr().err
  assert cli.main(['train', '--workdir', str(tmp_path / 'fresh')]) == 2
  assert 'no --config given' in capsys.readouterr().err
  with pytest.raises(SystemExit) as exc:
    cli.main(['eval', '--workdir', str(tmp_path), '--checkpoint', 'newest'])
  assert exc.value.code == 2


@pytest.mark.parametrize('mode', ['L', 'LA', 'RGBA', 'P', 'I;16', 'CMYK', '1'])
def test_load_rgb_converts_any_mode(tmp_path, mode):
  from jaxseg import inference
  rng = np.random.default_rng(1)
  rgb = PIL.Image.fromarray(rng.integers(0, 255, (9, 13, 3), np.uint8))
  if mode == 'I;16':
    image = PIL.Image.fromarray(rng.integers(0, 65535, (9, 13)).astype(np.uint16))
  else:
    image = rgb.convert(mode)
  path = tmp_path / ('x.jpg' if mode == 'CMYK' else 'x.png')
  image.save(path)
  pixels = inference.load_rgb(path)
  assert pixels.shape == (9, 13, 3) and pixels.dtype == np.uint8
  if mode == 'I;16':  # 16-bit range rescaled to 8 bits, not clipped to white.
    assert 0 < pixels.mean() < 255 and pixels.max() > 200


def test_padded_size_and_label_png_round_trip(tmp_path):
  from jaxseg import inference
  from jaxseg.data import classes
  assert inference.padded_size(50, 70, 64) == (64, 128)
  assert inference.padded_size(50, 70, 64, (100, 32)) == (128, 128)
  label = np.arange(7, dtype=np.uint8).repeat(3).reshape(3, 7)
  palette = classes.dataset_spec('synthetic_shapes').palette
  inference.save_label_png(tmp_path / 'l.png', label, palette)
  back = PIL.Image.open(tmp_path / 'l.png')
  np.testing.assert_array_equal(np.asarray(back), label)
  np.testing.assert_array_equal(np.asarray(back.convert('RGB')), palette[label])
