"""TFDS builder 'cityscapes_fine': gtFine labelIds stored as trainIds, from zips or folders.

Sources are written in tmp_path in the official layout and file names (two cities per split,
32x64 PNGs, so nothing may assume 2048x1024; gtFine's color/polygons/labelTrainIds files beside
the labelIds). Expected trainIds come from cityscapesscripts' helpers/labels.py, the official
table, not from jaxseg's transcription of it. Every bad-input case checks its message and that
the failed prepare left nothing tfds.load would read.
"""
import shutil
import zipfile

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from cityscapesscripts.helpers import labels as cs_labels

from jaxseg.data import cityscapes  # Registers 'cityscapes_fine'.
from jaxseg.data import checks
from jaxseg.data import classes

# The prepare/read helpers of tests/test_builders.py (tests/ is on sys.path).
from test_builders import _assert_fails_cleanly, _prepare, _read_split  # noqa: E402

NAME = 'cityscapes_fine'
CITIES = {'train': ('aachen', 'bochum'), 'val': ('frankfurt', 'munster'),
          'test': ('berlin', 'bonn')}
HEIGHT, WIDTH = 32, 64


def _official_train_ids(label_ids):
  """trainIds by cityscapesscripts: its trainIds 255 and -1 are ignored (255)."""
  lut = np.full(256, -1, np.int64)  # Not a labelId: matches no stored value.
  for label in cs_labels.labels:
    if label.id >= 0:
      lut[label.id] = 255 if label.trainId in (255, -1) else label.trainId
  return lut[label_ids]


def _save_png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(array).save(path)


