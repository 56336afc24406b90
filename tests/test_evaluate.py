"""Inference modes against models with known outputs, and the eval loop on 8 devices."""
import json

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config_loading, inference


class Pointwise(nn.Module):
  """1x1 conv: each pixel's logits depend on that pixel only, so windows cannot change them."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Conv(self.num_classes, (1, 1))(x)


class Local(nn.Module):
  """3x3 conv with an asymmetric kernel: depends on the neighbourhood and on the orientation."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Conv(self.num_classes, (3, 3))(nn.relu(nn.Conv(8, (3, 3))(x)))


class WindowMean(nn.Module):
  """Logits = (mean of the input window) * (1..C): a known function of the window position."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    mean = x.mean(axis=(1, 2, 3))[:, None, None, None]
    return jnp.broadcast_to(mean * jnp.arange(1, self.num_classes + 1), x.shape[:3] +
                            (self.num_classes,))


def apply_of(model, shape, seed=0):
  variables = model.init(jax.random.key(seed), jnp.zeros(shape))
  return inference.model_apply_fn(model, variables)


def images_of(shape, seed=1):
  return jax.random.normal(jax.random.key(seed), shape)


def test_window_starts_cover_and_end_at_edge():
  assert inference.window_starts(10, 4, 3) == [0, 3, 6]
  assert inference.window_starts(11, 4, 3) == [0, 3, 6, 7]
  assert inference.window_starts(4, 4, 3) == [0]
  assert inference.window_starts(3, 4, 3) == [0]
  with pytest.raises(ValueError, match='stride 5 > crop 4'):
    inference.window_starts(10, 4, 5)


def test_slide_equals_whole_when_window_covers_image():
  x = images_of((2, 12, 16, 3))
  apply_fn = apply_of(Local(), x.shape)
  np.testing.assert_array_equal(inference.slide(apply_fn, x, (12, 16), (8, 8)),
                                inference.whole(apply_fn, x))


@pytest.mark.parametrize('crop,stride', [((5, 7), (3, 4)), ((4, 4), (4, 4)), ((20, 20), (5, 5))])
def test_slide_equals_whole_for_pointwise_model(crop, stride):
  x = images_of((2, 11, 13, 3))
  apply_fn = apply_of(Pointwise(), x.shape)
  np.testing.assert_allclose(inference.slide(apply_fn, x, crop, stride),
                             inference.whole(apply_fn, x), rtol=1e-6, atol=1e-6)


def test_slide_averages_overlapping_windows():
  x = images_of((1, 9, 10, 3))
  crop, stride = (5, 4), (2, 3)
  apply_fn = apply_of(WindowMean(), x.shape)
  got = np.asarray(inference.slide(apply_fn, x, crop, stride))
  xn = np.asarray(x)
  total = np.zeros((9, 10))
  count = np.zeros((9, 10))
  for y in inference.window_starts(9, crop[0], stride[0]):
    for x0 in inference.window_starts(10, crop[1], stride[1]):
      total[y:y + crop[0], x0:x0 + crop[1]] += xn[0, y:y + crop[0], x0:x0 + crop[1]].mean()
      count[y:y + crop[0], x0:x0 + crop[1]] += 1
  want = (total / count)[None, :, :, None] * np.arange(1, 4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert count.min() >= 1 and count.max() > 1  # Overlaps were exercised.


def full_sizes(x):
  return np.tile(np.array(x.shape[1:3], np.int32), (x.shape[0], 1))


def multiscale_of(apply_fn, x, *args, **kwargs):
  """inference.multiscale of images filling their canvas, jitted (eager scans dispatch slowly)."""
  return jax.jit(lambda im: inference.multiscale(apply_fn, im, full_sizes(x), *args,
                                                 **kwargs))(x)


def test_multiscale_scale_one_without_flip_equals_whole():
  # Scale 1 of the image's own long side (base_size 0) in one window of the image's size.
  x = images_of((2, 12, 12, 3))
  apply_fn = apply_of(Local(), x.shape)
  got = multiscale_of(apply_fn, x, (1.0,), False, crop=(12, 12), stride=(8, 8))
  np.testing.assert_allclose(got, jax.nn.softmax(inference.whole(apply_fn, x)), rtol=1e-6,
                             atol=1e-7)
  fn = jax.jit(inference.inference_fn(apply_fn, 'multiscale', (12, 12), (8, 8), (1.0,), False))
  np.testing.assert_array_equal(jnp.argmax(fn(x, full_sizes(x)), -1),
                                jnp.argmax(inference.whole(apply_fn, x), -1))


def test_flip_averages_with_mirrored_prediction_and_is_symmetric():
  x = images_of((2, 10, 14, 3))
  apply_fn = apply_of(Local(), x.shape)
  got = multiscale_of(apply_fn, x, (1.0,), True, crop=(10, 14), stride=(8, 8))
  want = 0.5 * (jax.nn.softmax(apply_fn(x)) + jax.nn.softmax(apply_fn(x[:, :, ::-1]))[:, :, ::-1])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # Flip-averaging makes any model mirror-equivariant.
  mirrored = multiscale_of(apply_fn, x[:, :, ::-1], (1.0,), True, (10, 14), (8, 8))
  np.testing.assert_allclose(mirrored[:, :, ::-1], got, rtol=1e-5, atol=1e-6)
  # A pointwise model is mirror-equivariant already: flip changes nothing.
  point = apply_of(Pointwise(), x.shape)
  np.testing.assert_allclose(
      inference.inference_fn(point, 'whole', flip=True)(x, full_sizes(x)),
      jax.nn.softmax(point(x)),
      rtol=1e-6, atol=1e-7)


def test_multiscale_resizes_and_slides_when_larger_than_window():
  x = jnp.ones((1, 8, 8, 3)) * jnp.arange(3.0)  # Constant image: every scale agrees.
  apply_fn = apply_of(Pointwise(), x.shape)
  got = multiscale_of(apply_fn, x, (0.5, 1.0, 1.5), True, crop=(6, 6), stride=(4, 4))
  assert got.shape == (1, 8, 8, 4)
  np.testing.assert_allclose(got, jax.nn.softmax(apply_fn(x)), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='unknown eval.mode'):
    inference.inference_fn(apply_fn, 'tiles')


def _config(num_classes, mode='whole'):
  config = config_loading.load_config(config_loading.experiments_dir() / 'default.py')
  config.data.dataset = 'synthetic_shapes'
  config.data.num_classes = num_classes
  config.eval.mode = mode
  config.eval.crop_size = (6, 6)
  config.eval.stride = (4, 4)
  return config


def _batches(mesh, images, labels, valid, ids, batch):
  shard = NamedSharding(mesh, P('data'))
  for s in range(0, len(images), batch):
    yield {'image': jax.device_put(images[s:s + batch], shard),
           'label': jax.device_put(labels[s:s + batch], shard),
           'valid': jax.device_put(valid[s:s + batch], shard),
           'id': np.array(ids[s:s + batch])}


@pytest.mark.parametrize('mode', ['whole', 'slide'])
def test_evaluate_on_8_devices_matches_numpy_and_1_device(tmp_path, mode):
  if jax.device_count() < 8:
    pytest.skip('needs 8 (simulated) devices')
  n = 7  # synthetic_shapes' classes.
  rng = np.random.default_rng(0)
  images = rng.normal(size=(16, 8, 10, 3)).astype(np.float32)
  labels = rng.integers(0, n, (16, 8, 10)).astype(np.int32)
  labels[:, 6:] = 255  # Padded rows of smaller images.
  valid = np.array([True] * 13 + [False] * 3)  # The last batch is padded.
  ids = [f'img{i}'.encode() for i in range(16)]
  model = Pointwise(n)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 10, 3)))
  config = _config(n, mode)
  logits = np.asarray(model.apply(variables, images))
  pred = logits.argmax(-1)
  want = np.zeros((n, n), np.int64)
  for i in range(13):
    keep = labels[i] != 255
    np.add.at(want, (labels[i][keep], pred[i][keep]), 1)

  mesh8 = Mesh(np.array(jax.devices()[:8]), ('data',))
  res8 = inference.evaluate(config, model, variables, mesh8, 'val', workdir=tmp_path, step=7,
                           batches=_batches(mesh8, images, labels, valid, ids, 8))
  np.testing.assert_array_equal(res8['confusion_matrix'], want)
  assert res8['num_images'] == 13 and res8['per_image'][0]['id'] == 'img0'
  assert res8['class_names'][1] == 'disk'

  mesh1 = Mesh(np.array(jax.devices()[:1]), ('data',))
  res1 = inference.evaluate(config, model, variables, mesh1, 'val',
                           batches=_batches(mesh1, images, labels, valid, ids, 8))
  np.testing.assert_array_equal(res1['confusion_matrix'], want)
  assert res1['mean_iou'] == res8['mean_iou']

  saved = json.loads((tmp_path / 'eval' / 'val_step7.json').read_text())
  assert saved['step'] == 7 and saved['split'] == 'val'
  assert saved['confusion_matrix'] == want.tolist()
  assert saved['mean_iou'] == pytest.approx(res8['mean_iou'])
  assert [p['id'] for p in saved['per_image']] == [f'img{i}' for i in range(13)]
  first = want * 0
  keep = labels[0] != 255
  np.add.at(first, (labels[0][keep], pred[0][keep]), 1)
  assert saved['per_image'][0]['pixel_accuracy'] == pytest.approx(np.trace(first) / keep.sum())
