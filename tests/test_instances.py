"""Object instances in the builders: 'instance' (ids per pixel) and 'objects' (class, box).

VOC and SBD sources are written in tmp_path in their real layouts (VOC SegmentationClass and
SegmentationObject palette PNGs with the 255 band; SBD cls/ and inst/ .mat files with struct
GTcls / GTinst as SBD stores them), plus SBD's own inst files in ../shared/data when present. The
expected instance maps, classes and boxes come from how the fixtures were painted, renumbered and
boxed by the NumPy reference below, not from the builders' code.
"""
import hashlib
import pathlib

import numpy as np
import PIL.Image
import pytest
import scipy.io
import tensorflow as tf
import tensorflow_datasets as tfds

import jaxseg.data  # noqa: F401  (registers the builders)
from jaxseg.data import checks
from jaxseg.data import synthetic


# Fake ids as in test_builders.py: 2007_000033 and 2007_000042 are in FCN's seg11valid.
VOC_TRAIN = ['2008_000002', '2008_000003']
VOC_VAL = ['2007_000033', '2007_000042', '2009_000001']
SBD_TRAIN = ['2008_000002', '2008_000010', '2009_000001']
SBD_VAL = ['2008_000020', '2007_000042']
SBD_ONLY_IMAGE = '2008_000020'  # Image only in SBD's img/; it has no objects at all.
VOC_GAP = '2008_000003'  # Its SegmentationObject PNG has ids 1, 2, 4 (no 3).
VOC_MIXED = '2007_000033'  # Instance 1 spans two classes in SegmentationClass (majority wins).
SBD_GAP = '2008_000010'  # GTinst.Categories has 4 entries, id 3 has no pixels.


# ------------------------------------------------------------------ reference and fixtures

def _expected(instance, categories):
  """The features by definition: present ids renumbered 1..n in order, tight end-exclusive boxes.

  categories: {source instance id: class}.
  """
  ids = sorted(set(np.unique(instance).tolist()) - {0, 255})
  renumbered = np.zeros(instance.shape, np.uint8)
  renumbered[instance == 255] = 255
  labels, boxes = [], []
  for new_id, k in enumerate(ids, 1):
    renumbered[instance == k] = new_id
    ys, xs = np.nonzero(instance == k)
    boxes.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    labels.append(categories[k])
  return renumbered, np.array(labels, np.int32), np.array(boxes, np.int32).reshape(-1, 4)


def _paint(height, width, rects, band):
  """Rectangles (y0, x0, y1, x1, class) painted in order as instances 1, 2, ...; later on top.

  band: VOC's 255 band, one pixel on each side of every object outline, in both maps.
  Returns (instance, label, {id: class}).
  """
  instance = np.zeros((height, width), np.uint8)
  label = np.zeros((height, width), np.uint8)
  for k, (y0, x0, y1, x1, cls) in enumerate(rects, 1):
    instance[y0:y1, x0:x1] = k
    label[y0:y1, x0:x1] = cls
  if band:
    edge = np.zeros(instance.shape, bool)
    for axis in (0, 1):
      change = np.diff(instance.astype(int), axis=axis) != 0
      if axis == 0:
        edge[1:] |= change
        edge[:-1] |= change
      else:
        edge[:, 1:] |= change
        edge[:, :-1] |= change
    instance[edge] = 255
    label[edge] = 255
  return instance, label, {k: r[4] for k, r in enumerate(rects, 1)}


