"""inference.chain: the ensemble rules against NumPy, each model normalising its own input."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config_loading
from jaxseg.data import pipeline
from jaxseg.inference import chain

CLASSES = 5


class Pointwise(nn.Module):
  """A 1x1 convolution: its logits are easy to write in NumPy."""

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Conv(CLASSES, (1, 1))(x)


def _config(normalization='imagenet', **eval_fields):
  config = config_loading.load_config(config_loading.experiments_dir() / 'default.py')
  config.data.num_classes = CLASSES
  config.data.normalization = normalization
  config.eval.mode = 'whole'
  for key, value in eval_fields.items():
    config.eval[key] = value
  return config


def _numpy_logits(variables, images):
  p = variables['params']['Conv_0']
  return np.einsum('bhwc,ck->bhwk', images, np.asarray(p['kernel'])[0, 0]) + np.asarray(p['bias'])


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope='module')
def two_models():
  model = Pointwise()
  a = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
  b = model.init(jax.random.key(1), jnp.zeros((1, 4, 4, 3)))
  pixels = np.random.default_rng(0).integers(0, 256, (2, 6, 7, 3)).astype(np.uint8)
  return model, a, b, pixels


@pytest.mark.parametrize('rule', ['product', 'mean'])
def test_ensemble_rules_match_numpy(two_models, rule):
  model, a, b, pixels = two_models
  # The partner reads Caffe-normalised BGR input, this model ImageNet-normalised RGB.
  config, partner_config = _config(ensemble_rule=rule), _config('caffe')
  pipe = chain.Chain.from_config(config, partner_config)
  windows, valid = chain.no_windows(2)
  sizes = np.array([[6, 7], [5, 4]], np.int32)
  got = np.asarray(pipe(model, a, pixels, sizes, windows, valid, model, b))
  mine = _numpy_logits(a, np.asarray(pipeline.normalize(pixels, 'imagenet')))
  other = _numpy_logits(b, pixels[..., ::-1].astype(np.float32)
                        - np.asarray(pipeline.CAFFE_BGR_MEAN, np.float32))
  if rule == 'product':  # DeconvNet's code: its scores x max(0, FCN's).
    want = mine * np.maximum(other, 0)
  else:  # The paper: the mean of the two probability maps.
    want = 0.5 * (_softmax(mine) + _softmax(other))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_normalised_float_input_gives_the_uint8_result(two_models):
  model, a, b, pixels = two_models
  pipe = chain.Chain.from_config(_config(ensemble_rule='mean'), _config('caffe'))
  windows, valid = chain.no_windows(2)
  sizes = np.array([[6, 7], [6, 7]], np.int32)
  from_pixels = pipe(model, a, pixels, sizes, windows, valid, model, b)
  from_floats = pipe(model, a, pipeline.normalize(pixels, 'imagenet'), sizes, windows, valid,
                     model, b)
  np.testing.assert_allclose(from_floats, from_pixels, rtol=1e-5, atol=1e-6)


def test_bad_settings_are_named(tmp_path):
  with pytest.raises(ValueError, match='config.eval.ensemble_rule'):
    chain.Chain.from_config(_config(ensemble_rule='vote'))
  with pytest.raises(ValueError, match='config.eval.mode'):
    chain.Chain.from_config(_config(mode='tiles'))
  with pytest.raises(ValueError, match='config.eval.aggregate'):
    chain.Chain.from_config(_config(aggregate='median'))
  with pytest.raises(ValueError, match='ensemble partner'):
    chain.Chain.from_config(_config(), _config(mode='proposals'))
  weights = tmp_path / 'fcn8s.npz'
  weights.write_bytes(b'')
  with pytest.raises(ValueError, match='config.eval.ensemble_config'):
    chain.load_partner(_config(ensemble_with=str(weights)))
  with pytest.raises(ValueError, match='config.eval.proposals'):
    chain.WindowSource(_config(mode='proposals'))


def test_crf_refines_the_probabilities_of_the_mode(two_models):
  """eval.crf: the CRF runs on softmax(scores) with the canvas's pixels and true sizes."""
  from jaxseg.ops import crf  # pylint: disable=g-import-not-at-top
  model, a, _, pixels = two_models
  config = _config(crf=True)
  config.crf.iterations = 3
  pipe = chain.Chain.from_config(config)
  assert pipe.tag == 'crf' and pipe.crf == crf.CrfParams(iterations=3)
  windows, valid = chain.no_windows(2)
  sizes = np.array([[6, 7], [4, 5]], np.int32)
  got = np.asarray(pipe(model, a, pixels, sizes, windows, valid))
  probs = _softmax(_numpy_logits(a, np.asarray(pipeline.normalize(pixels, 'imagenet'))))
  want = np.asarray(crf.dense_crf(jnp.asarray(probs, jnp.float32), pixels, sizes, pipe.crf))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert np.all(got[1, 4:] == 0) and np.all(got[1, :, 5:] == 0)  # Outside the second image.
  np.testing.assert_allclose(got[0].sum(-1), 1.0, rtol=1e-5)
  # Per device inside shard_map, as the eval step runs it (loop carries keep device variance).
  from jax.sharding import Mesh, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = Mesh(np.array(jax.devices()[:2]), ('data',))
  sharded = jax.jit(jax.shard_map(
      lambda v, x, s, w, m: pipe(model, v, x, s, w, m), mesh=mesh,
      in_specs=(P(), P('data'), P('data'), P('data'), P('data')), out_specs=P('data')))
  np.testing.assert_allclose(np.asarray(sharded(a, pixels, sizes, windows, valid)), got,
                             rtol=1e-5, atol=1e-6)


