"""A VOC-format dataset with its own ids (an annotation tool's "PASCAL VOC" export).

Its ids are not VOC's, so FCN's seg11valid would be empty (TFDS refuses an empty split); it has
a test.txt of its own and no SegmentationObject folder. It must prepare as voc2012_segmentation/
voc_only with exactly its lists' splits and labels, and train for a step.
"""
import numpy as np
import pytest
import tensorflow_datasets as tfds

import jaxseg.data  # noqa: F401  (registers the builders)
from jaxseg import cli, config_loading

# The fixture writers of tests/test_builders.py (tests/ is on sys.path).
from test_builders import _random_label, _save_jpeg, _save_palette_png  # noqa: E402

LISTS = {'train': ['site_a_001', 'site_a_002', 'site_b_007', 'frame-0004'],
         'val': ['site_c_010', 'site_c_011'],
         'test': ['site_d_100']}


def _write_export(root, rng, with_objects=False):
  """VOCdevkit/VOC2012 layout with our LISTS; returns {id: label}."""
  voc = root / 'VOCdevkit' / 'VOC2012'
  truth = {}
  for n, i in enumerate(i for ids in LISTS.values() for i in ids):
    height, width = 32 + 2 * n, 48 - 2 * n
    _save_jpeg(voc / 'JPEGImages' / f'{i}.jpg',
               rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    truth[i] = _random_label(rng, height, width)
    _save_palette_png(voc / 'SegmentationClass' / f'{i}.png', truth[i])
    if with_objects:
      _save_palette_png(voc / 'SegmentationObject' / f'{i}.png', np.zeros_like(truth[i]))
  lists = voc / 'ImageSets' / 'Segmentation'
  lists.mkdir(parents=True)
  for name, ids in LISTS.items():
    (lists / f'{name}.txt').write_text('\n'.join(ids) + '\n')
  (lists / 'trainval.txt').write_text('\n'.join(LISTS['train'] + LISTS['val']) + '\n')
  return truth


@pytest.fixture(scope='module')
def export(tmp_path_factory):
  root = tmp_path_factory.mktemp('voc_export')
  truth = _write_export(root / 'manual', np.random.default_rng(0))
  return root, truth


def test_own_ids_prepare_with_their_lists_and_labels(export):
  root, truth = export
  builder = tfds.builder('voc2012_segmentation/voc_only', data_dir=root / 'tfds')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(root / 'manual')))
  assert set(builder.info.splits) == {'train', 'val', 'test'}  # No empty seg11valid.
  for split, ids in LISTS.items():
    examples = {ex['id'].decode(): ex for ex in tfds.as_numpy(
        tfds.load('voc2012_segmentation/voc_only', split=split, data_dir=root / 'tfds'))}
    assert sorted(examples) == sorted(ids)
    for i, ex in examples.items():
      np.testing.assert_array_equal(ex['label'], truth[i], err_msg=f'{split}/{i}')
      assert not ex['instance'].any() and len(ex['objects']['label']) == 0


def test_own_ids_train_for_a_step(export):
  root, _ = export
  workdir = root / 'work'
  argv = ['train', '--config', str(config_loading.experiments_dir() / 'fcn8s_voc.py'),
          '--workdir', str(workdir), f'--config.data.data_dir={root / "tfds"}',
          f'--config.data.manual_dir={root / "manual"}',
          '--config.data.dataset=voc2012_segmentation/voc_only',
          '--config.data.train_split=train', '--config.data.eval_split=val',
          '--config.model.width=0.0625', '--config.model.geometry=same',
          '--config.data.crop_size=32,32', '--config.data.eval_size=64,64',
          '--config.train.batch_size=8', '--config.eval.batch_size=8',
          '--config.train.num_steps=1', '--config.train.eval_every=0',
          '--config.train.checkpoint_every=1', '--config.data.shuffle_buffer=8']
  assert cli.main(argv) == 0
  assert (workdir / 'checkpoints' / '1').is_dir()
  assert (workdir / 'eval' / 'val_step1.json').is_file()


def test_list_clashing_with_a_derived_split_is_refused(tmp_path):
  _write_export(tmp_path / 'manual', np.random.default_rng(1), with_objects=True)
  lists = tmp_path / 'manual' / 'VOCdevkit' / 'VOC2012' / 'ImageSets' / 'Segmentation'
  (lists / 'train_aug.txt').write_text('site_a_001\n')
  builder = tfds.builder('voc2012_segmentation/voc_only', data_dir=tmp_path / 'tfds')
  with pytest.raises(ValueError, match=r"train_aug.txt: a split list named 'train_aug' would "
                     r'replace or clash with a split jaxseg derives'):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / 'manual')))
  assert not builder.is_prepared()


def test_other_classes_point_to_the_folder_dataset(tmp_path):
  truth = _write_export(tmp_path / 'manual', np.random.default_rng(2), with_objects=True)
  i = LISTS['val'][0]
  label = truth[i].copy()
  label[:4, :4] = 23
  _save_palette_png(tmp_path / 'manual' / 'VOCdevkit' / 'VOC2012' / 'SegmentationClass'
                    / f'{i}.png', label)
  builder = tfds.builder('voc2012_segmentation/voc_only', data_dir=tmp_path / 'tfds')
  with pytest.raises(ValueError, match=rf"{i}.png: label values \[23\] are outside the 21 "
                     r".*config.data.dataset='segmentation_folder'"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / 'manual')))
  assert not builder.is_prepared()