def _random_rects(rng, height, width, count):
  rects = []
  for _ in range(count):
    h, w = rng.integers(3, height // 2 + 1), rng.integers(3, width // 2 + 1)
    y0, x0 = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    rects.append((int(y0), int(x0), int(y0 + h), int(x0 + w), int(rng.integers(1, 21))))
  return rects


# The fixture writers of tests/test_builders.py (tests/ is on sys.path).
from test_builders import _save_jpeg, _save_palette_png, _sparse_cells  # noqa: E402


def _save_sbd(root, example_id, instance, categories):
  """SBD's cls/<id>.mat (GTcls) and inst/<id>.mat (GTinst) for an instance map without band.

  categories: GTinst.Categories, the class of instance k in row k-1 (uint8 column, as SBD's).
  """
  label = np.zeros(instance.shape, np.uint8)
  for k, cls in enumerate(categories, 1):
    label[instance == k] = cls
  for folder in ('cls', 'inst'):
    (root / folder).mkdir(parents=True, exist_ok=True)
  present = np.unique(label[label > 0]).astype(np.uint8)[:, None]
  scipy.io.savemat(root / 'cls' / f'{example_id}.mat', {'GTcls': {
      'Boundaries': _sparse_cells(20, label.shape), 'Segmentation': label,
      'CategoriesPresent': present}})
  scipy.io.savemat(root / 'inst' / f'{example_id}.mat', {'GTinst': {
      'Segmentation': instance, 'Boundaries': _sparse_cells(len(categories), instance.shape),
      'Categories': np.array(categories, np.uint8).reshape(-1, 1)}})
  return label


def _write_sources(base, rng, voc_train=VOC_TRAIN, voc_val=VOC_VAL, sbd=True):
  """VOC (+SBD) in their extracted layouts under base.

  Returns {'voc' | 'sbd': {id: (label, expected instance, expected labels, expected boxes)}}.
  """
  voc_root = base / 'VOCdevkit' / 'VOC2012'
  sbd_root = base / 'benchmark_RELEASE' / 'dataset'
  sbd_ids = sorted(set(SBD_TRAIN + SBD_VAL)) if sbd else []
  truth = {'voc': {}, 'sbd': {}}
  for n, i in enumerate(sorted(set(voc_train + voc_val + sbd_ids))):
    height, width = 24 + 4 * n, 40 - 2 * n
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if i == SBD_ONLY_IMAGE:
      _save_jpeg(sbd_root / 'img' / f'{i}.jpg', image)
    else:
      _save_jpeg(voc_root / 'JPEGImages' / f'{i}.jpg', image)
    if i in voc_train + voc_val:
      if i == VOC_MIXED:  # A large instance 1 whose top two rows are another class.
        instance, label, cats = _paint(height, width, [(2, 2, 16, 20, 15), (14, 18, 22, 30, 3)],
                                       band=True)
        label[3:5][instance[3:5] == 1] = 9
        assert (label[instance == 1] == 15).sum() > 2 * (label[instance == 1] == 9).sum()
      else:
        instance, label, cats = _paint(height, width, _random_rects(rng, height, width, 4),
                                       band=True)
      if i == VOC_GAP:
        assert 3 in instance
        instance = np.where((instance >= 3) & (instance < 255), instance + 1, instance)
        cats = {(k + 1 if k >= 3 else k): c for k, c in cats.items()}
        assert set(np.unique(instance)) == {0, 1, 2, 4, 5, 255}
      _save_palette_png(voc_root / 'SegmentationClass' / f'{i}.png', label)
      _save_palette_png(voc_root / 'SegmentationObject' / f'{i}.png', instance)
      truth['voc'][i] = (label, *_expected(instance, cats))
    if i in sbd_ids:
      if i == SBD_ONLY_IMAGE:
        instance, categories = np.zeros((height, width), np.uint8), []
      else:
        instance, _, cats = _paint(height, width, _random_rects(rng, height, width, 3), band=False)
        categories = [cats[k] for k in sorted(cats)]
        if i == SBD_GAP:  # Id 3 loses its pixels: Categories keeps its row.
          instance[instance == 3] = 0
          categories.append(7)
          instance[-2:, -3:] = 4
      label = _save_sbd(sbd_root, i, instance, categories)
      truth['sbd'][i] = (label, *_expected(instance, dict(enumerate(categories, 1))))
  lists = voc_root / 'ImageSets' / 'Segmentation'
  lists.mkdir(parents=True)
  (lists / 'train.txt').write_text('\n'.join(voc_train) + '\n')
  (lists / 'val.txt').write_text('\n'.join(voc_val) + '\n')
  if sbd:
    (sbd_root / 'train.txt').write_text('\n'.join(SBD_TRAIN) + '\n')
    (sbd_root / 'val.txt').write_text('\n'.join(SBD_VAL) + '\n')
  return truth


@pytest.fixture
def sources(tmp_path):
  manual = tmp_path / 'manual'
  return manual, _write_sources(manual, np.random.default_rng(0))


def _prepare(name, data_dir, manual_dir):
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _load(name, data_dir, split):
  """{id: example} as tfds.load returns it (prepared already)."""
  ds = tfds.load(name, split=split, data_dir=str(data_dir), download=False)
  return {ex['id'].decode(): ex for ex in tfds.as_numpy(ds)}


def _assert_example(ex, label, instance, labels, boxes, where):
  np.testing.assert_array_equal(ex['label'], label, err_msg=where)
  assert ex['instance'].shape == label.shape + (1,) and ex['instance'].dtype == np.uint8, where
  np.testing.assert_array_equal(ex['instance'][..., 0], instance, err_msg=where)
  np.testing.assert_array_equal(ex['objects']['label'], labels, err_msg=where)
  np.testing.assert_array_equal(ex['objects']['box'], boxes.reshape(-1, 4), err_msg=where)
  assert ex['objects']['label'].dtype == ex['objects']['box'].dtype == np.int32, where


# ------------------------------------------------------------------ VOC + SBD

def test_voc_full_instances_follow_the_label_source(sources, tmp_path):
  manual, truth = sources
  data_dir = tmp_path / 'data'
  builder = _prepare('voc2012_segmentation', data_dir, manual)
  assert str(builder.info.version) == '1.1.0'
  spec = tfds.load('voc2012_segmentation', split='val', data_dir=str(data_dir),
                   download=False).element_spec
  assert spec['instance'].shape.as_list() == [None, None, 1]
  assert spec['instance'].dtype == tf.uint8
  assert spec['objects']['label'].shape.as_list() == [None]
  assert spec['objects']['box'].shape.as_list() == [None, 4]
  assert spec['objects']['box'].dtype == tf.int32

  expected_ids = {
      'train': sorted(VOC_TRAIN), 'val': sorted(VOC_VAL),
      'seg11valid': ['2007_000033', '2007_000042'],
      'train_aug': ['2008_000002', '2008_000003', '2008_000010', '2008_000020'],
      'sbd_train': sorted(SBD_TRAIN)}
  for split, ids in expected_ids.items():
    examples = _load('voc2012_segmentation', data_dir, split)
    assert sorted(examples) == ids
    for i, ex in examples.items():
      source = 'voc' if i in truth['voc'] and split != 'sbd_train' else 'sbd'
      _assert_example(ex, *truth[source][i], where=f'{split}/{i} ({source})')

  # The cases the fixtures were built for.
  val = _load('voc2012_segmentation', data_dir, 'val')
  assert val[VOC_MIXED]['objects']['label'].tolist() == [15, 3]  # Majority class of instance 1.
  train = _load('voc2012_segmentation', data_dir, 'train')
  png = np.array(PIL.Image.open(manual / f'VOCdevkit/VOC2012/SegmentationObject/{VOC_GAP}.png'))
  assert 4 in png and 3 not in png
  assert set(np.unique(train[VOC_GAP]['instance'])) == {0, 1, 2, 3, 4, 255}  # Renumbered.
  sbd_train = _load('voc2012_segmentation', data_dir, 'sbd_train')
  assert len(sbd_train[SBD_GAP]['objects']['label']) == 3
  assert sbd_train[SBD_GAP]['objects']['label'][2] == 7  # Categories row 4 -> new id 3.
  # The same image, two sources: VOC's in train_aug, SBD's in sbd_train.
  train_aug = _load('voc2012_segmentation', data_dir, 'train_aug')
  assert 255 in train_aug['2008_000002']['instance']
  assert 255 not in sbd_train['2008_000002']['instance']
  assert train_aug[SBD_ONLY_IMAGE]['objects']['box'].shape == (0, 4)  # No objects.


def test_voc_only_instances(sources, tmp_path):
  manual, truth = sources
  data_dir = tmp_path / 'data'
  builder = _prepare('voc2012_segmentation/voc_only', data_dir, manual)
  assert set(builder.info.splits) == {'train', 'val', 'seg11valid'}
  for split in ('train', 'val', 'seg11valid'):
    for i, ex in _load('voc2012_segmentation/voc_only', data_dir, split).items():
      _assert_example(ex, *truth['voc'][i], where=f'{split}/{i}')
  assert 'SegmentationObject' in builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert 'inst' in builder.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_real_sbd_inst_files(shared_data, tmp_path):
  """SBD's own inst/*.mat: read directly and through the builder (train_aug, sbd_train)."""
  sbd = shared_data / 'sbd_samples' / 'dataset'
  reference = {}
  for i, categories in (('2008_000051', [5, 5, 9, 15, 15]), ('2008_000195', [4, 4, 15, 15, 15])):
    gt = scipy.io.loadmat(sbd / 'inst' / f'{i}.mat')['GTinst']
    seg = gt['Segmentation'][0, 0]
    assert gt['Categories'][0, 0].ravel().tolist() == categories
    cls = scipy.io.loadmat(sbd / 'cls' / f'{i}.mat')['GTcls']['Segmentation'][0, 0]
    for k, c in enumerate(categories, 1):  # The real files agree: cls under instance k is c.
      assert set(np.unique(cls[seg == k])) == {c}
    read_seg, read_categories = checks.read_sbd_inst_mat(sbd / 'inst' / f'{i}.mat')
    np.testing.assert_array_equal(read_seg, seg)
    assert read_categories.tolist() == categories
    reference[i] = (cls, *_expected(seg, dict(enumerate(categories, 1))))
    assert len(reference[i][2]) == 5  # Ids 1..5 all present: nothing renumbered.

  manual = tmp_path / 'manual'
  _write_sources(manual, np.random.default_rng(1), voc_train=['2008_000002'],
                 voc_val=['2007_000033'], sbd=False)
  (manual / 'benchmark_RELEASE').mkdir()
  (manual / 'benchmark_RELEASE' / 'dataset').symlink_to(sbd)
  data_dir = tmp_path / 'data'
  _prepare('voc2012_segmentation', data_dir, manual)
  train_aug = _load('voc2012_segmentation', data_dir, 'train_aug')
  assert sorted(train_aug) == ['2008_000002', '2008_000051', '2008_000195']
  for i, ref in reference.items():
    _assert_example(train_aug[i], *ref, where=i)
  sbd_train = _load('voc2012_segmentation', data_dir, 'sbd_train')
  assert list(sbd_train) == ['2008_000051']
  _assert_example(sbd_train['2008_000051'], *reference['2008_000051'], where='sbd_train')
  # A hand check of one box: person instance 5 of 2008_000051.
  seg = scipy.io.loadmat(sbd / 'inst' / '2008_000051.mat')['GTinst']['Segmentation'][0, 0]
  rows, cols = np.flatnonzero((seg == 5).any(1)), np.flatnonzero((seg == 5).any(0))
  assert sbd_train['2008_000051']['objects']['box'][4].tolist() == [
      rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]


# ------------------------------------------------------------------ bad input

def _voc(manual, folder, name):
  return manual / 'VOCdevkit' / 'VOC2012' / folder / name


def _sbd(manual, folder, name):
  return manual / 'benchmark_RELEASE' / 'dataset' / folder / name


def _short_categories(manual):
  path = _sbd(manual, 'inst', f'{SBD_GAP}.mat')
  gt = scipy.io.loadmat(path)['GTinst']
  seg = gt['Segmentation'][0, 0]
  scipy.io.savemat(path, {'GTinst': {'Segmentation': seg, 'Boundaries': _sparse_cells(2, seg.shape),
                                     'Categories': gt['Categories'][0, 0][:2]}})


def _object_on_background(manual):
  path = _voc(manual, 'SegmentationObject', '2007_000042.png')
  instance = np.array(PIL.Image.open(path))
  label = np.array(PIL.Image.open(_voc(manual, 'SegmentationClass', '2007_000042.png')))
  instance[label == 0] = 0
  instance[-3:, :3] = 9  # Background in SegmentationClass there.
  assert (label[-3:, :3] == 0).all()
  _save_palette_png(path, instance)


def _category_out_of_range(manual):
  path = _sbd(manual, 'inst', '2009_000001.mat')
  gt = scipy.io.loadmat(path)['GTinst']
  seg, categories = gt['Segmentation'][0, 0], gt['Categories'][0, 0].copy()
  categories[0] = 21
  scipy.io.savemat(path, {'GTinst': {'Segmentation': seg, 'Categories': categories}})


_BAD_CASES = {
    'missing_voc_instances': (
        lambda m: _voc(m, 'SegmentationObject', '2009_000001.png').unlink(), FileNotFoundError,
        r'1 source files listed in the split lists are missing:\n  '
        r'\S*SegmentationObject/2009_000001\.png\nRe-extract .*SegmentationObject'),
    'missing_sbd_instances': (
        lambda m: _sbd(m, 'inst', '2008_000020.mat').unlink(), FileNotFoundError,
        r'1 source files listed in the split lists are missing:\n  '
        r'\S*dataset/inst/2008_000020\.mat\nRe-extract .*benchmark\.tgz.*inst'),
    'voc_instance_size': (
        lambda m: _save_palette_png(_voc(m, 'SegmentationObject', f'{VOC_GAP}.png'),
                                    np.zeros((5, 7), np.uint8)), ValueError,
        r'SegmentationObject/2008_000003\.png: mask is 5x7 \(HxW\) but its image '
        r'\S*JPEGImages/2008_000003\.jpg is 36x34'),
    'sbd_instance_size': (
        lambda m: scipy.io.savemat(_sbd(m, 'inst', '2008_000010.mat'), {'GTinst': {
            'Segmentation': np.zeros((6, 9), np.uint8), 'Categories': np.zeros((0, 1), np.uint8)}}),
        ValueError, r'inst/2008_000010\.mat: mask is 6x9 \(HxW\) but its image '
                    r'\S*JPEGImages/2008_000010\.jpg is 40x32'),
    'sbd_categories_short': (
        _short_categories, ValueError,
        r'inst/2008_000010\.mat: instance ids go up to 4 but only 2 categories are given'),
    'sbd_category_out_of_range': (
        _category_out_of_range, ValueError,
        r'inst/2009_000001\.mat: instances \(id, class\) \[\(1, 21\)\] have classes outside the '
        r'object classes 1\.\.20'),
    'sbd_without_gtinst': (
        lambda m: scipy.io.savemat(_sbd(m, 'inst', '2009_000001.mat'),
                                   {'GTcls': {'Segmentation': np.zeros((4, 4), np.uint8)}}),
        ValueError, r'inst/2009_000001\.mat: no struct GTinst with fields Segmentation and '
                    r'Categories; expected an SBD dataset/inst/\*\.mat file'),
    'voc_instance_on_background': (
        _object_on_background, ValueError,
        r'SegmentationObject/2007_000042\.png: instance 9 has no object class under its pixels '
        r'in \S*SegmentationClass/2007_000042\.png \(values \[0\], 255 excluded\)'),
}


@pytest.mark.parametrize('case', sorted(_BAD_CASES))
def test_bad_instance_input_fails_with_a_message(case, sources, tmp_path):
  manual, _ = sources
  breaker, error, match = _BAD_CASES[case]
  breaker(manual)
  data_dir = tmp_path / 'data'
  with pytest.raises(error, match=match):
    _prepare('voc2012_segmentation', data_dir, manual)
  assert not tfds.builder('voc2012_segmentation', data_dir=str(data_dir)).is_prepared()
  assert not [p for p in pathlib.Path(data_dir).rglob('*') if 'incomplete' in p.name]


def test_objects_from_instances_checks_its_inputs():
  with pytest.raises(ValueError, match=r'x\.png: instance ids \[256\] are outside'):
    checks.objects_from_instances(np.array([[0, 256]]), [1] * 300, 21, 'x.png')
  with pytest.raises(ValueError, match=r'x\.png: instance map is float64 \(2,\); expected a 2-D'):
    checks.objects_from_instances(np.zeros(2), [], 21, 'x.png')
  instance, objects = checks.objects_from_instances(
      np.array([[0, 255, 5], [5, 0, 2]]), [0, 7, 0, 0, 3], 21, 'x.png')
  np.testing.assert_array_equal(instance[..., 0], [[0, 255, 2], [2, 0, 1]])
  assert objects['label'].tolist() == [7, 3]
  assert objects['box'].tolist() == [[1, 2, 2, 3], [0, 0, 2, 3]]


# ------------------------------------------------------------------ synthetic

# sha256[:16] of (image, label) bytes of render_scene, computed before instances were added.
_SCENE_HASHES = {
    ('train', 0, 64, 64): ('a7b0d48c04377429', '2820f379684414f1'),
    ('train', 5, 64, 64): ('efaa8568d3a7751b', 'a5bd8a7c5d73f228'),
    ('train', 17, 64, 64): ('28131e494aef3ebf', 'c604b286b2c4f362'),
    ('val', 3, 64, 64): ('0e9c7f0c836b125e', 'c7f13e6325ac557f'),
    ('train', 2, 128, 128): ('ed983289c9e67cea', '7c600deb287ec8bf'),
    ('val', 0, 128, 96): ('73cb53600c444085', '07d00e845ecac177'),
}
# sha256 of image and label bytes of every tiny scene (train 0..31 then val 0..15), before too.
_TINY_HASH = '413b86e798a4360a3a45b1f4dd28548d8b64c94c751c4d541a49c9b3aa5a7e45'


def _digest(array):
  return hashlib.sha256(array.tobytes()).hexdigest()[:16]


def test_synthetic_scenes_are_unchanged():
  for (split, index, height, width), hashes in _SCENE_HASHES.items():
    rng = lambda: synthetic.scene_rng(0, split, index)  # noqa: E731
    image, label = synthetic.render_scene(rng(), height, width)
    assert (_digest(image), _digest(label)) == hashes
    image2, label2, instance, _ = synthetic.render_scene_with_instances(rng(), height, width)
    assert (_digest(image2), _digest(label2)) == hashes
    np.testing.assert_array_equal(instance == 255, label == 255)
  total = hashlib.sha256()
  for split, count in (('train', 32), ('val', 16)):
    for index in range(count):
      image, label = synthetic.render_scene(synthetic.scene_rng(0, split, index), 64, 64)
      total.update(image.tobytes())
      total.update(label.tobytes())
  assert total.hexdigest() == _TINY_HASH


def test_synthetic_objects(tmp_path):
  ds, info = tfds.load('synthetic_shapes/tiny', split='train+val', data_dir=str(tmp_path),
                       with_info=True)
  assert str(info.version) == '1.1.0'
  assert ds.element_spec['instance'].shape.as_list() == [64, 64, 1]
  same_class_pairs = 0
  for ex in tfds.as_numpy(ds):
    split, index = ex['id'].decode().split('_')
    image, label = synthetic.render_scene(synthetic.scene_rng(0, split, int(index)), 64, 64)
    np.testing.assert_array_equal(ex['label'], label)  # The scene is what render_scene paints.
    np.testing.assert_array_equal(ex['image'],
                                  tf.io.decode_jpeg(synthetic.encode_jpeg(image)).numpy())
    instance = ex['instance'][..., 0]
    labels, boxes = ex['objects']['label'], ex['objects']['box']
    # Ignore wherever the label ignores; an object exactly where the label has an object class.
    np.testing.assert_array_equal(instance == 255, label == 255)
    np.testing.assert_array_equal((instance > 0) & (instance < 255), (label > 0) & (label < 255))
    ids = sorted(set(np.unique(instance).tolist()) - {0, 255})
    assert ids == list(range(1, len(labels) + 1))  # Consecutive, one entry per instance.
    for k in ids:
      ys, xs = np.nonzero(instance == k)
      assert boxes[k - 1].tolist() == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
      assert set(np.unique(label[instance == k]).tolist()) == {labels[k - 1]}
    same_class_pairs += len(labels) - len(set(labels.tolist()))
  assert same_class_pairs > 10  # Instances separate objects the label cannot tell apart.
