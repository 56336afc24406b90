"""The tf.data input pipeline on a tiny TFDS dataset defined here; pixel colours encode labels."""
import importlib.util
import math
import pathlib

import jax
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh, PartitionSpec as P

from jaxseg.data import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = (0, 1, 2, 3, 4)
# Colour of each label; 255 (ignore) is near-white, far from the mean (the padding colour).
PALETTE = {0: (220, 20, 20), 1: (20, 200, 20), 2: (20, 20, 220), 3: (230, 230, 30),
           4: (30, 210, 210), 255: (250, 250, 250)}
SIZES = {'train': 13, 'val': 11}
FEATURES = {
    'image': tfds.features.Image(shape=(None, None, 3)),
    'label': tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding='zlib'),
    'id': tfds.features.Text(),
}


def block_example(split: str, i: int) -> dict:
  """An image of 6x6-pixel blocks, each painted PALETTE[its label]; sizes 18-43 px."""
  rng = np.random.default_rng([len(split), i])
  h, w = (int(v) for v in rng.integers(18, 44, 2))
  grid = rng.choice(list(PALETTE), size=(math.ceil(h / 6), math.ceil(w / 6)),
                    p=[0.19] * 5 + [0.05])
  label = np.kron(grid, np.ones((6, 6), np.int64))[:h, :w].astype(np.uint8)
  lut = np.zeros((256, 3), np.uint8)
  for k, colour in PALETTE.items():
    lut[k] = colour
  return {'image': lut[label], 'label': label, 'id': f'{split}_{i:03d}'}


