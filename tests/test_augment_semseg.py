"""config.data.augmentation='semseg' against hszhao/semseg util/transform.py, transcribed with cv2.

The references below follow semseg's RandScale, RandRotate, RandomGaussianBlur,
RandomHorizontalFlip and Crop(crop_type='rand') line by line (tool/train.py's train_transform),
with their random draws replaced by the values our stateless seeds give.
"""
import functools
import pathlib

import cv2
import numpy as np
import pytest
import tensorflow as tf

from jaxseg.config_loading import load_config
from jaxseg.data import augment, pipeline
from test_augment import MODES, run  # noqa: E402  pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parents[1]
MEAN = pipeline.mean_pixel('imagenet')


def random_pair(h, w, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.uniform(0, 255, (h, w, 3)).astype(np.float32),
          rng.integers(0, 21, (h, w)).astype(np.int32))


def smooth_image(h, w):
  yy, xx = np.mgrid[:h, :w].astype(np.float32)
  return np.stack([100 * np.sin(xx / 7) + 120, 80 * np.cos(yy / 5) + 100, 2 * (xx + yy)],
                  -1).astype(np.float32)


# ------------------------------------------------------- semseg's ops, transcribed (NumPy + cv2)
def semseg_scale(image, label, factor):
  image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
  label = cv2.resize(label, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
  return image, label


def semseg_rotate(image, label, angle, padding, ignore=255):
  h, w = label.shape
  matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
  image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=padding)
  label = cv2.warpAffine(label, matrix, (w, h), flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=ignore)
  return image, label


def semseg_crop(image, label, crop_h, crop_w, h_off, w_off, padding, ignore=255):
  """Crop.__call__ with crop_type='rand', h_off/w_off standing for its two randint draws."""
  h, w = label.shape
  pad_h, pad_w = max(crop_h - h, 0), max(crop_w - w, 0)
  pad_h_half, pad_w_half = int(pad_h / 2), int(pad_w / 2)
  if pad_h > 0 or pad_w > 0:
    image = cv2.copyMakeBorder(image, pad_h_half, pad_h - pad_h_half, pad_w_half,
                               pad_w - pad_w_half, cv2.BORDER_CONSTANT, value=padding)
    label = cv2.copyMakeBorder(label, pad_h_half, pad_h - pad_h_half, pad_w_half,
                               pad_w - pad_w_half, cv2.BORDER_CONSTANT, value=ignore)
  h, w = label.shape
  assert 0 <= h_off <= h - crop_h and 0 <= w_off <= w - crop_w  # randint's inclusive range.
  return (image[h_off:h_off + crop_h, w_off:w_off + crop_w],
          label[h_off:h_off + crop_h, w_off:w_off + crop_w])


def semseg_train_transform(image, label, draws, crop, padding, ignore=255):
  """train_transform's geometric/blur part, in its order, for the given random draws."""
  image, label = semseg_scale(image, label, draws['scale'])
  if draws['rotate']:
    image, label = semseg_rotate(image, label, draws['angle'], padding, ignore)
  if draws['blur']:
    image = cv2.GaussianBlur(image, (5, 5), 0)
  if draws['flip']:
    image, label = cv2.flip(image, 1), cv2.flip(label, 1)
  return semseg_crop(image, label, crop[0], crop[1], draws['top'], draws['left'], padding,
                     ignore)


