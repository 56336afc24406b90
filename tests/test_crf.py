"""Dense CRF (jaxseg.ops.crf) against pydensecrf2, the authors' densecrf C++ code."""
import pathlib

import jax.numpy as jnp
import ml_collections
import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
from PIL import Image

from jaxseg.ops import crf

CAMVID = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'camvid'
CLASSES = 11
PARAMS = crf.CrfParams()  # DeconvNet's settings.


def _camvid(crop=(72, 96), offset=(150, 200)):
  """A real CamVid val image crop and its mask (11 = void)."""
  if not (CAMVID / 'val').is_dir():
    pytest.skip(f'CamVid not found at {CAMVID} (see ../shared/data/README.md)')
  name = sorted(p.name for p in (CAMVID / 'val').glob('*.png'))[0]
  image = np.array(Image.open(CAMVID / 'val' / name).convert('RGB'))
  mask = np.array(Image.open(CAMVID / 'valannot' / name))
  (h, w), (y, x) = crop, offset
  return np.ascontiguousarray(image[y:y + h, x:x + w]), mask[y:y + h, x:x + w]


def _noisy_probs(mask, seed=0, noise=1.5):
  """Ground truth one-hot (void uniform), 3 x one-hot + Gaussian noise, softmaxed."""
  onehot = np.eye(CLASSES + 1, dtype=np.float32)[mask][..., :CLASSES]
  onehot[mask == CLASSES] = 1.0 / CLASSES
  logits = 3.0 * onehot + np.random.default_rng(seed).normal(0, noise, onehot.shape)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def _reference(probs, image, params=PARAMS):
  """pydensecrf2: unary_from_softmax, DeconvNet's two kernels, inference(n)."""
  h, w, c = probs.shape
  unary = -np.log(np.clip(probs, 1e-5, 1.0)).reshape(-1, c).T
  d = dcrf.DenseCRF2D(w, h, c)
  d.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
  d.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
  d.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                         rgbim=np.ascontiguousarray(image), compat=params.bilateral_compat)
  return np.array(d.inference(params.iterations)).T.reshape(h, w, c)


def _ours(probs, image, sizes=None, params=PARAMS):
  probs, image = np.asarray(probs), np.asarray(image)
  if probs.ndim == 3:
    probs, image = probs[None], image[None]
  return np.asarray(crf.dense_crf(jnp.asarray(probs), jnp.asarray(image), sizes, params))


def _agreement(ref, ours):
  agree = float(np.mean(ref.argmax(-1) == ours.argmax(-1)))
  kl = np.sum(ref * (np.log(np.maximum(ref, 1e-20)) - np.log(np.maximum(ours, 1e-20))), -1)
  return agree, float(kl.mean())


