"""Metrics against an independent NumPy transcription of FCN's score.py, and across 8 devices."""
import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import metrics


def fcn_hist(a, b, n):
  """FCN's fast_hist (score.py): a = ground truth, b = prediction."""
  k = (a >= 0) & (a < n)
  return np.bincount(n * a[k].astype(int) + b[k], minlength=n**2).reshape(n, n)


def fcn_scores(hist):
  """FCN's compute_hist printout, as in score.py (np.nanmean over classes)."""
  with np.errstate(divide='ignore', invalid='ignore'):
    acc = np.diag(hist).sum() / hist.sum()
    acc_cls = np.nanmean(np.diag(hist) / hist.sum(1))
    iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    mean_iu = np.nanmean(iu)
    freq = hist.sum(1) / hist.sum()
    fwavacc = (freq[freq > 0] * iu[freq > 0]).sum()
  return acc, acc_cls, mean_iu, fwavacc, iu


def random_batch(rng, batch, h, w, n, absent=()):
  label = rng.integers(0, n, (batch, h, w))
  pred = np.where(rng.random((batch, h, w)) < 0.6, label, rng.integers(0, n, (batch, h, w)))
  label[rng.random(label.shape) < 0.1] = 255
  for c in absent:  # Absent from both the truth and the prediction.
    label[label == c] = 255
    pred[pred == c] = (c + 1) % n
  return pred, label


@pytest.mark.parametrize('absent', [(), (2,), (0, 4)])
def test_scores_match_fcn_reference(absent):
  rng = np.random.default_rng(len(absent))
  n = 6
  pred, label = random_batch(rng, 3, 17, 23, n, absent)
  valid = np.array([True, True, False])  # The last example is batch padding.
  cm = np.asarray(metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), n,
                                           valid=jnp.asarray(valid)))
  ref_hist = sum(fcn_hist(label[i].ravel(), pred[i].ravel(), n) for i in range(2))
  np.testing.assert_array_equal(cm, ref_hist)

  scores = metrics.scores_from_confusion(cm)
  acc, acc_cls, mean_iu, fwavacc, iu = fcn_scores(ref_hist)
  assert scores['pixel_accuracy'] == pytest.approx(acc, rel=1e-12)
  assert scores['mean_accuracy'] == pytest.approx(acc_cls, rel=1e-12)
  assert scores['mean_iou'] == pytest.approx(mean_iu, rel=1e-12)
  assert scores['fw_iou'] == pytest.approx(fwavacc, rel=1e-12)
  np.testing.assert_allclose(scores['per_class_iou'], iu, rtol=1e-12)
  for c in absent:
    assert math.isnan(scores['per_class_iou'][c])
  # Explicit definition: mean over the classes seen in truth or prediction.
  seen = [c for c in range(n) if c not in absent]
  inter = np.diag(ref_hist)[seen]
  union = ref_hist.sum(1)[seen] + ref_hist.sum(0)[seen] - inter
  assert scores['mean_iou'] == pytest.approx(np.mean(inter / union), rel=1e-12)


def test_predicted_but_absent_class_counts_as_zero():
  cm = np.array([[5, 1, 0], [0, 4, 0], [0, 0, 0]])
  cm[0, 2] = 2  # Class 2 is never true but predicted: IoU 0, included in the mean.
  scores = metrics.scores_from_confusion(cm)
  assert scores['per_class_iou'][2] == 0.0
  assert math.isnan(scores['per_class_accuracy'][2])
  assert scores['mean_iou'] == pytest.approx((5 / 8 + 4 / 5 + 0) / 3)
  assert scores['mean_accuracy'] == pytest.approx((5 / 8 + 1) / 2)


def test_ignore_and_out_of_range_labels_are_dropped():
  pred = jnp.array([[0, 1, 2, 1]])
  label = jnp.array([[0, 255, 7, 1]])  # 255 ignored; 7 outside [0, 3) too.
  cm = np.asarray(metrics.confusion_matrix(pred, label, 3))
  np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_per_image_confusion_sums_to_total_and_scores():
  rng = np.random.default_rng(3)
  pred, label = random_batch(rng, 4, 9, 11, 5)
  per = np.asarray(metrics.per_image_confusion(jnp.asarray(pred), jnp.asarray(label), 5))
  for i in range(4):
    np.testing.assert_array_equal(per[i], fcn_hist(label[i].ravel(), pred[i].ravel(), 5))
  image_scores = metrics.per_image_scores(per)
  assert image_scores[1]['iou'] == pytest.approx(fcn_scores(per[1])[2])
  assert image_scores[1]['pixel_accuracy'] == pytest.approx(fcn_scores(per[1])[0])


def test_bincount_path_matches_onehot(monkeypatch):
  rng = np.random.default_rng(4)
  pred, label = random_batch(rng, 2, 8, 8, 4)
  onehot = metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), 4)
  monkeypatch.setattr(metrics, '_MAX_EXACT_FLOAT32', 1)
  scatter = metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), 4)
  np.testing.assert_array_equal(onehot, scatter)


def test_confusion_summed_over_8_devices_equals_one_device():
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip('needs 8 (simulated) devices')
  mesh = Mesh(np.array(devices[:8]), ('data',))
  rng = np.random.default_rng(5)
  pred, label = random_batch(rng, 8, 10, 12, 7)
  valid = np.array([True] * 6 + [False] * 2)
  n = 7

  @jax.jit
  def sharded(p, l, v):
    return jax.shard_map(lambda p, l, v: metrics.confusion_matrix(p, l, n, valid=v,
                                                                  axis_name='data'),
                         mesh=mesh, in_specs=P('data'), out_specs=P())(p, l, v)

  put = lambda x: jax.device_put(x, NamedSharding(mesh, P('data')))
  cm8 = sharded(put(pred), put(label), put(valid))
  cm1 = metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), n,
                                 valid=jnp.asarray(valid))
  np.testing.assert_array_equal(cm8, cm1)
  np.testing.assert_array_equal(cm1, sum(fcn_hist(label[i].ravel(), pred[i].ravel(), n)
                                         for i in range(6)))


def test_format_table_and_json_safe():
  scores = metrics.scores_from_confusion(np.array([[3, 1, 0], [1, 5, 0], [0, 0, 0]]))
  table = metrics.format_table(scores, ['background', 'cat', 'dog'])
  assert 'background' in table and 'mean IoU' in table
  dog_line = next(line for line in table.splitlines() if line.startswith('dog'))
  assert '-' in dog_line  # NaN shown as '-', not 'nan'.
  assert metrics.json_safe(scores)['per_class_iou'][2] is None
  with pytest.raises(ValueError, match='2 class names for 3 classes'):
    metrics.format_table(scores, ['a', 'b'])
  with pytest.raises(ValueError, match='square'):
    metrics.scores_from_confusion(np.zeros((2, 3)))
