"""Gradient accumulation equals one step of the whole batch; uint8 batches equal normalised ones."""
import pathlib
import sys

import jax
import numpy as np
import pytest

from jaxseg import models
from jaxseg import optim
from jaxseg import parallel
from jaxseg import train
from jaxseg.data import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'experiments'))
import default  # noqa: E402  pylint: disable=g-import-not-at-top

NUM_CLASSES = 5


def _config(accum, normalize=True, class_weights=()):
  """A tiny FCN-8s (no BN, no dropout) and one plain-SGD step with lr 1: params move by -grad."""
  config = default.get_config()
  config.model.name, config.model.width, config.model.dropout_rate = 'fcn8s', 1 / 16, 0.0
  config.data.num_classes, config.data.crop_size = NUM_CLASSES, (32, 32)
  config.train.batch_size, config.train.num_steps = 32, 10
  config.train.grad_accum_steps = accum
  config.loss.normalize = normalize
  config.loss.class_weights = class_weights
  config.optim.update(dict(learning_rate=1.0, momentum=0.0, weight_decay=0.0,
                           schedule='constant'))
  return config


def _batch(image_dtype=np.float32):
  rng = np.random.RandomState(0)
  labels = rng.randint(0, NUM_CLASSES, (32, 32, 32))
  labels[rng.rand(32, 32, 32) < 0.2] = 255
  labels[:9, :, :24] = 255  # Micro-batches hold very different numbers of valid pixels.
  pixels = rng.randint(0, 256, (32, 32, 32, 3)).astype(np.uint8)
  image = pixels if image_dtype == np.uint8 else np.asarray(pipeline.normalize(pixels, 'imagenet'))
  return {'image': image, 'label': labels.astype(np.int32)}


def _step(config, initial, batch):
  mesh = parallel.create_mesh()
  model = train.build_model(config)
  tx, schedule = optim.create_optimizer(config, models.BACKBONE_PREFIXES['fcn8s'])
  state = parallel.replicate(initial, mesh)
  state, metrics = train.make_train_step(config, model, tx, schedule, mesh)(
      state, parallel.shard_batch(batch, mesh))
  return parallel.to_host(state.params), {k: float(v) for k, v in parallel.to_host(metrics).items()}


@pytest.fixture(scope='module')
def initial():
  config = _config(1)
  mesh = parallel.create_mesh(jax.devices()[:1])
  tx, _ = optim.create_optimizer(config)
  return parallel.to_host(train.create_train_state(config, train.build_model(config), tx, mesh))


def _max_rel_diff(a, b):
  diffs = jax.tree.map(lambda x, y: float(np.abs(x - y).max() / (np.abs(y).max() + 1e-12)), a, b)
  return max(jax.tree.leaves(diffs))


@pytest.mark.parametrize('normalize,class_weights', [(True, ()), (False, ()),
                                                     (True, (1., 2., .5, 1., 3.))])
def test_accumulated_update_equals_whole_batch_step(initial, normalize, class_weights):
  batch = _batch()
  whole_params, whole = _step(_config(1, normalize, class_weights), initial, batch)
  moved = _max_rel_diff(jax.tree.map(np.subtract, whole_params, initial.params),
                        jax.tree.map(np.zeros_like, initial.params))
  assert moved > 0  # The step changed the parameters.
  for accum in (2, 4):  # 8 devices: micro-batches of 2 and 1 rows per device.
    params, metrics = _step(_config(accum, normalize, class_weights), initial, batch)
    update = jax.tree.map(np.subtract, params, initial.params)
    whole_update = jax.tree.map(np.subtract, whole_params, initial.params)
    err = _max_rel_diff(update, whole_update)
    print(f'accum {accum} normalize {normalize}: max relative update error {err:.2e}')
    assert err < 1e-4, err
    assert metrics['loss'] == pytest.approx(whole['loss'], rel=1e-5)
    assert metrics['grad_norm'] == pytest.approx(whole['grad_norm'], rel=1e-4)


def test_uint8_batches_are_normalised_on_device(initial):
  config = _config(1)
  from_float, _ = _step(config, initial, _batch(np.float32))
  from_pixels, _ = _step(config, initial, _batch(np.uint8))
  assert _max_rel_diff(from_pixels, from_float) < 1e-5


def test_batch_must_divide_devices_times_accumulation():
  from jaxseg import preflight  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r'batch_size=32 .*devices x config.train.grad_accum_steps '
                     r'\(8 x 8\).*e\.g\. 64'):
    preflight.check_config(_config(8), 8)
  preflight.check_config(_config(4), 8)
