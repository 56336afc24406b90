"""TFDS builder 'ade20k': ADEChallengeData2016 (SceneParsing 2016) as PSPNet / hszhao/semseg use it.

A tiny ADEChallengeData2016 is written in tmp_path in the release's layout (24x32 JPEGs, one of
them greyscale and one CMYK; 8-bit greyscale annotation PNGs holding every value 0..150; the
release's own objectInfo150.txt, kept verbatim at the end of this file, and a sceneCategories.txt)
and zipped as the official zip is. Expected labels are computed here with NumPy from the
annotations as written (k -> k-1, 0 -> 255). Every bad-input case checks its message and that the
failed prepare left nothing tfds.load would read.
"""
import shutil
import zipfile

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxseg.data import ade20k  # Importing it registers 'ade20k'.
from jaxseg.data import classes

# The builder helpers of tests/test_builders.py (tests/ is on sys.path).
from test_builders import _assert_fails_cleanly, _prepare, _read_split

TRAIN = ['ADE_train_00000001', 'ADE_train_00000002', 'ADE_train_00000003']
VAL = ['ADE_val_00000001', 'ADE_val_00000002']
GREY = 'ADE_train_00000002'  # A greyscale (1-component) JPEG.
CMYK = 'ADE_val_00000002'  # An Adobe CMYK JPEG.
HEIGHT, WIDTH = 24, 32
SCENES = {'ADE_train_00000001': 'airport_terminal', 'ADE_train_00000002': 'bathroom',
          'ADE_train_00000003': 'street', 'ADE_val_00000001': 'bedroom',
          'ADE_val_00000002': 'kitchen'}


# ------------------------------------------------------------------ fixtures and reference

def _expected_label(raw):
  """The semseg convention, written out: annotation k in 1..150 -> k-1, 0 ('other') -> 255."""
  label = raw.astype(np.int64) - 1
  label[raw == 0] = 255
  return label.astype(np.uint8)