def test_proposals_mode_evaluates_each_image_with_its_own_windows(two_models, tmp_path):
  """eval.mode='proposals' through `evaluate` on 8 devices: each image's windows come from the
  proposals file by its id, selected as the original, and the confusion matrix equals the one of
  instancewise() called image by image."""
  import json  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from jaxseg import inference  # pylint: disable=g-import-not-at-top
  from jaxseg.inference import instancewise, proposals  # pylint: disable=g-import-not-at-top
  model, a, _, _ = two_models
  rng = np.random.default_rng(5)
  sizes = np.array([[20, 24], [16, 12], [24, 24]] + [[0, 0]] * 5, np.int32)
  pixels = rng.integers(0, 256, (8, 24, 24, 3)).astype(np.uint8)
  labels = rng.integers(0, CLASSES, (8, 24, 24)).astype(np.int32)
  ids = np.array([f'im{i}'.encode() for i in range(8)])
  boxes = {f'im{i}': [[1, 2, 13, 15, 0.9], [4, 0, 9, 9, 0.5], [0, 0, 3, 3, 0.99]]
           for i in range(3)}
  (tmp_path / 'boxes.json').write_text(json.dumps(boxes))
  config = _config(mode='proposals', proposals=str(tmp_path / 'boxes.json'), max_proposals=2,
                   min_proposal_size=6, proposal_size=(8, 8), proposal_context=1.2)
  for i, (h, w) in enumerate(sizes[:3]):
    labels[i, h:] = labels[i, :, w:] = 255
  labels[3:] = 255
  want = np.zeros((CLASSES, CLASSES), np.int64)
  reader = proposals.read_proposals(tmp_path / 'boxes.json')
  apply_fn = inference.model_apply_fn(model, a)
  for i, (h, w) in enumerate(sizes[:3]):
    windows, valid = proposals.select_windows(reader.boxes(f'im{i}', (h, w)), (h, w), 2, 6, 1.2)
    assert valid.sum() == 2  # The 4x4 box is too small even enlarged; the other two are kept.
    black = pipeline.normalize(np.zeros(3, np.uint8), 'imagenet')
    scores = instancewise.instancewise(apply_fn, pipeline.normalize(pixels[i:i + 1], 'imagenet'),
                                       sizes[i:i + 1], windows[None], valid[None], (8, 8), 'max',
                                       outside=black)
    pred = np.asarray(scores)[0].argmax(-1)
    np.add.at(want, (labels[i, :h, :w], pred[:h, :w]), 1)
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  shard = NamedSharding(mesh, P('data'))
  batch = {'image': pixels, 'label': labels, 'valid': np.arange(8) < 3, 'height': sizes[:, 0],
           'width': sizes[:, 1]}
  batch = {k: jax.device_put(v, shard) for k, v in batch.items()}
  batch['id'] = ids
  results = inference.evaluate(config, model, a, mesh, 'val', batches=[batch])
  np.testing.assert_array_equal(results['confusion_matrix'], want)
  assert results['inference'] == 'proposals' and results['num_images'] == 3


def test_predictor_takes_proposals_by_image_id(two_models, tmp_path):
  """`jaxseg predict --proposals FILE`: the Predictor looks the windows up by the file stem."""
  import json  # pylint: disable=g-import-not-at-top
  from jaxseg import inference  # pylint: disable=g-import-not-at-top
  model, a, _, _ = two_models
  (tmp_path / 'boxes.json').write_text(json.dumps({'photo': [[2, 3, 17, 12, 1.0]]}))
  config = _config(mode='proposals', proposals=str(tmp_path / 'boxes.json'), max_proposals=3,
                   min_proposal_size=4, proposal_size=(8, 8))
  predictor = inference.Predictor(config, model, a, bucket=16)
  image = np.random.default_rng(2).integers(0, 256, (14, 21, 3)).astype(np.uint8)
  label = predictor(image, 'photo')
  assert label.shape == (14, 21)
  # Outside the one window nothing scores: argmax of all-zero scores is class 0.
  window, valid = chain.WindowSource(config).windows('photo', image, 14, 21)
  assert valid.sum() == 1
  y0, x0, y1, x1 = np.clip(window[0], 0, None)
  outside = np.ones((14, 21), bool)
  outside[y0:y1, x0:x1] = False
  assert np.all(label[outside] == 0) and np.any(label[~outside] != 0)
  with pytest.raises(ValueError, match='unknown'):
    predictor(image, 'unknown')
