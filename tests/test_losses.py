"""Pixel cross-entropy against NumPy and PyTorch, and its invariance to the device count."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxseg import losses
from jaxseg import parallel


def numpy_cross_entropy(logits, labels, ignore=255, weights=None, normalize=True):
  """Reference in float64 NumPy with torch's CrossEntropyLoss(weight, ignore_index) semantics."""
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  valid = labels != ignore
  lab = labels[valid]
  nll = -log_probs[valid][np.arange(lab.size), lab]
  w = np.ones_like(nll) if weights is None else np.asarray(weights, np.float64)[lab]
  total = (w * nll).sum()
  return total / w.sum() if normalize else total


def _data(seed=0, shape=(2, 5, 6), classes=4, ignore_frac=0.3):
  rng = np.random.RandomState(seed)
  logits = rng.randn(*shape, classes).astype(np.float32) * 3
  labels = rng.randint(0, classes, shape)
  labels[rng.rand(*shape) < ignore_frac] = 255
  return logits, labels.astype(np.int32)


@pytest.mark.parametrize('normalize', [True, False])
@pytest.mark.parametrize('weights', [None, (0.5, 2.0, 1.0, 3.0)])
def test_matches_numpy(normalize, weights):
  logits, labels = _data()
  loss, metrics = losses.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels),
                                           normalize=normalize, class_weights=weights)
  expected = numpy_cross_entropy(logits, labels, weights=weights, normalize=normalize)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['loss']), expected, rtol=1e-5)


def test_matches_torch():
  torch = pytest.importorskip('torch')
  logits, labels = _data(seed=3)
  weights = (1.0, 0.2, 4.0, 1.5)
  expected = torch.nn.functional.cross_entropy(
      torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(labels).long(),
      weight=torch.tensor(weights), ignore_index=255)
  loss, _ = losses.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels),
                                     class_weights=weights)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)


def test_aux_loss_weighting():
  logits, labels = _data(seed=1)
  aux, _ = _data(seed=2)
  loss, metrics = losses.segmentation_loss((jnp.asarray(logits), jnp.asarray(aux)),
                                           jnp.asarray(labels), aux_weight=0.4)
  main = numpy_cross_entropy(logits, labels)
  aux_ref = numpy_cross_entropy(aux, labels)
  np.testing.assert_allclose(float(metrics['main_loss']), main, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['aux_loss']), aux_ref, rtol=1e-5)
  np.testing.assert_allclose(float(loss), main + 0.4 * aux_ref, rtol=1e-5)


def test_bfloat16_logits_give_float32_loss():
  logits, labels = _data(seed=4)
  loss, _ = losses.segmentation_loss(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels))
  assert loss.dtype == jnp.float32
  rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(float(loss), numpy_cross_entropy(rounded, labels), rtol=1e-5)


def test_all_ignored_is_zero_with_finite_gradient():
  logits, labels = _data()
  labels[:] = 255
  grad = jax.grad(lambda x: losses.segmentation_loss(x, jnp.asarray(labels))[0])(
      jnp.asarray(logits))
  assert float(losses.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels))[0]) == 0.0
  assert np.all(np.asarray(grad) == 0)


def test_bad_class_weights_and_shapes():
  logits, labels = _data()
  with pytest.raises(ValueError, match='class_weights has 2 entries'):
    losses.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels), class_weights=(1., 2.))
  with pytest.raises(ValueError, match='disagree'):
    losses.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels[:, :3]))


@pytest.mark.parametrize('normalize', [True, False])
def test_eight_devices_give_the_global_mean_and_gradient(normalize):
  """Devices with very different valid-pixel counts: the loss is still the global mean."""
  rng = np.random.RandomState(0)
  features = rng.randn(8, 4, 4, 3).astype(np.float32)
  labels = rng.randint(0, 5, (8, 4, 4))
  labels[:3] = 255  # Three devices see only ignored pixels,
  labels[3, :, 1:] = 255  # one sees a few.
  kernel = rng.randn(3, 5).astype(np.float32)

  def loss_fn(w, x, y, axis_name=None):
    return losses.segmentation_loss(x @ w, y, normalize=normalize, axis_name=axis_name)

  def per_device(w, batch):
    (loss, metrics), grad = jax.value_and_grad(
        lambda w: loss_fn(w, batch['x'], batch['y'], 'data'), has_aux=True)(w)
    return jax.lax.pmean(grad, 'data'), metrics['loss']

  mesh = parallel.create_mesh()
  assert mesh.size == 8
  mapped = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P('data')),
                                 out_specs=(P(), P()), check_vma=False))
  batch = parallel.shard_batch({'x': features, 'y': labels.astype(np.int32)}, mesh)
  grad8, loss8 = mapped(parallel.replicate(kernel, mesh), batch)
  (loss1, _), grad1 = jax.value_and_grad(
      lambda w: loss_fn(w, features, labels.astype(np.int32)), has_aux=True)(kernel)
  expected = numpy_cross_entropy(features @ kernel, labels, normalize=normalize)
  np.testing.assert_allclose(float(loss8), expected, rtol=1e-5)
  np.testing.assert_allclose(float(loss1), expected, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad8), np.asarray(grad1), rtol=1e-5, atol=1e-6)