def _blocky(rng, shape):
  """Random 8x8-pixel blocks: JPEG (8x8 DCT blocks) keeps them almost exactly."""
  blocks = rng.integers(0, 256, (shape[0] // 8, shape[1] // 8) + shape[2:], dtype=np.uint8)
  return np.kron(blocks, np.ones((8, 8) + (1,) * len(shape[2:]), np.uint8))


def _annotation(rng):
  """Every value 0..150 (at least 5 pixels each of the 768), shuffled."""
  values = np.arange(HEIGHT * WIDTH) % 151
  return rng.permutation(values).reshape(HEIGHT, WIDTH).astype(np.uint8)


def _write_ade(base, rng):
  """base/ADEChallengeData2016 in the release layout; returns {id: (rgb image, annotation)}."""
  root = base / ade20k.ROOT
  truth = {}
  for example_id in TRAIN + VAL:
    folder = 'training' if example_id in TRAIN else 'validation'
    (root / 'images' / folder).mkdir(parents=True, exist_ok=True)
    (root / 'annotations' / folder).mkdir(parents=True, exist_ok=True)
    image = _blocky(rng, (HEIGHT, WIDTH, 3))
    pil = PIL.Image.fromarray(image)
    if example_id == GREY:
      pil = pil.convert('L')
      image = np.array(pil)
    elif example_id == CMYK:
      pil = pil.convert('CMYK')
    # 4:4:4 (no chroma subsampling), so colour blocks survive JPEG almost exactly.
    pil.save(root / 'images' / folder / f'{example_id}.jpg', format='JPEG', quality=95,
             subsampling=0)
    raw = _annotation(rng)
    PIL.Image.fromarray(raw, mode='L').save(root / 'annotations' / folder / f'{example_id}.png')
    truth[example_id] = (image, raw)
  (root / 'objectInfo150.txt').write_text(''.join(OBJECT_INFO_150))
  (root / 'sceneCategories.txt').write_text(''.join(f'{i} {s}\n' for i, s in SCENES.items()))
  return truth


def _zip_like_the_release(src_base, archive):
  """ADEChallengeData2016.zip: folder entries and files under ADEChallengeData2016/."""
  archive.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(archive, 'w') as zf:
    for path in sorted((src_base / ade20k.ROOT).rglob('*')):
      zf.write(path, path.relative_to(src_base).as_posix() + ('/' if path.is_dir() else ''))


@pytest.fixture
def ade_folder(tmp_path):
  """The extracted release in tmp_path/manual; returns (its parent, truth)."""
  manual = tmp_path / 'manual'
  return manual, _write_ade(manual, np.random.default_rng(0))


def _check_prepared(builder, truth, source_root):
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {'train': 3, 'val': 2}
  assert builder.info.metadata['class_names'] == list(classes.ADE20K_CLASSES)
  assert builder.info.metadata['ignore_label'] == 255
  seen = np.zeros(256, np.int64)
  for split, ids in (('train', TRAIN), ('val', VAL)):
    examples = _read_split(builder, split)
    assert sorted(examples) == ids
    for example_id, (image, label) in examples.items():
      original, raw = truth[example_id]
      np.testing.assert_array_equal(label, _expected_label(raw), err_msg=example_id)
      seen += np.bincount(label.ravel(), minlength=256)
      assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3), example_id
      folder = 'training' if split == 'train' else 'validation'
      jpeg = source_root / 'images' / folder / f'{example_id}.jpg'
      if example_id == GREY:  # The greyscale JPEG as stored, grey replicated into R, G and B.
        grey = tf.io.decode_jpeg(jpeg.read_bytes()).numpy()
        assert grey.shape == (HEIGHT, WIDTH, 1)
        np.testing.assert_array_equal(image, np.repeat(grey, 3, -1), example_id)
        assert np.abs(grey[..., 0].astype(int) - original).max() <= 4
      elif example_id == CMYK:  # Converted to RGB (PIL's CMYK -> RGB), stored losslessly.
        with PIL.Image.open(jpeg) as im:
          assert im.mode == 'CMYK'
          np.testing.assert_array_equal(image, np.array(im.convert('RGB')))
        assert np.abs(image.astype(int) - original).max() <= 4
      else:  # RGB JPEG bytes are stored as they are.
        np.testing.assert_array_equal(image, tf.io.decode_jpeg(jpeg.read_bytes()).numpy())
        assert np.abs(image.astype(int) - original).max() <= 4
  assert set(np.flatnonzero(seen)) == set(range(150)) | {255}  # Every class and 'other'.


# ------------------------------------------------------------------ preparing

def test_ade20k_from_the_zip_in_manual_dir(tmp_path):
  truth = _write_ade(tmp_path / 'src', np.random.default_rng(0))
  manual = tmp_path / 'manual'
  _zip_like_the_release(tmp_path / 'src', manual / ade20k.ARCHIVE)
  data_dir = tmp_path / 'data'
  ds = tfds.load('ade20k', split='val', data_dir=str(data_dir),
                 download_and_prepare_kwargs={'download_config': tfds.download.DownloadConfig(
                     manual_dir=str(manual))})
  assert ds.element_spec['label'].dtype == tf.uint8
  assert ds.element_spec['label'].shape.as_list() == [None, None]
  assert ds.element_spec['image'].shape.as_list() == [None, None, 3]
  builder = tfds.builder('ade20k', data_dir=str(data_dir))
  _check_prepared(builder, truth, tmp_path / 'src' / ade20k.ROOT)
  train = tfds.load('ade20k', split='train', data_dir=str(data_dir), download=False)
  assert sorted(ex['id'].decode() for ex in tfds.as_numpy(train)) == TRAIN


@pytest.mark.parametrize('where', ['extracted_folder', 'its_parent'])
def test_ade20k_from_the_extracted_folder(where, ade_folder, tmp_path):
  manual, truth = ade_folder
  root = manual / ade20k.ROOT
  builder = _prepare('ade20k', tmp_path / 'data', root if where == 'extracted_folder' else manual)
  _check_prepared(builder, truth, root)


def test_ade20k_downloads_the_official_zip(ade_folder, tmp_path, monkeypatch):
  manual, _ = ade_folder
  requested = []

  def fake_download_and_extract(self, urls):
    requested.append(dict(urls))
    return {'ade20k': manual}  # As TFDS would extract the zip: ADEChallengeData2016/ inside.

  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                      fake_download_and_extract)
  builder = tfds.builder('ade20k', data_dir=str(tmp_path / 'data'))
  builder.download_and_prepare()  # No manual_dir: download.
  assert requested == [
      {'ade20k': 'http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip'}]
  assert builder.info.splits['train'].num_examples == 3