# ------------------------------------------------------------------------------------ (1) crop
@pytest.mark.parametrize('mode', MODES)
def test_centred_pad_and_crop_match_semseg_crop(mode):
  pad = list(MEAN)
  for (h, w), crop in [((9, 14), (16, 11)), ((20, 7), (12, 12)), ((5, 6), (10, 13)),
                       ((15, 15), (15, 15))]:
    image, label = random_pair(h, w, seed=h)
    ph, pw = max(crop[0], h), max(crop[1], w)
    for top, left in [(0, 0), (ph - crop[0], pw - crop[1]), ((ph - crop[0]) // 2, 0)]:
      def fn(image, label, top=top, left=left, crop=crop):
        image, label = augment.pad_centered(image - MEAN, label, crop, 0., 255)
        image, label = augment.crop(image, label, top, left, crop)
        return image + MEAN, label
      out_image, out_label = run(fn, image, label, mode=mode)
      ref_image, ref_label = semseg_crop(image, label.astype(np.uint8), *crop, top, left, pad)
      np.testing.assert_allclose(out_image, ref_image, rtol=0, atol=2e-5)
      np.testing.assert_array_equal(out_label, ref_label)


def test_random_crop_offsets_cover_semseg_randint_range():
  """Seeded offsets take every value of randint(0, padded - crop), endpoints included."""
  h, w, crop = 7, 12, (9, 9)  # Height padded 1 + 1; width cropped: offsets 0..3.
  yy, xx = np.mgrid[:h, :w]
  image = np.stack([yy, xx, np.ones_like(yy)], -1).astype(np.float32)  # Pixel knows (y, x).
  label = (yy * w + xx).astype(np.int32)
  lefts = set()
  for i in range(40):
    out_image, out_label = run(functools.partial(augment.random_crop_centered_pad,
                                                 seed=tf.constant([3, i], tf.int64), size=crop),
                               image, label, mode='eager')
    left = int(out_image[1, 0, 1])
    lefts.add(left)
    ref_image, ref_label = semseg_crop(image, label, *crop, 0, left, [0., 0., 0.], 255)
    np.testing.assert_array_equal(out_image, ref_image)
    np.testing.assert_array_equal(out_label, ref_label)
    assert (out_label[0] == 255).all() and (out_label[-1] == 255).all()  # Centred padding.
  assert lefts == {0, 1, 2, 3}


# ---------------------------------------------------------------------------------- (2) rotate
@pytest.mark.parametrize('mode', MODES)
def test_rotation_matches_cv2_warp_affine(mode):
  h, w, margin = 41, 57, 4
  _, label = random_pair(h, w, seed=1)  # Per-pixel random labels: any misplaced sample shows.
  worst_image, worst_label = 0., 1.
  for image in (smooth_image(h, w), random_pair(h, w, seed=2)[0]):
    for angle in (7.3, -9.1, 10.0, -0.4):
      out_image, out_label = run(functools.partial(augment.rotate_cv2, degrees=angle,
                                                   image_fill=5., ignore_label=255),
                                 image, label, mode=mode)
      ref_image, ref_label = semseg_rotate(image, label.astype(np.uint8), angle, [5., 5., 5.])
      inner = (slice(margin, -margin), slice(margin, -margin))
      worst_image = max(worst_image, np.abs(out_image - ref_image)[inner].max())
      worst_label = min(worst_label, (out_label[inner] == ref_label[inner]).mean())
      assert (out_label == ref_label).mean() >= 0.99
  assert worst_image < 0.05, worst_image  # Measured 1.4e-3 (OpenCV 5.1); pixels 0-255.
  assert worst_label >= 0.99, worst_label  # Measured 1.0 (per-pixel random labels).
  # The centre matters: jaxseg's own rotation about ((w - 1) / 2, (h - 1) / 2) is half a pixel off.
  off_image, _ = run(functools.partial(augment.rotate, degrees=7.3), smooth_image(h, w), label,
                     mode=mode)
  ref_image, _ = semseg_rotate(smooth_image(h, w), label.astype(np.uint8), 7.3, [0., 0., 0.])
  assert np.abs(off_image - ref_image)[margin:-margin, margin:-margin].max() > 0.5


# ---------------------------------------------------------------- scale and blur against cv2
@pytest.mark.parametrize('mode', MODES)
def test_rescale_matches_cv2_resize(mode):
  image, label = random_pair(37, 53, seed=3)
  for factor in (0.5, 0.73, 1.37, 1.999):
    factor = float(np.float32(factor))
    out_image, out_label = run(functools.partial(augment.rescale_cv2, factor=factor), image,
                               label, mode=mode)
    ref_image, ref_label = semseg_scale(image, label.astype(np.uint8), factor)
    assert out_image.shape == ref_image.shape
    np.testing.assert_allclose(out_image, ref_image, rtol=0, atol=2e-3)  # Measured 5.5e-4.
    np.testing.assert_array_equal(out_label, ref_label)


@pytest.mark.parametrize('mode', MODES)
def test_blur_matches_cv2_and_commutes_with_centring(mode):
  image, _ = random_pair(11, 9, seed=4)
  kernel = augment.gaussian_kernel(5)
  np.testing.assert_array_equal(kernel.numpy(), cv2.getGaussianKernel(5, 0).ravel())
  blur = augment.gaussian_blur
  out = run(blur, image, mode=mode)
  np.testing.assert_allclose(out, cv2.GaussianBlur(image, (5, 5), 0), rtol=0, atol=1e-4)
  # Blurring the mean-centred image (what the pipeline does) = blurring, then centring.
  centred = run(blur, image - np.float32(MEAN), mode=mode)
  np.testing.assert_allclose(centred, out - np.float32(MEAN), rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------- (3) order
def semseg_config(**data):
  config = load_config(ROOT / 'experiments' / 'default.py')
  config.data.augmentation = 'semseg'
  config.data.crop_size = (36, 36)
  config.data.scale_range = (0.5, 2.0)
  config.data.rotate_degrees = 10.
  config.data.blur_prob = 0.5
  config.data.hflip = True
  for k, v in data.items():
    config.data[k] = v
  return config


def draws_of(seed, shape, transform):
  """The random values TrainAugment('semseg') takes from `seed`, in semseg's terms."""
  seeds = augment.split_seed(seed, 6)
  coin, angle = tf.unstack(augment.split_seed(seeds[3], 2))
  scale = float(augment._uniform(seeds[2], *transform.scale_range))
  scaled = tf.shape(augment.rescale_cv2(tf.zeros(shape + (3,)), tf.zeros(shape, tf.int32),
                                        scale)[1])
  top, left = augment._crop_offsets(scaled, transform.crop_size, seeds[4])
  return {'scale': scale, 'rotate': bool(augment._coin(coin, 0.5)),
          'angle': float(augment._uniform(angle, -transform.rotate_degrees,
                                          transform.rotate_degrees)),
          'blur': bool(augment._coin(seeds[1], transform.blur_prob)),
          'flip': bool(augment._coin(seeds[5], 0.5)), 'top': int(top), 'left': int(left)}


def composed_ops(image, label, seed, t):
  """augment.py's semseg ops one after another in train_transform's order; uint8 pixels."""
  seeds = augment.split_seed(seed, 6)
  image, label = tf.constant(image) - np.float32(MEAN), tf.constant(label)
  image, label = augment.random_rescale_cv2(image, label, seeds[2], t.scale_range)
  image, label = augment.random_rotate_p(image, label, seeds[3], t.rotate_degrees)
  image = augment.random_gaussian_blur(image, seeds[1], t.blur_prob)
  image, label = augment.random_hflip(image, label, seeds[5])
  image, _ = augment.random_crop_centered_pad(image, label, seeds[4], t.crop_size)
  return np.round(np.clip(image.numpy() + np.float32(MEAN), 0, 255)).astype(np.int32)


def test_semseg_order_matches_transcribed_train_transform():
  transform = pipeline.TrainAugment.from_config(semseg_config())
  image, label = random_pair(30, 60, seed=5)
  chosen = {}
  for i in range(128):  # Seeds where every coin fires (or none does), with padding of the height
    seed = tf.constant([11, i], tf.int64)  # and an off-centre crop of the width.
    d = draws_of(seed, (30, 60), transform)
    key = (d['rotate'], d['blur'], d['flip'])
    width = round(60 * d['scale'])
    if (key in ((True, True, True), (False, False, False)) and round(30 * d['scale']) < 36
        and 2 * d['left'] != width - 36 and width > 36):
      chosen.setdefault(key, (seed, d))
  assert len(chosen) == 2
  worst, exact = 0, 1.
  for seed, d in chosen.values():
    out_image, out_label = transform(tf.constant(image), tf.constant(label), seed)
    out_image, out_label = out_image.numpy().astype(np.int32), out_label.numpy()
    ref_image, ref_label = semseg_train_transform(image, label.astype(np.uint8), d, (36, 36),
                                                  list(MEAN))
    ref_image = np.round(np.clip(ref_image, 0, 255)).astype(np.int32)
    worst = max(worst, np.abs(out_image - ref_image).max())
    exact = min(exact, (out_image == ref_image).mean())
    np.testing.assert_array_equal(out_label, ref_label)
    np.testing.assert_array_equal(out_image, composed_ops(image, label, seed, transform))
  assert worst <= 1 and exact > 0.99, (worst, exact)  # x.5 rounding only; measured 0, 1.0.
  # The check sees order: blurring before rotating (or flipping after cropping) differs.
  seed, d = chosen[(True, True, True)]
  ref_image, _ = semseg_train_transform(image, label.astype(np.uint8), d, (36, 36), list(MEAN))
  swapped = dict(d, blur=False)
  other, _ = semseg_train_transform(cv2.GaussianBlur(image, (5, 5), 0),
                                    label.astype(np.uint8), swapped, (36, 36), list(MEAN))
  assert np.abs(other - ref_image).max() > 5
  unflipped = dict(d, flip=False)
  late_flip, _ = semseg_train_transform(image, label.astype(np.uint8), unflipped, (36, 36),
                                        list(MEAN))
  assert np.abs(late_flip[:, ::-1] - ref_image).max() > 5


# --------------------------------------------------------------------------- (4) probabilities
def test_rotate_blur_flip_each_fire_half_the_time():
  n = 400
  image, label = random_pair(8, 8, seed=6)
  image_t, label_t = tf.constant(image), tf.constant(label)

  def fired(i):
    seeds = augment.split_seed(tf.stack([tf.constant(13, tf.int64), i]), 6)
    rotated, _ = augment.random_rotate_p(image_t, label_t, seeds[3], 10.)
    blurred = augment.random_gaussian_blur(image_t, seeds[1], 0.5)
    flipped, _ = augment.random_hflip(image_t, label_t, seeds[5])
    return tf.stack([tf.reduce_any(tf.abs(x - image_t) > 1e-3)
                     for x in (rotated, blurred, flipped)])

  out = np.stack(list(tf.data.Dataset.range(n).map(fired).as_numpy_iterator()))
  counts = out.sum(0)
  # Binomial(400, 1/2): mean 200, sd 10; +-4 sd. Pairs: Binomial(400, 1/4), mean 100, sd 8.7.
  assert np.all((160 <= counts) & (counts <= 240)), counts
  for a, b in ((0, 1), (0, 2), (1, 2)):
    assert 65 <= int((out[:, a] & out[:, b]).sum()) <= 135  # Independent coins.


# ------------------------------------------------------------------------- (5) whole transform
def test_train_augment_semseg_in_tf_data_equals_eager():
  transform = pipeline.TrainAugment.from_config(semseg_config(crop_size=(24, 32)))
  assert transform.augmentation == 'semseg'
  image, label = random_pair(20, 30, seed=7)
  seeds = tf.constant([[5, i] for i in range(6)], tf.int64)
  ds = tf.data.Dataset.from_tensor_slices(seeds).map(
      lambda s: transform(tf.constant(image), tf.constant(label), s))
  assert ds.element_spec[0].shape == (24, 32, 3) and ds.element_spec[1].shape == (24, 32)
  assert ds.element_spec[0].dtype == tf.uint8
  for (graph_image, graph_label), s in zip(ds.as_numpy_iterator(), seeds):
    eager_image, eager_label = transform(tf.constant(image), tf.constant(label), s)
    np.testing.assert_array_equal(graph_image, eager_image.numpy())
    np.testing.assert_array_equal(graph_label, eager_label.numpy())


def test_augmentation_default_and_bad_value():
  config = load_config(ROOT / 'experiments' / 'default.py')
  assert pipeline.TrainAugment.from_config(config).augmentation == 'jaxseg'
  config.data.augmentation = 'mmseg'
  with pytest.raises(ValueError, match=r"config.data.augmentation='mmseg'.*'jaxseg', 'semseg'"):
    pipeline.TrainAugment.from_config(config)