def _write_cityscapes(base, rng):
  """leftImg8bit/ and gtFine/ (+ README, license.txt) under base; {split: {id: (image, ids)}}."""
  truth = {}
  for split, cities in CITIES.items():
    truth[split] = {}
    for c, city in enumerate(cities):
      for k in range(2 + c):
        example_id = f'{city}_{k:06d}_000019'
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        if split == 'test':  # gtFine test: placeholders, void and ego vehicle only.
          ids = rng.integers(0, 4, (HEIGHT, WIDTH), dtype=np.uint8)
        else:
          blocks = rng.integers(0, 34, (HEIGHT // 8, WIDTH // 8))
          ids = np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)
          ids[0, :34] = np.arange(34)  # Every labelId in every train/val label.
        _save_png(base / 'leftImg8bit' / split / city / f'{example_id}_leftImg8bit.png', image)
        gt = base / 'gtFine' / split / city
        _save_png(gt / f'{example_id}_gtFine_labelIds.png', ids)
        _save_png(gt / f'{example_id}_gtFine_color.png', np.zeros((HEIGHT, WIDTH, 3), np.uint8))
        (gt / f'{example_id}_gtFine_polygons.json').write_text('{"objects": []}')
        truth[split][example_id] = (image, ids)
  for name in ('README', 'license.txt'):
    (base / name).write_text('Cityscapes\n')
  return truth


def _zip(source, folder, archive):
  """An official-style zip: <folder>/... plus README and license.txt at the top."""
  with zipfile.ZipFile(archive, 'w') as zf:
    for path in sorted((source / folder).rglob('*')):
      zf.write(path, path.relative_to(source))
    for name in ('README', 'license.txt'):
      zf.write(source / name, name)


def _expected_ids():
  return {split: sorted(f'{city}_{k:06d}_000019' for c, city in enumerate(cities)
                        for k in range(2 + c)) for split, cities in CITIES.items()}


def _check_dataset(builder, truth):
  assert {s: info.num_examples for s, info in builder.info.splits.items()} == {
      'train': 5, 'val': 5, 'test': 5}
  for split in ('train', 'val', 'test'):
    examples = _read_split(builder, split)
    assert sorted(examples) == _expected_ids()[split]
    for example_id, (image, label) in examples.items():
      true_image, label_ids = truth[split][example_id]
      np.testing.assert_array_equal(image, true_image)  # PNG: lossless.
      assert label.dtype == np.uint8 and label.shape == (HEIGHT, WIDTH)
      np.testing.assert_array_equal(label, _official_train_ids(label_ids),
                                    err_msg=f'{split}/{example_id}')
      if split == 'test':
        assert (label == 255).all()
      else:
        assert set(np.unique(label)) == set(range(19)) | {255}


# ------------------------------------------------------------------ the label table

def test_label_table_is_cityscapesscripts():
  official = {label.id: label for label in cs_labels.labels if label.id >= 0}
  assert sorted(official) == list(range(cityscapes.NUM_LABEL_IDS)) == list(range(34))
  for label_id, (name, train_id) in enumerate(cityscapes.LABELS):
    label = official[label_id]
    assert (name, train_id) == (label.name, 255 if label.trainId in (255, -1) else label.trainId)
  ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
  np.testing.assert_array_equal(cityscapes.label_ids_to_train_ids(ids), _official_train_ids(ids))
  # The 19 train classes: names and colours of jaxseg.data.classes are the official ones.
  by_train_id = {label.trainId: label for label in cs_labels.labels
                 if 0 <= label.trainId < 255}
  assert sorted(by_train_id) == list(range(19))
  assert classes.CITYSCAPES_CLASSES == tuple(by_train_id[t].name for t in range(19))
  assert classes.CITYSCAPES_COLOURS == tuple(by_train_id[t].color for t in range(19))
  spec = classes.dataset_spec('cityscapes_fine')
  assert (spec.num_classes, spec.ignore_label) == (19, 255)


def test_values_outside_the_label_ids_are_errors():
  with pytest.raises(ValueError, match=r'x/a\.png: values \[34, 40\] are not Cityscapes '
                                       r'labelIds \(0\.\.33'):
    cityscapes.label_ids_to_train_ids(np.array([[7, 34], [40, 0]], np.uint8), 'x/a.png')
  with pytest.raises(ValueError, match=r'values \[-1\] are not Cityscapes labelIds'):
    cityscapes.label_ids_to_train_ids(np.array([-1, 7]))  # license plate's id: never in PNGs.


def test_official_sizes_are_checked_when_every_city_is_there():
  assert cityscapes.SPLIT_SIZES == {'train': 2975, 'val': 500, 'test': 1525}
  for split, cities in cityscapes.CITY_SIZES.items():
    assert sum(cities.values()) == cityscapes.SPLIT_SIZES[split]
    cityscapes.check_official_sizes(split, dict(cities))  # The official counts pass.
  assert len(cityscapes.CITY_SIZES['train']) == 18 and len(cityscapes.CITY_SIZES['test']) == 6
  short = {**cityscapes.CITY_SIZES['train'], 'cologne': 149}
  with pytest.raises(ValueError, match=r'split train has 2970 images in its 18 official cities, '
                                       r'expected 2975 \(cologne 149 \(expected 154\)\): is '
                                       r'leftImg8bit_trainvaltest\.zip completely extracted'):
    cityscapes.check_official_sizes('train', short)
  cityscapes.check_official_sizes('val', {'frankfurt': 3, 'munster': 2})  # A subset: not compared.


# ------------------------------------------------------------------ the builder

def test_from_the_official_zips(tmp_path):
  truth = _write_cityscapes(tmp_path / 'src', np.random.default_rng(0))
  manual = tmp_path / 'manual'
  manual.mkdir()
  for folder, archive in cityscapes.ARCHIVES.items():
    _zip(tmp_path / 'src', folder, manual / archive)
  assert sorted(p.name for p in manual.iterdir()) == [
      'gtFine_trainvaltest.zip', 'leftImg8bit_trainvaltest.zip']
  data_dir = tmp_path / 'data'
  ds = tfds.load(NAME, split='val', data_dir=str(data_dir),
                 download_and_prepare_kwargs={'download_config': tfds.download.DownloadConfig(
                     manual_dir=str(manual))})
  assert ds.element_spec['label'].dtype == tf.uint8
  assert ds.element_spec['label'].shape.as_list() == [None, None]
  assert ds.element_spec['image'].shape.as_list() == [None, None, 3]
  builder = tfds.builder(NAME, data_dir=str(data_dir))
  _check_dataset(builder, truth)
  assert builder.info.metadata['class_names'] == list(classes.CITYSCAPES_CLASSES)
  assert builder.info.metadata['ignore_label'] == 255
  assert str(builder.info.version) == '1.0.0'


def test_from_extracted_folders(tmp_path):
  manual = tmp_path / 'manual'
  truth = _write_cityscapes(manual, np.random.default_rng(1))
  # cityscapesscripts' createTrainIdLabelImgs writes these beside the labelIds: never read.
  for path in sorted((manual / 'gtFine').rglob('*_labelIds.png')):
    _save_png(path.with_name(path.name.replace('_labelIds', '_labelTrainIds')),
              np.zeros((HEIGHT, WIDTH), np.uint8))
  _check_dataset(_prepare(NAME, tmp_path / 'data', manual), truth)


def _label_path(manual, split, example_id):
  return (manual / 'gtFine' / split / example_id.split('_')[0] /
          f'{example_id}_gtFine_labelIds.png')


def _set_label(manual, split, example_id, edit):
  path = _label_path(manual, split, example_id)
  with PIL.Image.open(path) as mask:
    ids = np.array(mask)
  _save_png(path, edit(ids))


def _rename_image(manual, old, new):
  folder = manual / 'leftImg8bit' / 'train' / 'aachen'
  (folder / f'{old}_leftImg8bit.png').rename(folder / f'{new}_leftImg8bit.png')


_BAD_CASES = {
    'missing_label': (
        lambda m: _label_path(m, 'val', 'munster_000001_000019').unlink(), FileNotFoundError,
        r'(?s)1 gtFine \*_gtFine_labelIds\.png files of leftImg8bit images are missing:\n  '
        r'\S*gtFine/val/munster/munster_000001_000019_gtFine_labelIds\.png\nEvery image needs '
        r'its labels: re-extract gtFine_trainvaltest\.zip'),
    'label_id_40': (
        lambda m: _set_label(m, 'train', 'bochum_000002_000019',
                             lambda ids: np.where(ids == 5, 40, ids).astype(np.uint8)),
        ValueError, r'gtFine/train/bochum/bochum_000002_000019_gtFine_labelIds\.png: values '
                    r'\[40\] are not Cityscapes labelIds \(0\.\.33'),
    'size_mismatch': (
        lambda m: _set_label(m, 'test', 'bonn_000000_000019', lambda ids: ids[:16]), ValueError,
        r'bonn_000000_000019_gtFine_labelIds\.png: mask is 16x64 \(HxW\) but its image '
        r'\S*leftImg8bit/test/bonn/bonn_000000_000019_leftImg8bit\.png is 32x64'),
    'rgb_label': (
        lambda m: _save_png(_label_path(m, 'train', 'aachen_000000_000019'),
                            np.zeros((HEIGHT, WIDTH, 3), np.uint8)),
        ValueError, r"aachen_000000_000019_gtFine_labelIds\.png: label mask has PIL mode 'RGB'"),
    'bad_file_name': (
        lambda m: _rename_image(m, 'aachen_000001_000019', 'bochum_000001_000019'), ValueError,
        r'train/aachen/bochum_000001_000019_leftImg8bit\.png: expected the file name '
        r'aachen_<seq>_<frame>_leftImg8bit\.png'),
    'no_test_images': (
        lambda m: shutil.rmtree(m / 'leftImg8bit' / 'test'), FileNotFoundError,
        r'Cityscapes split test: no \S*leftImg8bit/test/<city>/\*_leftImg8bit\.png\. '
        r'Re-extract leftImg8bit_trainvaltest\.zip'),
    'no_gtfine': (
        lambda m: shutil.rmtree(m / 'gtFine'), FileNotFoundError,
        r'(?s)Cityscapes gtFine not found in manual_dir \S*manual\. Download '
        r'gtFine_trainvaltest\.zip from https://www\.cityscapes-dataset\.com/downloads/ \(login '
        r'needed\).*gtFine/\{train,val,test\}/<city>/'),
}


@pytest.mark.parametrize('case', sorted(_BAD_CASES))
def test_bad_input_fails_with_a_message_and_leaves_no_dataset(case, tmp_path):
  manual = tmp_path / 'manual'
  _write_cityscapes(manual, np.random.default_rng(2))
  breaker, error, match = _BAD_CASES[case]
  breaker(manual)
  _assert_fails_cleanly(NAME, tmp_path / 'data', manual, error, match)


def test_missing_zip_empty_or_no_manual_dir(tmp_path):
  _write_cityscapes(tmp_path / 'src', np.random.default_rng(3))
  manual = tmp_path / 'manual'
  manual.mkdir()
  _zip(tmp_path / 'src', 'leftImg8bit', manual / 'leftImg8bit_trainvaltest.zip')  # No gtFine.
  _assert_fails_cleanly(NAME, tmp_path / 'data', manual, FileNotFoundError,
                        r'Cityscapes gtFine not found in manual_dir \S*manual\. Download '
                        r'gtFine_trainvaltest\.zip')
  empty = tmp_path / 'empty'
  empty.mkdir()
  _assert_fails_cleanly(NAME, tmp_path / 'data', empty, FileNotFoundError,
                        r'(?s)manual_dir \S*empty does not exist or is empty\..*login.*'
                        r'leftImg8bit_trainvaltest\.zip and gtFine_trainvaltest\.zip.*'
                        r'cityscapes-dataset\.com/downloads.*csDownload')
  _assert_fails_cleanly(NAME, tmp_path / 'data', None, checks.SourcesUnavailableError,
                        r'(?s)Cityscapes cannot be downloaded without a login, and no '
                        r'manual_dir was given.*leftImg8bit/\{train,val,test\}/<city>/')