def test_ade20k_download_failure_says_what_to_fetch(tmp_path, monkeypatch):
  def offline(self, urls):
    raise ConnectionError('network unreachable')

  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract', offline)
  _assert_fails_cleanly(
      'ade20k', tmp_path / 'data', None, RuntimeError,
      r'(?s)Could not download http://data\.csail\.mit\.edu/places/ADEchallenge/'
      r'ADEChallengeData2016\.zip.*network unreachable.*manual_dir.*ADEChallengeData2016/'
      r'\{images,annotations\}')


# ------------------------------------------------------------------ the release's tables

def test_the_releases_object_info_matches_jaxseg_classes(tmp_path):
  path = tmp_path / 'objectInfo150.txt'
  path.write_text(''.join(OBJECT_INFO_150))
  ade20k.check_object_info(path)  # The genuine table passes.
  rows = [line.split('\t') for line in ''.join(OBJECT_INFO_150).splitlines()[1:]]
  names = [row[4].strip() for row in rows]
  assert [int(row[0]) for row in rows] == list(range(1, 151))
  for k, (name, synonyms) in enumerate(zip(classes.ADE20K_CLASSES, names), 1):
    first = synonyms.split(',')[0].strip()
    # semseg's short name is the row's first synonym, except row 90 ('television, television
    # receiver, ...'), which semseg calls 'television receiver'.
    assert name == first or (k, name) == (90, 'television receiver'), (k, name, synonyms)
  assert classes.ADE20K_CLASSES[44] == 'chest of drawers'  # Multi-word names kept whole.


def test_official_sizes_are_checked_against_scene_categories():
  listed = {'train': [f'ADE_train_{k:08d}' for k in range(1, 20211)],
            'val': [f'ADE_val_{k:08d}' for k in range(1, 2001)]}
  ade20k.check_official_sizes(listed, listed)  # The release passes.
  partial = {**listed, 'train': listed['train'][:4] + listed['train'][5:]}
  with pytest.raises(ValueError, match=r'Split train has 20209 images, expected the 20210 that '
                                       r'sceneCategories\.txt .* missing ADE_train_00000005\. '
                                       r'Re-extract ADEChallengeData2016\.zip'):
    ade20k.check_official_sizes(partial, listed)
  # A subset's own list (not the release's sizes) is not compared.
  ade20k.check_official_sizes({'train': ['x'], 'val': []}, {'train': ['a', 'b'], 'val': ['c']})
  assert ade20k.SPLIT_SIZES == {'train': 20210, 'val': 2000}


def test_tfds_scene_parse150_reads_the_2017_instance_annotations(tmp_path):
  """Why jaxseg owns its builder: TFDS's reads another release (see ade20k.py's docstring)."""
  from tensorflow_datasets.datasets.scene_parse150 import (  # pylint: disable=g-import-not-at-top
      scene_parse150_dataset_builder as scene_parse150)
  assert scene_parse150._TRAIN_URL == {
      'images': 'http://sceneparsing.csail.mit.edu/data/ChallengeData2017/images.tar',
      'annotations': 'http://sceneparsing.csail.mit.edu/data/ChallengeData2017/'
                     'annotations_instance.tar'}
  features = scene_parse150.Builder(data_dir=str(tmp_path)).info.features
  assert set(features) == {'image', 'annotation'}
  assert features['annotation'].shape == (None, None, 3)  # Not a (H, W) class map.


# ------------------------------------------------------------------ bad input

def _root(manual):
  return manual / ade20k.ROOT


def _annotation_path(manual, example_id):
  folder = 'training' if example_id.startswith('ADE_train') else 'validation'
  return _root(manual) / 'annotations' / folder / f'{example_id}.png'


def _image_path(manual, example_id):
  folder = 'training' if example_id.startswith('ADE_train') else 'validation'
  return _root(manual) / 'images' / folder / f'{example_id}.jpg'


def _save_annotation(path, raw):
  PIL.Image.fromarray(raw, mode='L').save(path)


