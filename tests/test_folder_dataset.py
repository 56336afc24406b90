"""The 'segmentation_folder' dataset: your own images and masks, prepared through TFDS.

Folders are written in tmp_path in the layouts users have (images/ + masks/ with RGB colour masks
and a JSON or CSV table, palette PNGs, index PNGs with an ignore value, a CVAT/Datumaro VOC
export); every label read back is compared with the label map the test drew the mask from. Every
bad input checks its message and that the failed prepare left nothing tfds.load would read. The
last tests train experiments/folder_fcn8s_cpu.py for one step through the CLI and predict.
"""
import hashlib
import io
import json
import pathlib

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxseg import cli, config_loading, preflight
from jaxseg.data import classes
from jaxseg.data import folder
from jaxseg.data import pipeline

EXPERIMENTS = config_loading.experiments_dir()
HW = (24, 32)
COLOURS = {'background': (0, 0, 0), 'road': (128, 64, 128), 'car': (0, 0, 142),
           'tree': (107, 142, 35)}
VOID = (255, 255, 255)


# ------------------------------------------------------------------ helpers

def _data_config(root, data_dir, **fields):
  config = config_loading.load_config(EXPERIMENTS / 'default.py')
  config.data.dataset = 'segmentation_folder'
  config.data.folder = str(root)
  config.data.data_dir = str(data_dir)
  for key, value in fields.items():
    config.data[key] = value
  return config