class JaxsegTestBlocks(tfds.core.GeneratorBasedBuilder):
  """Registered as 'jaxseg_test_blocks'."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(FEATURES))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in SIZES}

  def _generate_examples(self, split):
    for i in range(SIZES[split]):
      yield i, block_example(split, i)


class JaxsegTestManual(tfds.core.GeneratorBasedBuilder):
  """Needs manual_dir/sizes.txt (one square image size per line)."""
  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Put sizes.txt into manual_dir.'

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(FEATURES))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(dl_manager.manual_dir / 'sizes.txt')}

  def _generate_examples(self, path):
    for i, n in enumerate(int(v) for v in path.read_text().split()):
      yield i, {'image': np.zeros((n, n, 3), np.uint8), 'label': np.zeros((n, n), np.uint8),
                'id': str(i)}


def default_config():
  spec = importlib.util.spec_from_file_location('jaxseg_default_config',
                                                ROOT / 'experiments' / 'default.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def config(data_dir):
  c = default_config()
  c.data.dataset = 'jaxseg_test_blocks'
  c.data.data_dir = data_dir
  c.data.train_split, c.data.eval_split = 'train', 'val'
  c.data.num_classes = len(CLASSES)
  c.data.crop_size = (24, 24)
  c.data.eval_size = (48, 48)
  c.data.scale_range = (1.0, 1.0)
  c.data.shuffle_buffer = 64
  c.data.prefetch = 1
  c.data.num_parallel_calls = 2
  c.train.batch_size = 8
  c.eval.batch_size = 8
  return c


def make_mesh(n):
  if jax.device_count() < n:
    pytest.skip(f'needs {n} devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)')
  return Mesh(np.array(jax.devices()[:n]), ('data',))


def local_batches(config, steps, start_step=0, process_index=0, process_count=1, local_batch=8):
  builder = pipeline.load_builder(config)
  ds = pipeline._train_dataset(config, builder, process_index=process_index,
                               process_count=process_count, local_batch_size=local_batch,
                               start_step=start_step)
  return list(ds.take(steps).as_numpy_iterator())


def raw_examples(config, split):
  builder = pipeline.load_builder(config)
  return {ex['id'].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def palette_rgb(label):
  lut = np.zeros((256, 3), np.float32)
  for k, colour in PALETTE.items():
    lut[k] = colour
  return lut[label]


# ---------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize('method', pipeline.NORMALIZATIONS)
def test_normalize_matches_numpy(method):
  images = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3)).astype(np.uint8)
  x = images.astype(np.float64)
  if method == 'imagenet':
    ref = (x / 255. - np.array(pipeline.IMAGENET_MEAN)) / np.array(pipeline.IMAGENET_STD)
  else:
    ref = x[..., ::-1] - np.array([103.939, 116.779, 123.68])
  for arr in (images, tf.constant(images), jax.numpy.asarray(images)):
    out = pipeline.normalize(arr, method)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(pipeline.denormalize(ref, method), x, atol=1e-3)
  mean = np.asarray(pipeline.normalize(np.array(pipeline.mean_pixel(method)), method))
  np.testing.assert_allclose(mean, 0., atol=1e-5)
  with pytest.raises(ValueError, match='config.data.normalization'):
    pipeline.normalize(images, 'bgr')


# ------------------------------------------------------------------------------------------ train
@pytest.mark.parametrize('n', [1, 2, 8])
def test_train_batches_shapes_dtypes_sharding(config, n):
  mesh = make_mesh(n)
  it = pipeline.train_iterator(config, mesh)
  for _ in range(3):
    batch = next(it)
    assert set(batch) == {'image', 'label'}
    assert batch['image'].shape == (8, 24, 24, 3) and batch['image'].dtype == np.uint8
    assert batch['label'].shape == (8, 24, 24) and batch['label'].dtype == np.int32
    for v in batch.values():
      assert v.sharding.spec == P('data') and len(v.addressable_shards) == n
    assert set(np.unique(np.asarray(batch['label']))) <= set(CLASSES) | {255}


@pytest.mark.parametrize('method', pipeline.NORMALIZATIONS)
def test_crop_flip_pad_keep_image_and_mask_aligned(config, method):
  """Without interpolation every pixel must be exact: its class colour, white ignore, or the pad."""
  config.data.normalization = method
  config.data.crop_size = (32, 40)  # Larger than many images: padding happens.
  padded = 0
  for batch in local_batches(config, 4):
    label, pixels = batch['label'], batch['image']
    pad = np.all(pixels == np.round(pipeline.mean_pixel(method)), axis=-1)  # The rounded mean.
    assert np.all(label[pad] == 255)
    padded += pad.sum()
    np.testing.assert_array_equal(pixels[~pad], palette_rgb(label[~pad]))
  assert padded > 0


@pytest.mark.parametrize('rotate', [0., 30.])
def test_scale_and_rotate_keep_image_and_mask_aligned(config, rotate):
  config.data.scale_range = (0.5, 2.0)
  config.data.rotate_degrees = rotate
  inner_total = 0
  for batch in local_batches(config, 3):
    pixels = batch['image'].astype(np.float32)  # uint8: the augmented image rounded.
    for image, label in zip(pixels, batch['label']):
      # 5x5 neighbourhood: at scale <= 2 it spans the 2x2 source pixels of each bilinear sample.
      uniform = scipy.ndimage.maximum_filter(label, 5) == scipy.ndimage.minimum_filter(label, 5)
      uniform[:2] = uniform[-2:] = uniform[:, :2] = uniform[:, -2:] = False  # Crop edges: the
      # bilinear support may lie outside the crop, beyond what the mask shows.
      inner = uniform & (label != 255)
      inner_total += inner.sum()
      # Bilinear interpolation of one colour is that colour; the nearest mask must agree.
      np.testing.assert_allclose(image[inner], palette_rgb(label[inner]), atol=0.51)
      # Ignore areas are white (the dataset's) or the mean (padding, rotation fill).
      fill = uniform & (label == 255) & (np.abs(image - 250.).max(-1) > 1.)
      np.testing.assert_allclose(image[fill], np.broadcast_to(pipeline.mean_pixel('imagenet'),
                                                              image[fill].shape), atol=0.51)
  assert inner_total > 500


def test_blur_and_photometric_touch_only_the_image(config):
  config.data.scale_range = (0.5, 2.0)
  plain = local_batches(config, 2)
  config.data.blur_prob = 1.0
  config.data.photometric = True
  jittered = local_batches(config, 2)
  for a, b in zip(plain, jittered):
    np.testing.assert_array_equal(a['label'], b['label'])  # Same geometry: per-op seeds.
    np.testing.assert_array_equal(a['index'], b['index'])
    assert not np.allclose(a['image'], b['image'])
    pad = a['label'] == 255
    normalised = np.asarray(pipeline.normalize(b['image'], 'imagenet'))
    assert np.abs(normalised[~pad]).max() < 3.  # Still a sane normalised range.


def test_batches_are_a_function_of_seed_and_step(config):
  config.data.scale_range = (0.5, 2.0)
  config.data.rotate_degrees = 10.
  run = local_batches(config, 8)  # 64 examples: about 5 epochs of 13.
  again = local_batches(config, 8)
  for a, b in zip(run, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for start in (1, 3, 5, 7):  # Mid-epoch and epoch-aligned (3 * 8 = 24, 13 * 2 = 26) starts.
    resumed = local_batches(config, 8 - start, start_step=start)
    for a, b in zip(run[start:], resumed):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
  config.seed = 1
  other = local_batches(config, 2)
  assert not np.array_equal(run[0]['index'], other[0]['index'])
  assert not np.allclose(run[0]['image'], other[0]['image'])


def test_train_iterator_resume_matches_uninterrupted(config):
  config.data.scale_range = (0.75, 1.5)
  mesh = make_mesh(2)
  it = pipeline.train_iterator(config, mesh)
  full = [jax.tree.map(np.asarray, next(it)) for _ in range(4)]
  it = pipeline.train_iterator(config, mesh, start_step=2)
  resumed = [jax.tree.map(np.asarray, next(it)) for _ in range(2)]
  for a, b in zip(full[2:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_each_epoch_is_a_fresh_permutation(config):
  n = SIZES['train']
  stream = local_batches(config, 3 * n, local_batch=1)
  index = np.array([b['index'][0] for b in stream]).reshape(3, n)
  epoch = np.array([b['epoch'][0] for b in stream]).reshape(3, n)
  np.testing.assert_array_equal(epoch, np.repeat(np.arange(3)[:, None], n, 1))
  for order in index:
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
  assert len({tuple(order) for order in index}) == 3


@pytest.mark.parametrize('count', [1, 2, 3, 4])
def test_process_slices_partition_the_split(config, count):
  builder = pipeline.load_builder(config)
  n = SIZES['train']
  seen_train, seen_ids = [], []
  for p in range(count):
    part = pipeline._process_slice(builder, 'train', p, count, 'config.data.train_split')
    ids = [ex['id'].decode() for ex in tfds.as_numpy(pipeline._read(builder, part.split))]
    assert len(ids) == part.size and part.max_size - part.size in (0, 1)
    seen_ids += ids
    stream = local_batches(config, part.size, process_index=p, process_count=count, local_batch=1)
    index = sorted(int(b['index'][0]) for b in stream)
    assert index == list(range(part.offset, part.offset + part.size))  # One epoch, own slice.
    seen_train += index
  assert sorted(seen_ids) == [f'train_{i:03d}' for i in range(n)]
  assert sorted(seen_train) == list(range(n))


# ------------------------------------------------------------------------------------------- eval
@pytest.mark.parametrize('n', [1, 2, 8])
def test_eval_pads_and_counts_every_pixel_once(config, n):
  raw = raw_examples(config, 'val')
  assert pipeline.num_eval_examples(config) == SIZES['val']
  batches = list(pipeline.eval_iterator(config, make_mesh(n)))
  assert len(batches) == 2  # 11 examples, batch 8: the last batch is padded, not dropped.
  seen, labelled, area = [], 0, 0
  for batch in batches:
    assert batch['image'].shape == (8, 48, 48, 3) and batch['image'].dtype == np.uint8
    assert batch['label'].shape == (8, 48, 48) and batch['label'].dtype == np.int32
    assert batch['valid'].dtype == bool and batch['height'].dtype == np.int32
    assert batch['label'].sharding.spec == P('data')
    assert isinstance(batch['id'], np.ndarray) and len(batch['id']) == 8
    b = jax.tree.map(np.asarray, {k: v for k, v in batch.items() if k != 'id'})
    labelled += (b['label'] != 255).sum()
    for i in range(8):
      if not b['valid'][i]:
        assert batch['id'][i] == b'' and np.all(b['label'][i] == 255)
        assert np.all(b['image'][i] == 0.)
        continue
      ex = raw[batch['id'][i].decode()]
      h, w = ex['label'].shape
      assert (b['height'][i], b['width'][i]) == (h, w)
      np.testing.assert_array_equal(b['label'][i, :h, :w], ex['label'])
      np.testing.assert_array_equal(b['image'][i, :h, :w], ex['image'])
      assert np.all(b['label'][i, h:] == 255) and np.all(b['label'][i, :, w:] == 255)
      mean = np.round(pipeline.mean_pixel('imagenet'))  # Padding: the mean pixel.
      assert np.all(b['image'][i, h:] == mean) and np.all(b['image'][i, :, w:] == mean)
      seen.append(batch['id'][i].decode())
      area += h * w
  assert sorted(seen) == sorted(raw)
  assert area == sum(ex['label'].size for ex in raw.values())
  assert labelled == sum((ex['label'] != 255).sum() for ex in raw.values())
  assert batches[-1]['valid'].sum() == 3


def test_eval_processes_yield_equal_batch_counts_and_partition(config):
  builder = pipeline.load_builder(config)
  count, local = 3, 2
  parts = [pipeline._process_slice(builder, 'val', p, count, 'split') for p in range(count)]
  assert [p.size for p in parts] == [4, 4, 3]
  ids, lengths = [], []
  for part in parts:
    ds = pipeline._eval_dataset(config, builder, part.split, local)
    batches = list(pipeline._padded_eval_batches(ds, math.ceil(part.max_size / local), local,
                                                 (48, 48), 255, 'val'))
    lengths.append(len(batches))
    for b in batches:
      assert len(b['valid']) == local
      ids += [i.decode() for i, v in zip(b['id'], b['valid']) if v]
  assert lengths == [2, 2, 2]
  assert sorted(ids) == [f'val_{i:03d}' for i in range(SIZES['val'])]


def test_eval_num_examples_limits_the_split(config):
  config.eval.num_examples = 5
  assert pipeline.num_eval_examples(config) == 5
  batches = list(pipeline.eval_iterator(config, make_mesh(2)))
  assert len(batches) == 1 and int(np.asarray(batches[0]['valid']).sum()) == 5
  assert pipeline.num_eval_examples(config, 'train') == 5


def test_eval_image_larger_than_eval_size_is_an_error(config):
  config.data.eval_size = (30, 30)
  with pytest.raises(ValueError, match=r"eval image 'val_\d+'.*config\.data\.eval_size"):
    list(pipeline.eval_iterator(config, make_mesh(1)))


# ----------------------------------------------------------------------------------- bad input
def test_batch_size_must_divide_over_devices(config):
  mesh = make_mesh(8)
  config.train.batch_size = 6
  with pytest.raises(ValueError, match='config.train.batch_size=6 .* 8'):
    pipeline.train_iterator(config, mesh)
  config.eval.batch_size = 12
  with pytest.raises(ValueError, match='config.eval.batch_size=12'):
    pipeline.eval_iterator(config, mesh)


@pytest.mark.parametrize('field, value, match', [
    ('dataset', 'no_such_dataset', 'config.data.dataset'),
    ('train_split', 'tran', "config.data.train_split='tran'"),
    ('normalization', 'bgr', 'config.data.normalization'),
    ('crop_size', (0, 24), 'config.data.crop_size'),
    ('scale_range', (2.0, 0.5), 'config.data.scale_range'),
    ('blur_prob', 1.5, 'config.data.blur_prob'),
])
def test_bad_data_config_names_the_field(config, field, value, match):
  config.data[field] = value
  with pytest.raises(ValueError, match=match):
    next(pipeline.train_iterator(config, make_mesh(1)))


def test_bad_eval_split_names_it(config):
  config.data.eval_split = 'vall'
  with pytest.raises(ValueError, match='config.data.eval_split'):
    pipeline.num_eval_examples(config)


def test_load_builder_prepares_from_manual_dir(config, tmp_path):
  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / 'sizes.txt').write_text('3\n4\n5\n')
  config.data.dataset = 'jaxseg_test_manual'
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.manual_dir = str(tmp_path / 'manual')
  builder = pipeline.load_builder(config)
  assert builder.info.splits['train'].num_examples == 3
  config.data.manual_dir = ''  # Prepared now: the sources are not needed again.
  assert pipeline.load_builder(config).info.splits['train'].num_examples == 3


def test_embedded_synthetic_dataset_feeds_batches(config):
  """The real 'synthetic_shapes' builder (its tiny config) through the whole train/eval path."""
  from jaxseg.data import dataset_spec
  num_classes = dataset_spec('synthetic_shapes').num_classes
  config.data.dataset = 'synthetic_shapes/tiny'
  config.data.num_classes = num_classes
  config.data.crop_size = (48, 48)
  config.data.eval_size = (64, 64)
  config.data.scale_range = (0.5, 2.0)
  config.data.rotate_degrees = 10.
  config.data.blur_prob = 0.5
  config.data.photometric = True
  mesh = make_mesh(2)
  batch = next(pipeline.train_iterator(config, mesh))
  assert batch['image'].shape == (8, 48, 48, 3)
  assert set(np.unique(np.asarray(batch['label']))) <= set(range(num_classes)) | {255}
  n = pipeline.num_eval_examples(config)
  valid = sum(int(np.asarray(b['valid']).sum()) for b in pipeline.eval_iterator(config, mesh))
  assert valid == n > 0


# ------------------------------------------------------------------------------ input thread
def test_prefetch_thread_keeps_order_and_raises_producer_errors():
  import threading  # pylint: disable=g-import-not-at-top
  producer_threads = set()

  def items(fail_at=None):
    for i in range(10):
      producer_threads.add(threading.current_thread().name)
      if i == fail_at:
        raise OSError(f'bad record {i}')
      yield {'i': i}

  assert [b['i'] for b in pipeline._prefetch(items(), 3)] == list(range(10))
  assert producer_threads == {'jaxseg-input'}  # Built off the training thread.
  got = []
  with pytest.raises(OSError, match='bad record 4'):
    for b in pipeline._prefetch(items(fail_at=4), 2):
      got.append(b['i'])
  assert got == [0, 1, 2, 3]


def test_tf_data_threads_are_this_processs_share_of_the_host():
  assert pipeline.host_threads({}, usable=16, machine=16) == 16
  assert pipeline.host_threads({'OMPI_COMM_WORLD_LOCAL_SIZE': '8'}, usable=16, machine=16) == 2
  assert pipeline.host_threads({'SLURM_NTASKS_PER_NODE': '4(x2)'}, usable=16, machine=16) == 4
  assert pipeline.host_threads({'LOCAL_WORLD_SIZE': '32'}, usable=16, machine=16) == 1
  # CPUs bound by the launcher are already the process's share.
  assert pipeline.host_threads({'SLURM_NTASKS_PER_NODE': '8'}, usable=6, machine=48) == 6