def _set_value(path, value):
  with PIL.Image.open(path) as mask:
    raw = np.array(mask)
  raw[3, 5] = value
  _save_annotation(path, raw)


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _swap_object_info_names(manual, row_a, row_b):
  """Swaps the Name column of two rows (a release whose classes come in another order)."""
  path = _root(manual) / 'objectInfo150.txt'
  rows = [line.split('\t') for line in path.read_text().splitlines()]
  rows[row_a][4], rows[row_b][4] = rows[row_b][4], rows[row_a][4]
  path.write_text(''.join('\t'.join(row) + '\n' for row in rows))


def _official_scene_categories(manual):
  ids = [f'ADE_train_{k:08d}' for k in range(1, 20211)] + [
      f'ADE_val_{k:08d}' for k in range(1, 2001)]
  (_root(manual) / 'sceneCategories.txt').write_text(''.join(f'{i} street\n' for i in ids))


_BAD_CASES = {
    'missing_annotation': (lambda m: _annotation_path(m, 'ADE_train_00000003').unlink(),
                           FileNotFoundError,
                           r'(?s)1 ADE20K annotations are missing:\n  \S*annotations/training/'
                           r'ADE_train_00000003\.png\nEvery image needs its annotation'),
    'annotation_without_image': (lambda m: _image_path(m, 'ADE_val_00000001').unlink(),
                                 FileNotFoundError,
                                 r'(?s)1 ADE20K annotations have no image \(same name, \.jpg, in '
                                 r'\S*images/validation\):\n  \S*annotations/validation/'
                                 r'ADE_val_00000001\.png'),
    'value_151': (lambda m: _set_value(_annotation_path(m, 'ADE_train_00000001'), 151),
                  ValueError, r'annotations/training/ADE_train_00000001\.png: annotation values '
                              r'\[151\] are outside 0 \(other\) and the 150 classes 1\.\.150'),
    'size_mismatch': (lambda m: _save_annotation(_annotation_path(m, 'ADE_val_00000002'),
                                                 np.zeros((20, WIDTH), np.uint8)),
                      ValueError, r'annotations/validation/ADE_val_00000002\.png: mask is 20x32 '
                                  r'\(HxW\) but its image \S*images/validation/'
                                  r'ADE_val_00000002\.jpg is 24x32'),
    'unreadable_image': (lambda m: _truncate(_image_path(m, 'ADE_train_00000002')), ValueError,
                         r'images/training/ADE_train_00000002\.jpg: unreadable image'),
    'unreadable_annotation': (lambda m: _truncate(_annotation_path(m, 'ADE_val_00000001')),
                              ValueError, r'ADE_val_00000001\.png: unreadable annotation'),
    'rgb_annotation': (lambda m: PIL.Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(
        _annotation_path(m, 'ADE_train_00000001')),
        ValueError, r"ADE_train_00000001\.png: annotation has PIL mode 'RGB'; expected"),
    'object_info_reordered': (lambda m: _swap_object_info_names(m, 2, 3), ValueError,
                              r"objectInfo150\.txt is not the objectInfo150\.txt of the "
                              r"SceneParsing 2016 release \(ADEChallengeData2016\.zip\).*: row 2 "
                              r"is '2' 'sky', expected class 2 'building'\."),
    'object_info_truncated': (lambda m: (_root(m) / 'objectInfo150.txt').write_text(
        ''.join(''.join(OBJECT_INFO_150).splitlines(keepends=True)[:101])), ValueError,
        r'objectInfo150\.txt is not the objectInfo150\.txt of the SceneParsing 2016 release.*'
        r'expected a header "Idx \.\.\. Name" and 150 rows, got 100 rows'),
    'partial_release': (_official_scene_categories, ValueError,
                        r'Split train has 3 images, expected the 20210 that sceneCategories\.txt '
                        r'of the SceneParsing 2016 release lists; missing ADE_train_00000004'),
    'no_validation_images': (lambda m: shutil.rmtree(_root(m) / 'images' / 'validation'),
                             FileNotFoundError, r'ADE20K split val: no \S*images/validation/\*'
                                                r'\.jpg\. Expected layout: ADEChallengeData2016/'),
    'no_ade20k': (lambda m: shutil.rmtree(_root(m) / 'annotations'), FileNotFoundError,
                  r'(?s)ADE20K \(SceneParsing 2016\) not found in manual_dir \S*manual\. Download '
                  r'http://data\.csail\.mit\.edu/places/ADEchallenge/ADEChallengeData2016\.zip'
                  r' and put ADEChallengeData2016\.zip in'),
}