def _read(builder, split):
  """{id: (image, label)} of a prepared split."""
  return {ex['id'].decode(): (ex['image'], ex['label'])
          for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def _assert_fails_cleanly(config, error, match):
  """load_builder raises; nothing under data_dir is a dataset tfds.load would read."""
  with pytest.raises(error, match=f'(?s){match}'):
    pipeline.load_builder(config)
  data_dir = pathlib.Path(config.data.data_dir)
  written = list(data_dir.rglob('*')) if data_dir.exists() else []
  assert not [p for p in written if p.name == 'dataset_info.json' or 'incomplete' in p.name]
  try:
    name = folder.builder_config(config.data).name
  except (ValueError, FileNotFoundError):
    return  # Refused before a config name exists: nothing was prepared.
  with pytest.raises(Exception):  # Nothing a reader would accept.
    tfds.load(f'segmentation_folder/{name}', split='train', data_dir=str(data_dir),
              download=False)


def _blocks(rng, values, hw=HW, block=4):
  """A label map of `block`-pixel squares drawn from `values`."""
  grid = rng.choice(np.asarray(values), (hw[0] // block + 1, hw[1] // block + 1))
  return np.kron(grid, np.ones((block, block), grid.dtype))[:hw[0], :hw[1]]


def _save(path, array, mode=None, palette=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  image = PIL.Image.fromarray(np.asarray(array), mode=mode)
  if palette is not None:
    image.putpalette(np.asarray(palette, np.uint8).ravel().tolist())
  image.save(path)


def _photo(rng, hw=HW):
  return rng.integers(0, 256, (*hw, 3), dtype=np.uint8)


def _rgb_folder(root, rng, count=8):
  """images/*.png + masks/*.png painted in COLOURS (VOID = ignore); returns {stem: (image, label)}.

  The label uses class ids in COLOURS order, 255 for VOID pixels; one mask is RGBA with a
  transparent (ignore) corner.
  """
  palette = np.array(list(COLOURS.values()) + [VOID], np.uint8)
  truth = {}
  for i in range(count):
    stem = f'img_{i:02d}'
    image = _photo(rng)
    label = _blocks(rng, [0, 1, 2, 3, 4]).astype(np.uint8)  # 4 = VOID.
    painted = palette[label]
    label = np.where(label == 4, 255, label).astype(np.uint8)
    _save(root / 'images' / f'{stem}.png', image)
    if i == 0:
      rgba = np.concatenate([painted, np.full((*HW, 1), 255, np.uint8)], -1)
      rgba[:5, :6, 3] = 0
      label[:5, :6] = 255
      _save(root / 'masks' / f'{stem}.png', rgba)
    else:
      _save(root / 'masks' / f'{stem}.png', painted)
    truth[stem] = (image, label)
  return truth


def _seeded_val(stems, fraction, seed):
  """The documented rule, computed here: the round(n x fraction) stems of smallest sha256."""
  count = max(1, round(len(stems) * fraction))
  return sorted(sorted(stems, key=lambda s: hashlib.sha256(f'{seed}:{s}'.encode()).hexdigest())
                [:count])


# ------------------------------------------------------------------ class tables

def test_class_tables_of_every_format(tmp_path):
  (tmp_path / 'a.json').write_text(json.dumps({'classes': [
      {'name': 'background', 'colour': [0, 0, 0]}, {'name': 'void', 'color': '#ffffff'},
      {'name': 'road', 'colour': [128, 64, 128]}]}))
  table = folder.read_class_table(tmp_path / 'a.json')
  assert (table.names, table.values, table.colours, table.ignore_colours) == (
      ('background', 'road'), (0, 1), ((0, 0, 0), (128, 64, 128)), ((255, 255, 255),))
  (tmp_path / 'b.json').write_text(json.dumps({'sky': [70, 130, 180], 'car': '0,0,142'}))
  assert folder.read_class_table(tmp_path / 'b.json').colours == ((70, 130, 180), (0, 0, 142))
  # Kaggle CamVid class_dict.csv (header name,r,g,b), Roboflow _classes.csv (Pixel Value, Class).
  (tmp_path / 'c.csv').write_text('name,r,g,b\nSky,128,128,128\nVoid,0,0,0\nRoad,128,64,128\n')
  table = folder.read_class_table(tmp_path / 'c.csv')
  assert table.names == ('Sky', 'Road') and table.ignore_colours == ((0, 0, 0),)
  (tmp_path / 'd.csv').write_text('Pixel Value, Class\n9,weed\n0,soil\n4,crop\n')
  table = folder.read_class_table(tmp_path / 'd.csv')
  assert (table.names, table.values) == (('soil', 'crop', 'weed'), (0, 4, 9))  # By value.
  (tmp_path / 'e.csv').write_text('# no header\nbackground,0\nunlabeled,255\nperson,1\n')
  table = folder.read_class_table(tmp_path / 'e.csv')
  assert (table.names, table.values, table.ignore_values) == (('background', 'person'), (0, 1),
                                                              (255,))
  # CVAT / Datumaro VOC export labelmap.txt; labelme2voc class_names.txt.
  (tmp_path / 'labelmap.txt').write_text('# label:color_rgb:parts:actions\nbackground:0,0,0::\n'
                                         'weed:250,50,83::\ncrop:51,221,255::\n')
  table = folder.read_class_table(tmp_path / 'labelmap.txt')
  assert table.names == ('background', 'weed', 'crop') and table.colours[2] == (51, 221, 255)
  (tmp_path / 'class_names.txt').write_text('__ignore__\n_background_\naeroplane\n')
  table = folder.read_class_table(tmp_path / 'class_names.txt')
  assert (table.names, table.values, table.colours) == (('_background_', 'aeroplane'), (0, 1), None)

  bad = {
      'dup.csv': ('a,1,2,3\nb,1,2,3\n', r"dup\.csv:2: classes 'a' and 'b' have the same colour"),
      'twice.json': ('[{"name": "a"}, {"name": "a"}]', r"class 'a' is listed twice"),
      'colour.csv': ('a,1,2,300\n', r'colour.csv:1: colour .* is not three integers 0\.\.255'),
      'mixed.json': ('{"a": [1, 2, 3], "b": 4}', r"class 'b' has no colour while others"),
      'cols.csv': ('a,1,2\n', r'3 columns; without a header'),
      'empty.txt': ('# nothing\n', r'the class table is empty'),
      'broken.json': ('{"a": [1, 2', r'not valid JSON'),
      'table.xml': ('<a/>', r'class tables are \.json, \.csv or \.txt'),
      'header.csv': ('colour,hex\nx,y\n', r'header .* has no name column'),
  }
  for name, (text, match) in bad.items():
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=match):
      folder.read_class_table(tmp_path / name)


def test_seeded_split_is_the_hash_rule():
  stems = [f's{i}' for i in range(20)]
  train, val = folder.seeded_split(reversed(stems), 0.25, 3)
  assert val == _seeded_val(stems, 0.25, 3) and len(val) == 5
  assert sorted(train + val) == sorted(stems) and not set(train) & set(val)
  assert folder.seeded_split(stems, 0.25, 4)[1] != val  # Another seed, other images.
  # Adding an image keeps the others where they were but for at most one at the boundary.
  _, more = folder.seeded_split(stems + ['s20'], 0.25, 3)
  assert len(set(val) - set(more)) <= 1
  assert folder.seeded_split(stems[:2], 0.01, 0)[1] != []  # At least one val image ...
  assert len(folder.seeded_split(stems[:2], 0.9, 0)[0]) == 1  # ... and one train image.


# ------------------------------------------------------------------ preparing folders

def test_rgb_masks_with_a_json_table(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / 'My Photos'
  truth = _rgb_folder(root, rng)
  # Images in other modes are stored as RGB: greyscale, RGBA and CMYK files.
  grey = rng.integers(0, 256, HW, dtype=np.uint8)
  _save(root / 'images' / 'img_01.png', grey)
  rgba = rng.integers(0, 256, (*HW, 4), dtype=np.uint8)
  (root / 'images' / 'img_02.png').unlink()
  _save(root / 'images' / 'img_02.tif', rgba)
  (root / 'images' / 'img_03.png').unlink()
  PIL.Image.fromarray(truth['img_03'][0]).convert('CMYK').save(root / 'images' / 'img_03.jpg')
  expected = {'img_01': np.repeat(grey[..., None], 3, -1), 'img_02': rgba[..., :3],
              'img_03': np.array(PIL.Image.open(root / 'images' / 'img_03.jpg').convert('RGB'))}
  (root / '.DS_Store').write_bytes(b'junk')
  (root / 'images' / '.DS_Store').write_bytes(b'junk')  # Hidden files are skipped.
  (root / 'classes.json').write_text(json.dumps(
      {'classes': [{'name': n, 'colour': c} for n, c in COLOURS.items()]
       + [{'name': 'Void', 'colour': VOID}]}))
  config = _data_config(root, tmp_path / 'tfds', folder_classes='classes.json',
                        folder_val_fraction=0.25, num_classes=4)

  builder = pipeline.load_builder(config)
  assert builder.info.config_name.startswith('my_photos-')
  read = {**_read(builder, 'train'), **_read(builder, 'val')}
  assert sorted(_read(builder, 'val')) == _seeded_val(sorted(truth), 0.25, 0)
  assert sorted(read) == sorted(truth)
  for stem, (image, label) in read.items():
    np.testing.assert_array_equal(label, truth[stem][1], err_msg=stem)
    np.testing.assert_array_equal(image, expected.get(stem, truth[stem][0]), err_msg=stem)
  meta = builder.info.metadata
  assert meta['class_names'] == list(COLOURS) and meta['source'] == str(root)
  palette = np.array(meta['palette'], np.uint8)
  np.testing.assert_array_equal(palette[:4], list(COLOURS.values()))
  assert palette[255].tolist() == list(VOID)
  counts = np.zeros(256, np.int64)
  for _, label in read.values():
    counts += np.bincount(label.ravel(), minlength=256)
  train_val = np.add(meta['pixel_counts']['train'], meta['pixel_counts']['val'])
  assert train_val.tolist() == counts[:4].tolist() + [counts[255]]
  # What train / eval / predict / report show.
  spec = classes.spec_for_data(config.data)
  assert spec.class_names == tuple(COLOURS) and spec.num_classes == 4
  np.testing.assert_array_equal(spec.palette, palette)
  preflight.check_classes(config, builder)  # 4 classes: consistent.
  config.data.num_classes = 3
  with pytest.raises(ValueError, match=r'num_classes=3 is less than the 4 classes.*'
                     r'Set config.data.num_classes=4'):
    preflight.check_classes(config, builder)

  # The same files: the same TFDS config, read without preparing again.
  again = folder.builder_config(config.data)
  assert again.name == builder.info.config_name
  assert tfds.builder('segmentation_folder', config=again, data_dir=str(tmp_path / 'tfds')
                      ).is_prepared()
  # A changed mask is a new config, prepared anew; the old one is left as it was.
  changed = truth['img_05'][1].copy()
  changed[:4, :4] = 2
  _save(root / 'masks' / 'img_05.png', np.array(list(COLOURS.values()) + [VOID], np.uint8)[
      np.where(changed == 255, 4, changed)])
  new = pipeline.load_builder(config)
  assert new.info.config_name != builder.info.config_name
  new_read = {**_read(new, 'train'), **_read(new, 'val')}
  np.testing.assert_array_equal(new_read['img_05'][1], changed)
  old = tfds.load(f'segmentation_folder/{builder.info.config_name}',
                  data_dir=str(tmp_path / 'tfds'), split='train+val')
  old_label = {ex['id'].decode(): ex['label'] for ex in tfds.as_numpy(old)}['img_05']
  np.testing.assert_array_equal(old_label, truth['img_05'][1])
  # Another option (the seed) is another config too.
  config.data.folder_split_seed = 1
  assert folder.builder_config(config.data).name.split('-')[1] != again.name.split('-')[1]


def test_index_masks_csv_values_and_ignore_value(tmp_path):
  """Greyscale masks with the values 0, 7, 9 named by a CSV (classes by value) and 100 = ignore."""
  rng = np.random.default_rng(1)
  root = tmp_path / 'weeds'
  truth = {}
  for i in range(6):
    raw = _blocks(rng, [0, 7, 9, 100]).astype(np.uint8)
    image = _photo(rng)
    _save(root / 'images' / f'{i}.png', image)
    _save(root / 'masks' / f'{i}.png', raw)
    truth[str(i)] = (image, np.select([raw == 0, raw == 7, raw == 9], [0, 1, 2], 255))
  (root / 'classes.csv').write_text('Pixel Value,Class\n0,soil\n9,weed\n7,crop\n')
  config = _data_config(root, tmp_path / 'tfds', folder_classes='classes.csv',
                        folder_ignore_value=100, folder_val_fraction=0.0, num_classes=3)
  builder = pipeline.load_builder(config)
  assert list(builder.info.splits) == ['train']  # val_fraction 0: no val split.
  for stem, (image, label) in _read(builder, 'train').items():
    np.testing.assert_array_equal(label, truth[stem][1])
    np.testing.assert_array_equal(image, truth[stem][0])
  assert builder.info.metadata['class_names'] == ['soil', 'crop', 'weed']
  # Colours: VOC's at each class's mask value (the table has none).
  np.testing.assert_array_equal(classes.spec_for_data(config.data).palette[:3],
                                classes.voc_palette()[[0, 7, 9]])


def test_palette_pngs_without_a_table_count_their_classes(tmp_path):
  """Palette masks (own palette, 255 boundary) and no table: classes 0..max, the PNG's colours."""
  rng = np.random.default_rng(2)
  root = tmp_path / 'pal'
  png_palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
  truth = {}
  for i in range(5):
    label = _blocks(rng, [0, 1, 2, 3]).astype(np.uint8)
    label[:, 1:][label[:, 1:] != label[:, :-1]] = 255
    image = _photo(rng)
    _save(root / 'images' / 'sub' / f'p{i}.png', image)  # Subfolders pair by relative path.
    _save(root / 'masks' / 'sub' / f'p{i}.png', label, mode='P', palette=png_palette)
    truth[f'sub/p{i}'] = (image, label)
  config = _data_config(root, tmp_path / 'tfds', num_classes=4)
  builder = pipeline.load_builder(config)
  read = {**_read(builder, 'train'), **_read(builder, 'val')}
  assert sorted(read) == sorted(truth)
  for stem, (_, label) in read.items():
    np.testing.assert_array_equal(label, truth[stem][1])
  assert builder.info.metadata['class_names'] == ['0', '1', '2', '3']
  np.testing.assert_array_equal(classes.spec_for_data(config.data).palette, png_palette)
  config.data.num_classes = 2
  with pytest.raises(ValueError, match='Set config.data.num_classes=4'):
    preflight.check_classes(config, builder)


def test_index_masks_with_an_ignore_value_and_rgb_saved_index_masks(tmp_path):
  """CamVid-style masks: 0..2 classes, 9 = void; some saved as 3 equal channels, one 1-bit."""
  rng = np.random.default_rng(3)
  root = tmp_path / 'idx'
  truth = {}
  for i in range(4):
    raw = _blocks(rng, [0, 1, 2, 9]).astype(np.uint8)
    image = _photo(rng)
    _save(root / 'images' / f'{i}.png', image)
    _save(root / 'masks' / f'{i}.png', np.repeat(raw[..., None], 3, -1) if i % 2 else raw)
    truth[str(i)] = np.where(raw == 9, 255, raw)
  bits = _blocks(rng, [0, 1]).astype(bool)
  _save(root / 'images' / '4.png', _photo(rng))
  PIL.Image.fromarray(bits).convert('1').save(root / 'masks' / '4.png')
  truth['4'] = bits.astype(np.uint8)
  config = _data_config(root, tmp_path / 'tfds', folder_ignore_value=9, num_classes=3)
  builder = pipeline.load_builder(config)
  read = {**_read(builder, 'train'), **_read(builder, 'val')}
  for stem, (_, label) in read.items():
    np.testing.assert_array_equal(label, truth[stem], err_msg=stem)
  assert builder.info.metadata['class_names'] == ['0', '1', '2']
  assert classes.spec_for_data(config.data).class_names == ('0', '1', '2')


def _exif_orientation(value):
  exif = PIL.Image.Exif()
  exif[0x0112] = value
  return exif


def test_voc_export_layout(tmp_path):
  """CVAT/Datumaro VOC export: JPEGImages (more photos than masks), SegmentationClass palette
  PNGs in labelmap.txt's colours and order (not VOC's), ImageSets/Segmentation lists."""
  rng = np.random.default_rng(4)
  root = tmp_path / 'export'
  table = {'background': (0, 0, 0), 'weed': (250, 50, 83), 'crop': (51, 221, 255)}
  (root / 'ImageSets' / 'Segmentation').mkdir(parents=True)
  (root / 'labelmap.txt').write_text('# label:color_rgb:parts:actions\n' + ''.join(
      f'{n}:{",".join(map(str, c))}::\n' for n, c in table.items()))
  png_palette = np.zeros((256, 3), np.uint8)
  png_palette[:3] = list(table.values())
  png_palette[255] = (224, 224, 192)
  truth = {}
  for i in range(7):
    stem = f'frame_{i:03d}'
    image = _photo(rng)
    PIL.Image.fromarray(image).save(_mkdir(root / 'JPEGImages') / f'{stem}.jpg', quality=95)
    if i == 6:
      continue  # An unlabelled photo, listed nowhere.
    label = _blocks(rng, [0, 1, 2, 255]).astype(np.uint8)
    _save(root / 'SegmentationClass' / f'{stem}.png', label, mode='P', palette=png_palette)
    truth[stem] = label
  # A phone photo stored sideways with EXIF orientation 6; its mask is drawn upright.
  sideways = _photo(rng, HW[::-1])
  PIL.Image.fromarray(sideways).save(root / 'JPEGImages' / 'frame_000.jpg', quality=95,
                                     exif=_exif_orientation(6))
  lists = root / 'ImageSets' / 'Segmentation'
  (lists / 'train.txt').write_text('frame_000\nframe_001\nframe_002.jpg\nframe_003\n')
  (lists / 'val.txt').write_text('frame_004\nframe_005\n')
  (lists / 'trainval.txt').write_text(''.join(f'frame_{i:03d}\n' for i in range(6)))

  config = _data_config(root, tmp_path / 'tfds', num_classes=3)
  with pytest.raises(FileNotFoundError, match=r"folder_images='images'.*VOC export: "
                     r'--config.data.folder_images=JPEGImages --config.data.folder_masks='
                     r'SegmentationClass --config.data.folder_splits=ImageSets/Segmentation '
                     r'--config.data.folder_classes=labelmap.txt'):
    pipeline.load_builder(config)
  config = _data_config(root, tmp_path / 'tfds', num_classes=3, folder_images='JPEGImages',
                        folder_masks='SegmentationClass', folder_classes='labelmap.txt',
                        folder_splits='ImageSets/Segmentation')
  builder = pipeline.load_builder(config)
  splits = {s: sorted(_read(builder, s)) for s in builder.info.splits}
  assert splits == {'train': [f'frame_{i:03d}' for i in range(4)],
                    'val': ['frame_004', 'frame_005'],
                    'trainval': [f'frame_{i:03d}' for i in range(6)]}
  read = _read(builder, 'trainval')
  for stem, (image, label) in read.items():
    np.testing.assert_array_equal(label, truth[stem], err_msg=stem)
    raw = (root / 'JPEGImages' / f'{stem}.jpg').read_bytes()
    if stem == 'frame_000':  # Turned upright (90 degrees clockwise), as the mask was drawn.
      np.testing.assert_array_equal(image, np.rot90(np.array(PIL.Image.open(io.BytesIO(raw))),
                                                    -1))
    else:  # JPEG bytes kept as they are.
      np.testing.assert_array_equal(image, tf.io.decode_jpeg(raw, channels=3).numpy())
  assert builder.info.metadata['class_names'] == list(table)
  np.testing.assert_array_equal(classes.spec_for_data(config.data).palette[:3],
                                list(table.values()))


def _mkdir(path):
  path.mkdir(parents=True, exist_ok=True)
  return path


def test_mask_formats_and_ignore_colour(tmp_path):
  """read_mask with the format forced: colours of a palette PNG, indices of a recoloured one."""
  rng = np.random.default_rng(7)
  label = _blocks(rng, [0, 1, 2]).astype(np.uint8)
  table = folder.ClassTable('t.csv', ('a', 'b', 'c'), (0, 1, 2),
                            ((10, 10, 10), (20, 20, 20), (30, 30, 30)))
  own = np.zeros((256, 3), np.uint8)
  own[:3] = [(30, 30, 30), (10, 10, 10), (20, 20, 20)]  # Index 0 drawn in class c's colour ...
  _save(tmp_path / 'p.png', label, mode='P', palette=own)
  config = folder.FolderConfig(name='x', table=table, mask_format='rgb')
  np.testing.assert_array_equal(folder.read_mask(tmp_path / 'p.png', config),  # ... is c.
                                np.array([2, 0, 1], np.uint8)[label])
  config = folder.FolderConfig(name='x', table=table, mask_format='palette')
  np.testing.assert_array_equal(folder.read_mask(tmp_path / 'p.png', config), label)
  # An extra ignore colour; greyscale + alpha masks (alpha 0 = ignore).
  colours = np.array(table.colours + ((1, 2, 3),), np.uint8)
  drawn = _blocks(rng, [0, 1, 2, 3]).astype(np.uint8)
  _save(tmp_path / 'c.png', colours[drawn])
  config = folder.FolderConfig(name='x', table=table, ignore_colour=(1, 2, 3))
  np.testing.assert_array_equal(folder.read_mask(tmp_path / 'c.png', config),
                                np.where(drawn == 3, 255, drawn))
  alpha = np.where(_blocks(rng, [0, 1]) == 1, 255, 0).astype(np.uint8)
  _save(tmp_path / 'la.png', np.stack([label, alpha], -1), mode='LA')
  np.testing.assert_array_equal(folder.read_mask(tmp_path / 'la.png', folder.FolderConfig(
      name='x', table=table)), np.where(alpha == 0, 255, label))
  with pytest.raises(ValueError, match=r"not a palette \(P\) PNG as .*'palette' says"):
    folder.read_mask(tmp_path / 'la.png', folder.FolderConfig(name='x', mask_format='palette'))


def test_real_exports_in_shared_data(shared_data, tmp_path):
  """labelme2voc's real VOC export (class_names.txt) and SegNet's CamVid laid out as a folder."""
  labelme = shared_data / 'voc_labelme' / 'VOCdevkit' / 'VOC2012'
  config = _data_config(labelme, tmp_path / 'tfds', num_classes=21, folder_images='JPEGImages',
                        folder_masks='SegmentationClass', folder_classes='class_names.txt',
                        folder_splits='ImageSets/Segmentation')
  builder = pipeline.load_builder(config)
  assert list(builder.info.splits) == ['train']
  assert builder.info.metadata['class_names'][15] == 'person'
  for stem, (image, label) in _read(builder, 'train').items():
    np.testing.assert_array_equal(
        label, np.array(PIL.Image.open(labelme / 'SegmentationClass' / f'{stem}.png')))
    raw = (labelme / 'JPEGImages' / f'{stem}.jpg').read_bytes()
    np.testing.assert_array_equal(image, tf.io.decode_jpeg(raw, channels=3).numpy())
  np.testing.assert_array_equal(classes.spec_for_data(config.data).palette[:21],
                                classes.voc_palette()[:21])

  camvid = shared_data / 'camvid'
  root = tmp_path / 'camvid_folder'
  names = sorted(p.name for p in (camvid / 'train').glob('*.png'))[:6]
  for name in names:
    _mkdir(root / 'images').joinpath(name).symlink_to(camvid / 'train' / name)
    _mkdir(root / 'masks').joinpath(name).symlink_to(camvid / 'trainannot' / name)
  (root / 'classes.csv').write_text('name,value\n' + ''.join(
      f'{n},{v}\n' for v, n in enumerate(classes.CAMVID_CLASSES)) + 'void,11\n')
  config = _data_config(root, tmp_path / 'tfds', num_classes=11, folder_classes='classes.csv',
                        folder_val_fraction=0.0)
  builder = pipeline.load_builder(config)
  for stem, (_, label) in _read(builder, 'train').items():
    raw = np.array(PIL.Image.open(camvid / 'trainannot' / f'{stem}.png'))
    np.testing.assert_array_equal(label, np.where(raw == 11, 255, raw))
  assert builder.info.metadata['class_names'] == list(classes.CAMVID_CLASSES)


# ------------------------------------------------------------------ bad input

def _small_folder(root, rng, count=3, values=(0, 1, 2)):
  for i in range(count):
    _save(root / 'images' / f'{i}.png', _photo(rng))
    _save(root / 'masks' / f'{i}.png', _blocks(rng, list(values)).astype(np.uint8))


def test_bad_folders_fail_cleanly(tmp_path):
  rng = np.random.default_rng(5)
  n = iter(range(100))

  def case(**fields):
    root = tmp_path / f'case{next(n)}'
    _small_folder(root, rng)
    return root, _data_config(root, tmp_path / f'tfds_{root.name}', num_classes=3, **fields)

  root, config = case()
  config.data.folder = ''
  _assert_fails_cleanly(config, ValueError, r"segmentation_folder.*set config.data.folder "
                        r'\(--config.data.folder=PATH')
  root, config = case(folder_classes='missing.json')
  _assert_fails_cleanly(config, FileNotFoundError, r'missing\.json: class table is missing')
  root, config = case(folder_mask_format='colour')
  _assert_fails_cleanly(config, ValueError, r"folder_mask_format='colour' is unknown")
  root, config = case(folder_splits='lists')
  _assert_fails_cleanly(config, FileNotFoundError, r"folder_splits='lists'.*is not a folder")

  root, config = case()
  for p in (root / 'images').iterdir():
    p.unlink()
  _assert_fails_cleanly(config, FileNotFoundError, r'images \(config.data.folder_images\) holds '
                        r'no images')
  root, config = case()
  (root / 'images' / 'notes.docx').write_bytes(b'x')
  _assert_fails_cleanly(config, ValueError, r'1 files in .*images \(config.data.folder_images\) '
                        r'are not image files.*notes\.docx')
  root, config = case()
  PIL.Image.fromarray(_photo(rng)).save(root / 'images' / '1.jpg')
  _assert_fails_cleanly(config, ValueError, r'1 image stems .* have two files.*1\.jpg and .*1\.png')
  root, config = case()
  _save(root / 'images' / 'extra.png', _photo(rng))
  _assert_fails_cleanly(config, FileNotFoundError, r'1 images without a mask .*extra\.png.*'
                        r'pair by name without extension')
  root, config = case()
  _save(root / 'masks' / 'orphan.png', np.zeros(HW, np.uint8))
  _assert_fails_cleanly(config, FileNotFoundError, r'1 masks without an image.*orphan\.png')
  root, config = case()
  PIL.Image.fromarray(_photo(rng)).save(root / 'masks' / '9.jpg')
  _assert_fails_cleanly(config, ValueError, r'1 masks in .* are JPEG/WebP files.*9\.jpg.*'
                        r'export the masks as PNG')
  root, config = case()
  _save(root / 'masks' / '1.png', np.zeros((20, 32), np.uint8))
  _assert_fails_cleanly(config, ValueError, r'1\.png: mask is 20x32 \(HxW\) but its image .*1\.png '
                        r'is 24x32')
  root, config = case()
  (root / 'images' / '2.png').write_bytes((root / 'images' / '2.png').read_bytes()[:60])
  _assert_fails_cleanly(config, ValueError, r'2\.png: unreadable image')

  # Values and colours that are no class.
  root, config = case(folder_classes='c.csv')
  (root / 'c.csv').write_text('a,0\nb,1\nc,2\n')
  bad = np.zeros(HW, np.uint8)
  bad[:2, :3] = 7
  _save(root / 'masks' / '1.png', bad)
  _assert_fails_cleanly(config, ValueError, r'1\.png: mask values 7 \(6 px\) are neither the mask '
                        r'values of the 3 classes of .*c\.csv \(0, 1, 2\) nor ignore \(255, '
                        r'config.data.folder_ignore_value=255\)')
  root, config = case(folder_classes='c.json')
  (root / 'c.json').write_text(json.dumps({'a': [0, 0, 0], 'b': [0, 0, 1], 'c': [0, 0, 2]}))
  colour = np.zeros((*HW, 3), np.uint8)
  colour[0, :5] = (1, 2, 3)
  _save(root / 'masks' / '0.png', colour)
  _assert_fails_cleanly(config, ValueError, r'0\.png: 5 pixels have colours that are no class of '
                        r'.*c\.json .*\(1, 2, 3\) 5 px.*anti-aliased')
  root, config = case()
  _save(root / 'masks' / '0.png', rng.integers(0, 3, (*HW, 3), dtype=np.uint8))
  _assert_fails_cleanly(config, ValueError, r'0\.png: mask is an RGB colour image.*without a '
                        r'colour table')
  root, config = case(folder_classes='c.json')
  (root / 'c.json').write_text(json.dumps({'a': [0, 0, 0], 'b': [9, 9, 9], 'c': [0, 0, 2]}))
  _save(root / 'masks' / '0.png', _blocks(rng, [0, 1, 2]).astype(np.uint8), mode='P',
        palette=classes.voc_palette())
  _assert_fails_cleanly(config, ValueError, r"0\.png: the palette PNG draws indices in colours "
                        r"other than the class table .*1 \(b\): PNG \(128, 0, 0\), table \(9, 9, "
                        r"9\).*folder_mask_format=rgb.*folder_mask_format=palette")
  root, config = case()
  for i in range(3):  # Values 0, 1, 5: 2..4 never occur.
    _save(root / 'masks' / f'{i}.png', _blocks(rng, [0, 1, 5]).astype(np.uint8))
  _assert_fails_cleanly(config, ValueError, r'hold the values \[0, 1, 5\]: \[2, 3, 4\] in between '
                        r'never occur.*write one \(config.data.folder_classes')
  root, config = case()
  for i in range(3):  # Binary masks saved as 0 / 255.
    _save(root / 'masks' / f'{i}.png', _blocks(rng, [0, 255]).astype(np.uint8))
  _assert_fails_cleanly(config, ValueError, r'train masks of .* hold 1 class \(0\) besides ignore'
                        r'.*0 and 255 only\? 255 is ignore')

  # Split lists.
  root, config = case(folder_splits='sets')
  _mkdir(root / 'sets')
  (root / 'sets' / 'train.txt').write_text('0\n1\nghost\n')
  _assert_fails_cleanly(config, FileNotFoundError, r'1 stems listed in .*sets/\*\.txt have no '
                        r'images in .*ghost')
  root, config = case(folder_splits='sets')
  _mkdir(root / 'sets')
  (root / 'sets' / 'train.txt').write_text('0\n1\n')
  (root / 'sets' / 'val.txt').write_text('1\n2\n')
  _assert_fails_cleanly(config, ValueError, r'1 val\.txt ids are also in train\.txt \(e\.g\. 1\)')
  root, config = case(folder_splits='sets')
  _mkdir(root / 'sets')
  (root / 'sets' / 'val.txt').write_text('1\n')
  _assert_fails_cleanly(config, FileNotFoundError, r'has no train\.txt \(found: val\.txt\)')


# ------------------------------------------------------------------ train and predict

def test_train_one_step_and_predict_in_the_users_colours(tmp_path, capsys):
  """experiments/folder_fcn8s_cpu.py from its docstring command, one step at width 1/16."""
  rng = np.random.default_rng(6)
  root = tmp_path / 'data'
  _rgb_folder(root, rng, count=10)
  (root / 'classes.csv').write_text('name,r,g,b\n' + ''.join(
      f'{n},{r},{g},{b}\n' for n, (r, g, b) in COLOURS.items()) + 'void,255,255,255\n')
  doc = (EXPERIMENTS / 'folder_fcn8s_cpu.py').read_text().split('"""')[1].replace('\\\n', ' ')
  train = next(line.split()[1:] for line in doc.splitlines()
               if line.strip().startswith('jaxseg train'))
  workdir = tmp_path / 'work'
  argv = [str(workdir) if train[i - 1] == '--workdir' else arg for i, arg in enumerate(train)]
  argv += [f'--config.data.folder={root}',
           f'--config.data.data_dir={tmp_path / "tfds"}', '--config.model.width=0.0625',
           '--config.data.crop_size=32,32', '--config.data.eval_size=32,32',
           '--config.train.batch_size=8', '--config.eval.batch_size=8',
           '--config.train.num_steps=1', '--config.optim.warmup_steps=0',
           '--config.train.eval_every=0',
           '--config.train.checkpoint_every=1', '--config.data.shuffle_buffer=16',
           '--config.train.log_every=1']
  # The docstring's --config.data.num_classes=3 is not this table's 4: stopped before step 1.
  assert cli.main(argv[:-1]) == 2
  assert 'Set config.data.num_classes=4' in capsys.readouterr().err
  assert cli.main(argv + ['--config.data.num_classes=4']) == 0
  assert (workdir / 'checkpoints').is_dir()
  results = json.loads(next((workdir / 'eval').glob('val_step1.json')).read_text())
  assert results['class_names'] == list(COLOURS)

  photo = tmp_path / 'photo.png'
  PIL.Image.fromarray(_photo(rng, (20, 28))).save(photo)
  assert cli.main(['predict', '--workdir', str(workdir), '--checkpoint', 'latest',
                   '--input', str(photo), '--output', str(tmp_path / 'out')]) == 0
  with PIL.Image.open(tmp_path / 'out' / 'photo.png') as written:
    assert written.mode == 'P' and written.size == (28, 20)
    png_palette = np.array(written.getpalette(), np.uint8).reshape(-1, 3)
  np.testing.assert_array_equal(png_palette[:4], list(COLOURS.values()))
  assert png_palette[255].tolist() == list(VOID)


def test_pspnet_recipe_docstring_reads_the_folder(tmp_path):
  """experiments/folder_pspnet50.py's command (less the weights) loads a folder with its table."""
  rng = np.random.default_rng(8)
  root = tmp_path / 'data'
  _rgb_folder(root, rng, count=4)
  (root / 'classes.csv').write_text('name,r,g,b\n' + ''.join(
      f'{n},{r},{g},{b}\n' for n, (r, g, b) in COLOURS.items()) + 'void,255,255,255\n')
  doc = (EXPERIMENTS / 'folder_pspnet50.py').read_text().split('"""')[1].replace('\\\n', ' ')
  train = next(line.split()[1:] for line in doc.splitlines()
               if line.strip().startswith('jaxseg train'))
  rest, overrides = config_loading.split_overrides(train)
  assert rest[:2] == ['train', '--config']
  config = config_loading.apply_overrides(config_loading.load_config(rest[2]), overrides + [
      ('data.folder', str(root)), ('data.data_dir', str(tmp_path / 'tfds')),
      ('data.num_classes', '4')])
  assert config.model.name == 'pspnet50' and config.data.folder_classes == 'classes.csv'
  builder = pipeline.load_builder(config)
  preflight.check_classes(config, builder)
  assert builder.info.metadata['class_names'] == list(COLOURS)