def _synthetic(h=48, w=64, seed=1):
  """Four coloured blobs with texture; a noisy unary of the blob labels."""
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[:h, :w]
  labels = (rows >= h // 2).astype(int) * 2 + (cols >= w // 3).astype(int)
  colours = np.array([[200, 40, 40], [40, 180, 60], [30, 60, 200], [220, 220, 50]])
  image = np.clip(colours[labels] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
  logits = 2.0 * np.eye(5)[labels] + rng.normal(0, 1.2, (h, w, 5))
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return (p / p.sum(-1, keepdims=True)).astype(np.float32), image, labels


def test_matches_pydensecrf_on_synthetic_image():
  probs, image, _ = _synthetic()
  ref, ours = _reference(probs, image), _ours(probs, image)[0]
  agree, kl = _agreement(ref, ours)
  print(f'synthetic 48x64: argmax agreement {agree:.5f}, mean KL {kl:.2e}, '
        f'max |dQ| {np.abs(ref - ours).max():.2e}')
  assert agree >= 0.999
  assert kl < 1e-5
  np.testing.assert_allclose(ours, ref, atol=1e-3)
  # Other stddevs and weights, too.
  params = crf.CrfParams(iterations=3, gaussian_sxy=1.5, gaussian_compat=2.0, bilateral_sxy=7.0,
                         bilateral_srgb=11.0, bilateral_compat=4.0)
  agree, kl = _agreement(_reference(probs, image, params), _ours(probs, image, None, params)[0])
  assert agree >= 0.99 and kl < 1e-4


def test_keys_of_two_words_match_pydensecrf():
  """A small colour stddev spreads the keys over more than 32 bits: the two-word sort/search."""
  probs, image, _ = _synthetic()
  params = crf.CrfParams(iterations=5, bilateral_sxy=7.0, bilateral_srgb=1.0)
  assert len(crf._packing((63 / 7.0, 47 / 7.0) + (255.0,) * 3)) == 2
  agree, kl = _agreement(_reference(probs, image, params), _ours(probs, image, None, params)[0])
  print(f'synthetic 48x64, srgb 1: argmax agreement {agree:.5f}, mean KL {kl:.2e}')
  assert agree >= 0.999 and kl < 1e-5


def test_matches_pydensecrf_on_camvid(monkeypatch):
  monkeypatch.setattr(crf, '_MIN_BUCKETED', 0)  # The prefix buckets of large images, too.
  image, mask = _camvid()
  probs = _noisy_probs(mask)
  ref, ours = _reference(probs, image), _ours(probs, image)[0]
  agree, kl = _agreement(ref, ours)
  print(f'CamVid 72x96 crop: argmax agreement {agree:.5f}, mean KL {kl:.2e}, '
        f'max |dQ| {np.abs(ref - ours).max():.2e}')
  assert agree >= 0.99
  assert kl < 1e-4


def test_no_iterations_or_no_weight_is_the_softmax_of_the_unary():
  probs, image, _ = _synthetic(24, 32)
  unary = -np.log(np.clip(probs, 1e-5, 1.0))
  expected = np.exp(-unary) / np.exp(-unary).sum(-1, keepdims=True)
  for params in (crf.CrfParams(iterations=0),
                 crf.CrfParams(iterations=4, gaussian_compat=0.0, bilateral_compat=0.0)):
    q = np.asarray(crf.mean_field(jnp.asarray(unary[None]), jnp.asarray(image[None]), None,
                                  params))[0]
    np.testing.assert_allclose(q, expected, rtol=1e-5, atol=1e-7)


def test_padded_canvas_and_batch_give_each_cropped_result():
  probs, image, _ = _synthetic(40, 56, seed=3)
  small_p, small_i, _ = _synthetic(24, 36, seed=4)
  canvas_p = np.full((2, 48, 64, 5), 0.2, np.float32)
  canvas_i = np.random.default_rng(5).integers(0, 256, (2, 48, 64, 3)).astype(np.uint8)
  canvas_p[0, :40, :56], canvas_i[0, :40, :56] = probs, image
  canvas_p[1, :24, :36], canvas_i[1, :24, :36] = small_p, small_i
  canvas_p[0, 45, 60] = np.nan  # Outside the image: must not matter.
  sizes = jnp.array([[40, 56], [24, 36]], jnp.int32)
  q = _ours(canvas_p, canvas_i, sizes)
  cropped = _ours(probs, image)[0]
  np.testing.assert_allclose(q[0, :40, :56], cropped, atol=5e-5)  # Float summation order only.
  assert np.array_equal(q[0, :40, :56].argmax(-1), cropped.argmax(-1))
  np.testing.assert_allclose(q[0, :40, :56], _reference(probs, image), atol=1e-3)
  np.testing.assert_allclose(q[1, :24, :36], _reference(small_p, small_i), atol=1e-3)
  assert np.all(q[0, 40:] == 0) and np.all(q[0, :, 56:] == 0)
  assert np.all(q[1, 24:] == 0) and np.all(q[1, :, 36:] == 0)


def test_crf_raises_accuracy_of_a_noisy_unary_on_camvid():
  image, mask = _camvid(offset=(120, 160))
  probs = _noisy_probs(mask, seed=2, noise=2.0)
  labelled = mask < CLASSES
  before = np.mean((probs.argmax(-1) == mask)[labelled])
  after = np.mean((_ours(probs, image)[0].argmax(-1) == mask)[labelled])
  print(f'CamVid 72x96 noisy unary: pixel accuracy {before:.4f} -> {after:.4f}')
  assert after > before + 0.1


def test_from_config_reads_and_validates():
  config = ml_collections.ConfigDict({'crf': dict(
      iterations=10, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=20.0,
      bilateral_srgb=3.0, bilateral_compat=5.0)})
  assert crf.CrfParams.from_config(config) == crf.CrfParams()
  config.crf.bilateral_srgb = 13.0
  assert crf.CrfParams.from_config(config).bilateral_srgb == 13.0
  for field, value in (('iterations', -1), ('gaussian_sxy', 0.0),
                       ('bilateral_compat', -5.0), ('bilateral_sxy', float('nan'))):
    bad = ml_collections.ConfigDict(config.to_dict())
    bad.crf[field] = value
    with pytest.raises(ValueError, match=f'config.crf.{field}'):
      crf.CrfParams.from_config(bad)


def test_bad_shapes_name_the_argument():
  probs, image, _ = _synthetic(8, 8)
  with pytest.raises(ValueError, match='images must be uint8'):
    crf.dense_crf(jnp.asarray(probs[None]), jnp.asarray(image[None], jnp.float32), None, PARAMS)
  with pytest.raises(ValueError, match='sizes must be'):
    crf.dense_crf(jnp.asarray(probs[None]), jnp.asarray(image[None]), jnp.zeros((2, 2), jnp.int32),
                  PARAMS)