@pytest.mark.parametrize('case', sorted(_BAD_CASES))
def test_ade20k_bad_input_fails_with_a_message_and_leaves_no_dataset(case, ade_folder, tmp_path):
  manual, _ = ade_folder
  breaker, error, match = _BAD_CASES[case]
  breaker(manual)
  _assert_fails_cleanly('ade20k', tmp_path / 'data', manual, error, match)


def test_empty_manual_dir_is_an_error_not_a_download(tmp_path, monkeypatch):
  def no_download(self, urls):
    raise AssertionError(f'downloaded {urls}')

  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract', no_download)
  empty = tmp_path / 'empty'
  empty.mkdir()
  _assert_fails_cleanly('ade20k', tmp_path / 'data', empty, FileNotFoundError,
                        r'(?s)manual_dir \S*empty does not exist or is empty\..*'
                        r'ADEChallengeData2016\.zip')
  _assert_fails_cleanly('ade20k', tmp_path / 'data', tmp_path / 'nowhere', FileNotFoundError,
                        r'manual_dir \S*nowhere does not exist or is empty\.')


# ------------------------------------------------------------------ the release's class table

# ADEChallengeData2016/objectInfo150.txt verbatim (the copy in CSAILVision/sceneparsing, commit
# e202229; tab-separated, trailing spaces and all).
OBJECT_INFO_150 = (
    'Idx\tRatio\tTrain\tVal\tName\n'
    '1\t0.1576\t11664\t1172\twall\n'
    '2\t0.1072\t6046\t612\tbuilding, edifice\n'
    '3\t0.0878\t8265\t796\tsky\n'
    '4\t0.0621\t9336\t917\tfloor, flooring\n'
    '5\t0.0480\t6678\t641\ttree\n'
    '6\t0.0450\t6604\t643\tceiling\n'
    '7\t0.0398\t4023\t408\troad, route\n'
    '8\t0.0231\t1906\t199\tbed \n'
    '9\t0.0198\t4688\t460\twindowpane, window \n'
    '10\t0.0183\t2423\t225\tgrass\n'
    '11\t0.0181\t2874\t294\tcabinet\n'
    '12\t0.0166\t3068\t310\tsidewalk, pavement\n'
    '13\t0.0160\t5075\t526\tperson, individual, someone, somebody, mortal, soul\n'
    '14\t0.0151\t1804\t190\tearth, ground\n'
    '15\t0.0118\t6666\t796\tdoor, double door\n'
    '16\t0.0110\t4269\t411\ttable\n'
    '17\t0.0109\t1691\t160\tmountain, mount\n'
    '18\t0.0104\t3999\t441\tplant, flora, plant life\n'
    '19\t0.0104\t2149\t217\tcurtain, drape, drapery, mantle, pall\n'
    '20\t0.0103\t3261\t318\tchair\n'
    '21\t0.0098\t3164\t306\tcar, auto, automobile, machine, motorcar\n'
    '22 \t0.0074\t709\t75\twater\n'
    '23\t0.0067\t3296\t315\tpainting, picture\n'
    '24 \t0.0065\t1191\t106\tsofa, couch, lounge\n'
    '25 \t0.0061\t1516\t162\tshelf\n'
    '26 \t0.0060\t667\t69\thouse\n'
    '27 \t0.0053\t651\t57\tsea\n'
    '28\t0.0052\t1847\t224\tmirror\n'
    '29\t0.0046\t1158\t128\trug, carpet, carpeting\n'
    '30\t0.0044\t480\t44\tfield\n'
    '31\t0.0044\t1172\t98\tarmchair\n'
    '32\t0.0044\t1292\t184\tseat\n'
    '33\t0.0033\t1386\t138\tfence, fencing\n'
    '34\t0.0031\t698\t61\tdesk\n'
    '35\t0.0030\t781\t73\trock, stone\n'
    '36\t0.0027\t380\t43\twardrobe, closet, press\n'
    '37\t0.0026\t3089\t302\tlamp\n'
    '38\t0.0024\t404\t37\tbathtub, bathing tub, bath, tub\n'
    '39\t0.0024\t804\t99\trailing, rail\n'
    '40\t0.0023\t1453\t153\tcushion\n'
    '41\t0.0023\t411\t37\tbase, pedestal, stand\n'
    '42\t0.0022\t1440\t162\tbox\n'
    '43\t0.0022\t800\t77\tcolumn, pillar\n'
    '44\t0.0020\t2650\t298\tsignboard, sign\n'
    '45\t0.0019\t549\t46\tchest of drawers, chest, bureau, dresser\n'
    '46\t0.0019\t367\t36\tcounter\n'
    '47\t0.0018\t311\t30\tsand\n'
    '48\t0.0018\t1181\t122\tsink\n'
    '49\t0.0018\t287\t23\tskyscraper\n'
    '50\t0.0018\t468\t38\tfireplace, hearth, open fireplace\n'
    '51\t0.0018\t402\t43\trefrigerator, icebox\n'
    '52\t0.0018\t130\t12\tgrandstand, covered stand\n'
    '53\t0.0018\t561\t64\tpath\n'
    '54\t0.0017\t880\t102\tstairs, steps\n'
    '55\t0.0017\t86\t12\trunway\n'
    '56\t0.0017\t172\t11\tcase, display case, showcase, vitrine\n'
    '57\t0.0017\t198\t18\tpool table, billiard table, snooker table\n'
    '58\t0.0017\t930\t109\tpillow\n'
    '59\t0.0015\t139\t18\tscreen door, screen\n'
    '60\t0.0015\t564\t52\tstairway, staircase\n'
    '61\t0.0015\t320\t26\triver\n'
    '62\t0.0015\t261\t29\tbridge, span\n'
    '63\t0.0014\t275\t22\tbookcase\n'
    '64\t0.0014\t335\t60\tblind, screen\n'
    '65\t0.0014\t792\t75\tcoffee table, cocktail table\n'
    '66\t0.0014\t395\t49\ttoilet, can, commode, crapper, pot, potty, stool, throne\n'
    '67\t0.0014\t1309\t138\tflower\n'
    '68\t0.0013\t1112\t113\tbook\n'
    '69\t0.0013\t266\t27\thill\n'
    '70\t0.0013\t659\t66\tbench\n'
    '71\t0.0012\t331\t31\tcountertop\n'
    '72\t0.0012\t531\t56\tstove, kitchen stove, range, kitchen range, cooking stove\n'
    '73\t0.0012\t369\t36\tpalm, palm tree\n'
    '74\t0.0012\t144\t9\tkitchen island\n'
    '75\t0.0011\t265\t29\tcomputer, computing machine, computing device, data processor, '
    'electronic computer, information processing system\n'
    '76\t0.0010\t324\t33\tswivel chair\n'
    '77\t0.0009\t304\t27\tboat\n'
    '78\t0.0009\t170\t20\tbar\n'
    '79\t0.0009\t68\t6\tarcade machine\n'
    '80\t0.0009\t65\t8\thovel, hut, hutch, shack, shanty\n'
    '81\t0.0009\t248\t25\tbus, autobus, coach, charabanc, double-decker, jitney, motorbus, '
    'motorcoach, omnibus, passenger vehicle\n'
    '82\t0.0008\t492\t49\ttowel\n'
    '83\t0.0008\t2510\t269\tlight, light source\n'
    '84\t0.0008\t440\t39\ttruck, motortruck\n'
    '85\t0.0008\t147\t18\ttower\n'
    '86\t0.0008\t583\t56\tchandelier, pendant, pendent\n'
    '87\t0.0007\t533\t61\tawning, sunshade, sunblind\n'
    '88\t0.0007\t1989\t239\tstreetlight, street lamp\n'
    '89\t0.0007\t71\t5\tbooth, cubicle, stall, kiosk\n'
    '90\t0.0007\t618\t53\ttelevision, television receiver, television set, tv, tv set, '
    'idiot box, boob tube, telly, goggle box\n'
    '91\t0.0007\t135\t12\tairplane, aeroplane, plane\n'
    '92\t0.0007\t83\t5\tdirt track\n'
    '93\t0.0007\t178\t17\tapparel, wearing apparel, dress, clothes\n'
    '94\t0.0006\t1003\t104\tpole\n'
    '95\t0.0006\t182\t12\tland, ground, soil\n'
    '96\t0.0006\t452\t50\tbannister, banister, balustrade, balusters, handrail\n'
    '97\t0.0006\t42\t6\tescalator, moving staircase, moving stairway\n'
    '98\t0.0006\t307\t31\tottoman, pouf, pouffe, puff, hassock\n'
    '99\t0.0006\t965\t114\tbottle\n'
    '100\t0.0006\t117\t13\tbuffet, counter, sideboard\n'
    '101\t0.0006\t354\t35\tposter, posting, placard, notice, bill, card\n'
    '102\t0.0006\t108\t9\tstage\n'
    '103\t0.0006\t557\t55\tvan\n'
    '104\t0.0006\t52\t4\tship\n'
    '105\t0.0005\t99\t5\tfountain\n'
    '106\t0.0005\t57\t4\tconveyer belt, conveyor belt, conveyer, conveyor, transporter\n'
    '107\t0.0005\t292\t31\tcanopy\n'
    '108\t0.0005\t77\t9\twasher, automatic washer, washing machine\n'
    '109\t0.0005\t340\t38\tplaything, toy\n'
    '110\t0.0005\t66\t3\tswimming pool, swimming bath, natatorium\n'
    '111\t0.0005\t465\t49\tstool\n'
    '112\t0.0005\t50\t4\tbarrel, cask\n'
    '113\t0.0005\t622\t75\tbasket, handbasket\n'
    '114\t0.0005\t80\t9\twaterfall, falls\n'
    '115\t0.0005\t59\t3\ttent, collapsible shelter\n'
    '116\t0.0005\t531\t72\tbag\n'
    '117\t0.0005\t282\t30\tminibike, motorbike\n'
    '118\t0.0005\t73\t7\tcradle\n'
    '119\t0.0005\t435\t44\toven\n'
    '120\t0.0005\t136\t25\tball\n'
    '121\t0.0005\t116\t24\tfood, solid food\n'
    '122\t0.0004\t266\t31\tstep, stair\n'
    '123\t0.0004\t58\t12\ttank, storage tank\n'
    '124\t0.0004\t418\t83\ttrade name, brand name, brand, marque\n'
    '125\t0.0004\t319\t43\tmicrowave, microwave oven\n'
    '126\t0.0004\t1193\t139\tpot, flowerpot\n'
    '127\t0.0004\t97\t23\tanimal, animate being, beast, brute, creature, fauna\n'
    '128\t0.0004\t347\t36\tbicycle, bike, wheel, cycle \n'
    '129\t0.0004\t52\t5\tlake\n'
    '130\t0.0004\t246\t22\tdishwasher, dish washer, dishwashing machine\n'
    '131\t0.0004\t108\t13\tscreen, silver screen, projection screen\n'
    '132\t0.0004\t201\t30\tblanket, cover\n'
    '133\t0.0004\t285\t21\tsculpture\n'
    '134\t0.0004\t268\t27\thood, exhaust hood\n'
    '135\t0.0003\t1020\t108\tsconce\n'
    '136\t0.0003\t1282\t122\tvase\n'
    '137\t0.0003\t528\t65\ttraffic light, traffic signal, stoplight\n'
    '138\t0.0003\t453\t57\ttray\n'
    '139\t0.0003\t671\t100\tashcan, trash can, garbage can, wastebin, ash bin, ash-bin, '
    'ashbin, dustbin, trash barrel, trash bin\n'
    '140\t0.0003\t397\t44\tfan\n'
    '141\t0.0003\t92\t8\tpier, wharf, wharfage, dock\n'
    '142\t0.0003\t228\t18\tcrt screen\n'
    '143\t0.0003\t570\t59\tplate\n'
    '144\t0.0003\t217\t22\tmonitor, monitoring device\n'
    '145\t0.0003\t206\t19\tbulletin board, notice board\n'
    '146\t0.0003\t130\t14\tshower\n'
    '147\t0.0003\t178\t28\tradiator\n'
    '148\t0.0002\t504\t57\tglass, drinking glass\n'
    '149\t0.0002\t775\t96\tclock\n'
    '150\t0.0002\t421\t56\tflag\n'
)
