"""DeconvNet's training windows (jaxseg.data.windows) and their train stream, against NumPy/OpenCV.

Windows are checked on scenes of rectangles with known boxes, built here: in memory for the ops,
and as a small TFDS dataset (the builders' 'instance'/'objects' format) for the pipeline.
"""
import importlib.util
import pathlib

import cv2
import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh

from jaxseg.data import checks
from jaxseg.data import pipeline
from jaxseg.data import windows

ROOT = pathlib.Path(__file__).resolve().parents[1]
MEAN = np.asarray(pipeline.mean_pixel('imagenet'), np.float32)
NUM_CLASSES = 5
SIZES = {'train': 9}


# ----------------------------------------------------------------------------------- references
def scene(seed, height=None, width=None):
  """A textured image with 1-3 rectangles (classes 1-4), their instance map and tight boxes.

  Each rectangle's outer ring is the ignore band (label and instance 255), as VOC's boundaries;
  one rectangle may touch the image border. Later rectangles occlude earlier ones.
  """
  rng = np.random.default_rng(seed)
  h = height or int(rng.integers(40, 64))
  w = width or int(rng.integers(40, 64))
  image = rng.uniform(0, 255, (h, w, 3)).astype(np.uint8)
  label = np.zeros((h, w), np.uint8)
  instance = np.zeros((h, w), np.uint8)
  n = int(rng.integers(1, 4))
  classes = []
  for k in range(n):
    bh, bw = int(rng.integers(8, h // 2)), int(rng.integers(8, w // 2))
    y0 = 0 if k == 0 and seed % 2 else int(rng.integers(0, h - bh))
    x0 = int(rng.integers(0, w - bw))
    cls = int(rng.integers(1, NUM_CLASSES))
    label[y0:y0 + bh, x0:x0 + bw] = 255
    instance[y0:y0 + bh, x0:x0 + bw] = 255
    label[y0 + 1:y0 + bh - 1, x0 + 1:x0 + bw - 1] = cls
    instance[y0 + 1:y0 + bh - 1, x0 + 1:x0 + bw - 1] = k + 1
    classes.append(cls)
  ids = [k for k in range(1, n + 1) if (instance == k).any()]  # Fully occluded ones drop out.
  lut = np.arange(256, dtype=np.uint8)
  lut[ids] = np.arange(1, len(ids) + 1)
  instance = lut[instance]
  boxes = []
  for k in range(1, len(ids) + 1):
    ys, xs = np.nonzero(instance == k)
    boxes.append((ys.min(), xs.min(), ys.max() + 1, xs.max() + 1))
  classes = np.asarray([classes[k - 1] for k in ids], np.int32)
  return image, label, instance, classes, np.asarray(boxes, np.int32).reshape(-1, 4)


def np_window(box, context, square):
  """Hand geometry: sides round(context * side) (square: the longer), centred, floor corner."""
  y0, x0, y1, x1 = (int(v) for v in box)
  hs, ws = y1 - y0, x1 - x0
  if square:
    hs = ws = max(hs, ws)
  hs, ws = max(int(np.round(context * hs)), 1), max(int(np.round(context * ws)), 1)
  top, left = (y0 + y1 - hs) // 2, (x0 + x1 - ws) // 2
  return top, left, top + hs, left + ws


def np_crop(array, window, fill):
  """NumPy slicing of a window of a padded copy (pad value `fill`)."""
  top, left, bottom, right = window
  h, w = array.shape[:2]
  pad = max(0, -top, -left, bottom - h, right - w)
  widths = [(pad, pad), (pad, pad)] + [(0, 0)] * (array.ndim - 2)
  if array.ndim == 3:
    padded = np.stack([np.pad(array[..., c], widths[:2], constant_values=fill[c])
                       for c in range(array.shape[2])], -1)
  else:
    padded = np.pad(array, widths, constant_values=fill)
  return padded[top + pad:bottom + pad, left + pad:right + pad]


def np_nearest(label, size):
  """Half-pixel nearest neighbour: source floor((d + 0.5) * in / out)."""
  rows = np.minimum(((np.arange(size[0]) + 0.5) * label.shape[0] / size[0]).astype(int),
                    label.shape[0] - 1)
  cols = np.minimum(((np.arange(size[1]) + 0.5) * label.shape[1] / size[1]).astype(int),
                    label.shape[1] - 1)
  return label[rows][:, cols]


def np_iou(a, b):
  inter = (max(0, min(a[2], b[2]) - max(a[0], b[0]))
           * max(0, min(a[3], b[3]) - max(a[1], b[1])))
  area = lambda x: (x[2] - x[0]) * (x[3] - x[1])
  return inter / (area(a) + area(b) - inter)


# ------------------------------------------------------------------------------------- the ops
@pytest.mark.parametrize('seed', range(6))
def test_object_window_is_the_enlarged_square_box(seed):
  image, label, instance, classes, boxes = scene(seed)
  size = (40, 40)
  for k, box in enumerate(boxes):
    got_image, got_label = windows.object_window(
        tf.constant(image, tf.float32), tf.constant(label, tf.int32),
        tf.constant(instance[..., None]), tf.constant(classes), tf.constant(boxes),
        tf.constant(k), 1.2, size, MEAN)
    window = np_window(box, 1.2, square=True)
    top, left, bottom, right = window
    # A square holding the box, and its 1.2x enlargement about the centre to within rounding
    # (the side to an integer, the corner to a pixel: 0.75 px at most).
    assert bottom - top == right - left
    assert top <= box[0] and left <= box[1] and bottom >= box[2] and right >= box[3]
    cy, cx = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = 0.6 * max(box[2] - box[0], box[3] - box[1])
    for lo, hi, c in ((top, bottom, cy), (left, right, cx)):
      assert abs(lo - (c - half)) <= 0.75 and abs(hi - (c + half)) <= 0.75
    ref_image = cv2.resize(np_crop(image.astype(np.float32), window, MEAN), size[::-1],
                           interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(got_image.numpy(), ref_image, atol=2e-3)
    target = np.where(instance == k + 1, classes[k], 0)
    target = np.where((label == 255) | (instance == 255), 255, target)
    ref_label = np_nearest(np_crop(target, window, 255), size)
    np.testing.assert_array_equal(got_label.numpy(), ref_label)
    # Only the centred object keeps its class; every other object is background.
    assert set(np.unique(ref_label)) <= {0, int(classes[k]), 255}
    assert (ref_label == classes[k]).any()


def test_window_outside_the_image_is_mean_and_ignored():
  image = np.full((20, 30, 3), 7, np.float32)
  label = np.ones((20, 30), np.int32)
  got_image, got_label = windows.crop_window(tf.constant(image), tf.constant(label),
                                             tf.constant([-3, 25, 10, 35]), MEAN)
  assert got_image.shape == (13, 10, 3)
  inside = np.zeros((13, 10), bool)
  inside[3:, :5] = True
  np.testing.assert_array_equal(got_image.numpy()[inside], 7.)
  np.testing.assert_allclose(got_image.numpy()[~inside], np.broadcast_to(MEAN, (inside.size
                                                                                - inside.sum(), 3)))
  np.testing.assert_array_equal(got_label.numpy(), np.where(inside, 1, 255))


def test_proposal_windows_overlap_objects_and_keep_every_class():
  image, label, instance, classes, boxes = scene(3, 60, 60)
  del instance
  min_iou, size = 0.5, (32, 32)
  seen, both = set(), 0
  for k in range(len(boxes)):
    for s in range(40):
      got_image, got_label, proposal = windows.proposal_window(
          tf.constant(image, tf.float32), tf.constant(label, tf.int32), tf.constant(boxes),
          tf.constant(k), tf.constant([s, k], tf.int64), 1.2, min_iou, size, MEAN)
      p = tuple(int(v) for v in proposal.numpy())
      assert max(np_iou(p, b) for b in boxes) >= min_iou
      assert 0 <= p[0] < p[2] <= 60 and 0 <= p[1] < p[3] <= 60
      seen.add(p)
      window = np_window(p, 1.2, square=False)
      ref_label = np_nearest(np_crop(label.astype(np.int32), window, 255), size)
      np.testing.assert_array_equal(got_label.numpy(), ref_label)  # Every class kept.
      both += len(set(np.unique(ref_label)) - {0, 255}) > 1
      ref_image = cv2.resize(np_crop(image.astype(np.float32), window, MEAN), size[::-1],
                             interpolation=cv2.INTER_LINEAR)
      np.testing.assert_allclose(got_image.numpy(), ref_image, atol=2e-3)
  assert len(seen) > 20 * len(boxes)  # Jittered, not the box itself.
  assert len(classes) < 2 or both > 0  # Windows that hold two objects label both.


def test_sample_proposal_is_deterministic_and_falls_back_to_the_box():
  boxes = tf.constant([[10, 10, 30, 40]], tf.int32)
  a = windows.sample_proposal(boxes, 0, tf.constant([50, 50]), tf.constant([1, 2], tf.int64), 0.5)
  b = windows.sample_proposal(boxes, 0, tf.constant([50, 50]), tf.constant([1, 2], tf.int64), 0.5)
  np.testing.assert_array_equal(a, b)
  exact = windows.sample_proposal(boxes, 0, tf.constant([50, 50]), tf.constant([1, 2], tf.int64),
                                  1.0)
  np.testing.assert_array_equal(exact, [10, 10, 30, 40])


def test_balancing_repeats_rare_classes():
  # Class 1: 5 objects, class 2: 2, class 3: 1, class 4: none.
  classes = [[1, 2, 1], [1], [], [3, 1, 2], [1]]
  plan = windows.plan_windows(classes, 5, per_object=1, balance=True)
  np.testing.assert_array_equal(plan.class_counts, [0, 5, 2, 1, 0])
  np.testing.assert_array_equal(plan.repeats, [1, 1, 2, 5, 1])  # round(5/2) = 2, round(5/1) = 5.
  np.testing.assert_array_equal(plan.count, [1 + 2 + 1, 1, 0, 5 + 1 + 2, 1])
  per_class = np.zeros(5, int)
  for i, c in enumerate(classes):
    for k in plan.window_objects(i):
      per_class[c[k]] += 1
  np.testing.assert_array_equal(per_class, [0, 5, 4, 5, 0])
  np.testing.assert_array_equal(plan.window_objects(3), [0, 0, 0, 0, 0, 1, 2, 2])
  stage2 = windows.plan_windows(classes, 5, per_object=3, balance=False)
  assert stage2.total == 3 * 8 and stage2.count[2] == 0
  np.testing.assert_array_equal(stage2.window_objects(0), [0, 0, 0, 1, 1, 1, 2, 2, 2])
  with pytest.raises(ValueError, match='num_classes'):
    windows.plan_windows([[7]], 5, 1, False)


# ----------------------------------------------------------------------------------- pipeline
class JaxsegTestObjects(tfds.core.GeneratorBasedBuilder):
  """Registered as 'jaxseg_test_objects': `scene`s in the builders' instance format."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self,
                                 features=checks.segmentation_features(with_instances=True))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in SIZES}

  def _generate_examples(self, split):
    for i in range(SIZES[split]):
      image, label, instance, classes, boxes = scene(100 + i)
      yield i, {'image': image, 'label': label, 'id': f'{split}_{i}',
                'instance': instance[..., None], 'objects': {'label': classes, 'box': boxes}}


class JaxsegTestNoObjects(tfds.core.GeneratorBasedBuilder):
  """Registered as 'jaxseg_test_no_objects': images and labels only (as camvid)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=checks.segmentation_features())

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(3):
      image, label, *_ = scene(i)
      yield i, {'image': image, 'label': label, 'id': str(i)}


def default_config():
  spec = importlib.util.spec_from_file_location('jaxseg_default_config',
                                                ROOT / 'experiments' / 'default.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds_windows'))


@pytest.fixture
def config(data_dir):
  c = default_config()
  c.data.dataset = 'jaxseg_test_objects'
  c.data.data_dir = data_dir
  c.data.train_split = 'train'
  c.data.num_classes = NUM_CLASSES
  c.data.windows = 'objects'
  c.data.window_resize = (40, 40)
  c.data.crop_size = (40, 40)  # The whole resized window: the transform is the identity ...
  c.data.hflip = False  # ... without flips.
  c.data.scale_range = (1.0, 1.0)
  c.data.shuffle_buffer = 16
  c.data.prefetch = 1
  c.data.num_parallel_calls = 2
  c.train.batch_size = 4
  return c


def local_batches(config, steps, start_step=0, process_index=0, process_count=1, local_batch=4):
  builder = pipeline.load_builder(config)
  ds = pipeline._train_dataset(config, builder, process_index=process_index,
                               process_count=process_count, local_batch_size=local_batch,
                               start_step=start_step)
  return list(ds.take(steps).as_numpy_iterator())


def stored_scenes(config):
  """The generated scenes in the split's stored order (the train stream's example index)."""
  builder = pipeline.load_builder(config)
  ids = [ex['id'].decode() for ex in tfds.as_numpy(builder.as_dataset(split='train',
                                                                      shuffle_files=False))]
  return [scene(100 + int(i.split('_')[1])) for i in ids]


def test_each_epoch_is_every_window_once(config):
  config.data.balance_classes = True
  truth = stored_scenes(config)
  plan = windows.plan_windows([t[3] for t in truth], NUM_CLASSES, 1, True)
  assert plan.repeats.max() > 1  # Some class is balanced.
  builder = pipeline.load_builder(config)
  assert [list(c) for c in pipeline.object_classes(builder, 'train')] == [list(t[3])
                                                                        for t in truth]
  n = plan.total
  stream = local_batches(config, 2 * n, local_batch=1)
  for epoch in range(2):
    part = stream[epoch * n:(epoch + 1) * n]
    assert {int(b['epoch'][0]) for b in part} == {epoch}
    assert sorted((int(b['index'][0]), int(b['slot'][0])) for b in part) == sorted(
        (i, s) for i in range(len(truth)) for s in range(plan.count[i]))
  # Each window is the right object's: NumPy crop of the padded image, OpenCV resize, rounded.
  for b in stream[:n]:
    i, s = int(b['index'][0]), int(b['slot'][0])
    image, label, instance, classes, boxes = truth[i]
    k = plan.window_objects(i)[s]
    window = np_window(boxes[k], 1.2, square=True)
    ref = cv2.resize(np_crop(image.astype(np.float32), window, MEAN), (40, 40),
                     interpolation=cv2.INTER_LINEAR)
    assert np.abs(b['image'][0].astype(np.float32) - ref).max() <= 1.01
    target = np.where(instance == k + 1, classes[k], 0)
    target = np.where(label == 255, 255, target)
    np.testing.assert_array_equal(b['label'][0], np_nearest(np_crop(target, window, 255),
                                                            (40, 40)))


@pytest.mark.parametrize('mode', ['objects', 'proposals'])
def test_windows_are_a_function_of_seed_and_step(config, mode):
  config.data.windows = mode
  config.data.balance_classes = True
  config.data.crop_size = (32, 32)
  config.data.hflip = True
  steps = 9  # Stage 1: 24 windows an epoch, so the run and the second resume cross epochs.
  run = local_batches(config, steps)
  for start in (2, 7):
    resumed = local_batches(config, steps - start, start_step=start)
    for a, b in zip(run[start:], resumed):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
  config.seed = 1
  other = local_batches(config, 1)
  assert not np.array_equal(run[0]['image'], other[0]['image'])


def test_proposal_stream_covers_its_epoch(config):
  config.data.windows = 'proposals'
  classes = [t[3] for t in stored_scenes(config)]
  plan = windows.plan_windows(classes, NUM_CLASSES, windows.PROPOSALS_PER_OBJECT, False)
  stream = local_batches(config, plan.total // 4 + 1)
  epochs = np.concatenate([b['epoch'] for b in stream])
  assert (epochs[:plan.total] == 0).all() and (epochs[plan.total:] == 1).all()
  assert len({(int(i), int(s)) for b in stream[:plan.total // 4]
              for i, s in zip(b['index'], b['slot'])}) == plan.total // 4 * 4


def test_processes_share_the_windows(config):
  builder = pipeline.load_builder(config)
  classes = [t[3] for t in stored_scenes(config)]
  plan = windows.plan_windows(classes, NUM_CLASSES, 1, False)
  seen = []
  for p in range(2):
    part = pipeline._process_slice(builder, 'train', p, 2, 'config.data.train_split')
    n = int(plan.count[part.offset:part.offset + part.size].sum())
    stream = local_batches(config, n, process_index=p, process_count=2, local_batch=1)
    seen += [(int(b['index'][0]), int(b['slot'][0])) for b in stream]
  assert sorted(seen) == sorted((i, s) for i in range(len(classes)) for s in range(plan.count[i]))


def test_train_iterator_resume_matches_uninterrupted(config):
  config.data.windows = 'proposals'
  config.data.crop_size = (32, 32)
  mesh = Mesh(np.array(jax.devices()[:2]), ('data',))
  it = pipeline.train_iterator(config, mesh)
  full = [jax.tree.map(np.asarray, next(it)) for _ in range(4)]
  it = pipeline.train_iterator(config, mesh, start_step=3)
  resumed = jax.tree.map(np.asarray, next(it))
  np.testing.assert_array_equal(full[3]['image'], resumed['image'])
  np.testing.assert_array_equal(full[3]['label'], resumed['label'])


def test_windows_need_objects(config):
  config.data.dataset = 'jaxseg_test_no_objects'
  builder = pipeline.load_builder(config)
  with pytest.raises(ValueError, match=r"config\.data\.windows='objects'.*config\.data\.dataset="
                                       r"'jaxseg_test_no_objects'"):
    pipeline._train_dataset(config, builder, process_index=0, process_count=1,
                            local_batch_size=4)
  config.data.windows = 'image'
  config.data.balance_classes = True
  with pytest.raises(ValueError, match='balance_classes'):
    pipeline._train_dataset(config, builder, process_index=0, process_count=1,
                            local_batch_size=4)


def test_proposals_file_windows(config, tmp_path):
  """data.proposals: each image's file boxes kept by IoU with an object, enlarged, all classes."""
  import json  # pylint: disable=g-import-not-at-top
  builder = pipeline.load_builder(config)
  ids = [ex['id'].decode() for ex in tfds.as_numpy(builder.as_dataset(split='train',
                                                                      shuffle_files=False))]
  truth, rows, kept = stored_scenes(config), {}, []
  for image_id, (image, label, _, classes, boxes) in zip(ids, truth):
    h, w = label.shape
    mine = [[x0, y0, x1 - 1, y1 - 1, 1.] for y0, x0, y1, x1 in boxes.tolist()]  # The objects,
    mine += [[x0 + 2, y0 + 1, x1, y1, .5] for y0, x0, y1, x1 in boxes.tolist()]  # shifted,
    mine.append([0, 0, 2, 2, .1])  # and a 3x3 corner box that overlaps nothing enough.
    rows[image_id] = mine
    ok = []
    for x0, y0, x1, y1, _ in mine:
      p = (int(y0), int(x0), min(int(y1) + 1, h), min(int(x1) + 1, w))
      if max(np_iou(p, b) for b in boxes) >= 0.5:
        ok.append(np_window(p, 1.2, square=False))
    kept.append(ok)
  path = tmp_path / 'proposals.json'
  path.write_text(json.dumps(rows))
  config.data.windows = 'proposals'
  config.data.proposals = str(path)
  n = sum(len(k) for k in kept)
  stream = local_batches(config, n, local_batch=1)
  assert sorted((int(b['index'][0]), int(b['slot'][0])) for b in stream) == sorted(
      (i, s) for i in range(len(kept)) for s in range(len(kept[i])))
  for b in stream:
    i, s = int(b['index'][0]), int(b['slot'][0])
    label = truth[i][1].astype(np.int32)
    np.testing.assert_array_equal(b['label'][0], np_nearest(np_crop(label, kept[i][s], 255),
                                                            (40, 40)))


# ------------------------------------------------------------------------------------- recipes
def test_two_stage_recipes_train_from_their_docstrings(tmp_path, data_dir):
  """Stage 1 from a width-1/16 Caffe VGG16, then stage 2 from stage 1's workdir, one step each,
  on synthetic_shapes/tiny's object windows (DeconvNet's smallest input: 193)."""
  import test_recipes  # pylint: disable=g-import-not-at-top  (tests/ is on sys.path)
  from jaxseg import cli  # pylint: disable=g-import-not-at-top
  weights = {'weights/VGG_ILSVRC_16_layers.caffemodel':
             test_recipes.vgg_caffemodel(tmp_path / 'vgg16.caffemodel')}
  overrides = [f'--config.data.data_dir={data_dir}', '--config.data.dataset=synthetic_shapes/tiny',
               '--config.data.num_classes=7', '--config.data.train_split=train',
               '--config.data.eval_split=val', '--config.data.crop_size=193,193',
               '--config.data.window_resize=200,200', '--config.model.width=0.0625',
               '--config.model.dtype=float32', '--config.train.batch_size=8',
               '--config.train.grad_accum_steps=1', '--config.train.num_steps=1',
               '--config.train.eval_every=-1', '--config.train.checkpoint_every=1',
               '--config.data.shuffle_buffer=16']
  for recipe in ('deconvnet_voc_stage1.py', 'deconvnet_voc_stage2.py'):
    (argv,) = test_recipes.docstring_commands(recipe)
    out = []
    for arg in argv:
      if arg.startswith('--config.model.init_from='):
        value = arg.split('=', 1)[1]
        source = weights.get(value) or tmp_path / pathlib.Path(value).name
        assert pathlib.Path(source).exists(), f'{recipe}: no stand-in for {value}'
        arg = f'--config.model.init_from={source}'
      elif out and out[-1] == '--workdir':
        arg = str(tmp_path / pathlib.Path(arg).name)
      out.append(arg)
    assert cli.main(out + overrides) == 0, recipe
    assert (tmp_path / pathlib.Path(recipe).stem / 'checkpoints').is_dir()
