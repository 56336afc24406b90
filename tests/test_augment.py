"""Joint image/mask augmentation ops, eagerly and inside tf.data, against NumPy/SciPy/PyTorch."""
import functools

import matplotlib.colors
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf
import torch
import torch.nn.functional as F

from jaxseg.data import augment

MODES = ('eager', 'tf.data')


def run(fn, *args, mode):
  """fn(*args) eagerly, or as the map function of a one-element tf.data pipeline; numpy out."""
  args = tuple(tf.convert_to_tensor(a) for a in args)
  if mode == 'eager':
    out = fn(*args)
  else:
    out = next(iter(tf.data.Dataset.from_tensors(args).map(fn)))
  return tf.nest.map_structure(lambda t: t.numpy(), out)


def coord_example(h, w):
  """Image whose pixel (y, x) holds (y, x, 1) and label y * w + x: any misplacement shows."""
  yy, xx = np.mgrid[:h, :w]
  image = np.stack([yy, xx, np.ones_like(yy)], -1).astype(np.float32)
  return image, (yy * w + xx).astype(np.int32)


def seed(i):
  return tf.constant([7, i], tf.int64)


@pytest.mark.parametrize('mode', MODES)
def test_resize_matches_torch(mode):
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 255, (9, 13, 3)).astype(np.float32)
  label = rng.integers(0, 5, (9, 13)).astype(np.int32)
  for size in [(20, 7), (4, 30)]:
    out_image, out_label = run(functools.partial(augment.resize, size=size), image, label,
                               mode=mode)
    ref_image = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=size,
                              mode='bilinear', align_corners=False)[0].permute(1, 2, 0).numpy()
    ref_label = F.interpolate(torch.from_numpy(label)[None, None].float(), size=size,
                              mode='nearest-exact')[0, 0].numpy().astype(np.int32)
    np.testing.assert_allclose(out_image, ref_image, atol=1e-3)
    np.testing.assert_array_equal(out_label, ref_label)
    assert out_label.dtype == np.int32


@pytest.mark.parametrize('mode', MODES)
def test_random_scale_range_and_alignment(mode):
  image, label = coord_example(10, 20)
  sizes = set()
  for i in range(12):
    fn = functools.partial(augment.random_scale, seed=seed(i), scale_range=(0.5, 2.0))
    out_image, out_label = run(fn, image, label, mode=mode)
    h, w = out_label.shape
    assert 5 <= h <= 20 and 10 <= w <= 40 and abs(h / 10 - w / 20) < 0.1
    sizes.add(h)
    # The label's nearest source pixel is within the bilinear support of the image sample.
    src_y, src_x = np.divmod(out_label, 20)
    assert np.all(np.abs(out_image[..., 0] - src_y) < 1)
    assert np.all(np.abs(out_image[..., 1] - src_x) < 1)
  assert len(sizes) > 3
  fixed = functools.partial(augment.random_scale, seed=seed(0), scale_range=(1.5, 1.5))
  assert run(fixed, image, label, mode=mode)[1].shape == (15, 30)


@pytest.mark.parametrize('mode', MODES)
def test_rotate_quarter_turns_are_exact(mode):
  image, label = coord_example(6, 6)
  out_image, out_label = run(functools.partial(augment.rotate, degrees=90.), image, label,
                             mode=mode)
  np.testing.assert_allclose(out_image, np.rot90(image), atol=1e-4)
  np.testing.assert_array_equal(out_label, np.rot90(label))
  out_image, out_label = run(functools.partial(augment.rotate, degrees=180.), image, label,
                             mode=mode)
  np.testing.assert_array_equal(out_label, label[::-1, ::-1])
  out_image, out_label = run(functools.partial(augment.rotate, degrees=0.), image, label, mode=mode)
  np.testing.assert_allclose(out_image, image, atol=1e-4)
  np.testing.assert_array_equal(out_label, label)


@pytest.mark.parametrize('mode', MODES)
def test_rotate_matches_scipy_and_fills(mode):
  rng = np.random.default_rng(1)
  label = np.kron(rng.integers(0, 6, (5, 7)), np.ones((6, 6), np.int64)).astype(np.int32)
  image = np.repeat(label[..., None] * 10., 3, -1).astype(np.float32) + 5.
  fn = functools.partial(augment.rotate, degrees=25., image_fill=-1., ignore_label=255)
  out_image, out_label = run(fn, image, label, mode=mode)
  # 'grid-constant': samples outside the image read the fill value, as TF's CONSTANT fill mode.
  ref_label = scipy.ndimage.rotate(label, 25., reshape=False, order=0, mode='grid-constant',
                                   cval=255)
  ref_image = scipy.ndimage.rotate(image[..., 0], 25., reshape=False, order=1,
                                   mode='grid-constant', cval=-1.)
  np.testing.assert_array_equal(out_label, ref_label)
  np.testing.assert_allclose(out_image[..., 0], ref_image, atol=1e-3)
  assert out_label[0, 0] == 255 and out_image[0, 0, 0] == -1.  # A corner that rotated in.
  # Alignment: inside regions (3x3 neighbourhood of one class) the image shows that class's colour.
  uniform = scipy.ndimage.maximum_filter(out_label, 3) == scipy.ndimage.minimum_filter(out_label, 3)
  inner = uniform & (out_label != 255)
  assert inner.sum() > 300
  np.testing.assert_allclose(out_image[..., 0][inner], out_label[inner] * 10. + 5., atol=1e-3)


@pytest.mark.parametrize('mode', MODES)
def test_random_rotate_stays_in_range(mode):
  image, label = coord_example(9, 9)
  angles = []
  for i in range(8):
    fn = functools.partial(augment.random_rotate, seed=seed(i), max_degrees=10.)
    out_image, out_label = run(fn, image, label, mode=mode)
    assert out_label[4, 4] == 40  # The centre stays; corners move with the angle.
    angles.append(out_label[0, 8])
  assert len(set(angles)) > 1


@pytest.mark.parametrize('mode', MODES)
def test_pad_to_size(mode):
  image, label = coord_example(3, 5)
  fn = functools.partial(augment.pad_to_size, size=(6, 4), image_fill=-2., ignore_label=255)
  out_image, out_label = run(fn, image, label, mode=mode)
  assert out_label.shape == (6, 5) and out_image.shape == (6, 5, 3)
  np.testing.assert_array_equal(out_label[:3], label)
  np.testing.assert_array_equal(out_image[:3], image)
  assert np.all(out_label[3:] == 255) and np.all(out_image[3:] == -2.)


@pytest.mark.parametrize('mode', MODES)
def test_random_crop_alignment_and_padding(mode):
  image, label = coord_example(12, 10)
  offsets = set()
  for i in range(10):
    fn = functools.partial(augment.random_crop, seed=seed(i), size=(5, 7))
    out_image, out_label = run(fn, image, label, mode=mode)
    assert out_image.shape == (5, 7, 3) and out_label.shape == (5, 7)
    top, left = int(out_image[0, 0, 0]), int(out_image[0, 0, 1])
    offsets.add((top, left))
    np.testing.assert_array_equal(out_label, label[top:top + 5, left:left + 7])
    np.testing.assert_array_equal(out_image, image[top:top + 5, left:left + 7])
  assert len(offsets) > 3
  # Smaller than the crop: padded bottom/right with the fill values, then cropped.
  fn = functools.partial(augment.random_crop, seed=seed(0), size=(16, 16), image_fill=0.,
                         ignore_label=255)
  out_image, out_label = run(fn, image, label, mode=mode)
  np.testing.assert_array_equal(out_label[:12, :10], label)
  assert np.all(out_label[12:] == 255) and np.all(out_label[:, 10:] == 255)
  assert np.all(out_image[12:] == 0) and np.all(out_image[:, 10:] == 0)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('hw', [(30, 22), (9, 12)])
def test_fused_rotate_crop_equals_rotate_then_crop(mode, hw):
  rng = np.random.default_rng(6)
  image = rng.uniform(-100, 100, hw + (3,)).astype(np.float32)
  label = rng.integers(0, 6, hw).astype(np.int32)
  for i in range(4):
    def sequential(image, label):
      image, label = augment.random_rotate(image, label, seed(i), 15., -7., 255)
      return augment.random_crop(image, label, seed(100 + i), (16, 16), -7., 255)

    fused = functools.partial(augment.random_rotate_crop, rotate_seed=seed(i),
                              crop_seed=seed(100 + i), max_degrees=15., size=(16, 16),
                              image_fill=-7., ignore_label=255)
    ref_image, ref_label = run(sequential, image, label, mode=mode)
    out_image, out_label = run(fused, image, label, mode=mode)
    assert out_image.shape == (16, 16, 3) and out_label.shape == (16, 16)
    np.testing.assert_allclose(out_image, ref_image, atol=1e-3)
    assert np.mean(out_label == ref_label) > 0.99  # Float rounding may flip a nearest-pixel tie.


@pytest.mark.parametrize('mode', MODES)
def test_random_hflip_is_joint(mode):
  image, label = coord_example(4, 6)
  flipped = 0
  for i in range(12):
    out_image, out_label = run(functools.partial(augment.random_hflip, seed=seed(i)), image, label,
                               mode=mode)
    if np.array_equal(out_label, label[:, ::-1]):
      np.testing.assert_array_equal(out_image, image[:, ::-1])
      flipped += 1
    else:
      np.testing.assert_array_equal(out_label, label)
      np.testing.assert_array_equal(out_image, image)
  assert 0 < flipped < 12


@pytest.mark.parametrize('mode', MODES)
def test_gaussian_blur_matches_opencv_definition(mode):
  rng = np.random.default_rng(2)
  image = rng.uniform(0, 255, (11, 8, 3)).astype(np.float32)
  out = run(augment.gaussian_blur, image, mode=mode)
  k = np.array([1, 4, 6, 4, 1]) / 16  # cv2.getGaussianKernel(5, 0): OpenCV's fixed table.
  ref = scipy.ndimage.convolve1d(image, k, axis=0, mode='mirror')  # mirror == reflect-101.
  ref = scipy.ndimage.convolve1d(ref, k, axis=1, mode='mirror')
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-3)
  cv2 = pytest.importorskip('cv2')
  np.testing.assert_allclose(out, cv2.GaussianBlur(image, (5, 5), 0), rtol=1e-5, atol=1e-3)
  blurred = [not np.allclose(run(functools.partial(augment.random_gaussian_blur, seed=seed(i),
                                                   prob=0.5), image, mode=mode), image)
             for i in range(12)]
  assert 0 < sum(blurred) < 12


@pytest.mark.parametrize('mode', MODES)
def test_photometric_ops_match_numpy(mode):
  rng = np.random.default_rng(3)
  image = rng.uniform(0, 255, (5, 6, 3)).astype(np.float32)
  np.testing.assert_allclose(
      run(functools.partial(augment.adjust_brightness, delta=40.), image, mode=mode),
      np.clip(image + 40., 0, 255), atol=1e-4)
  np.testing.assert_allclose(
      run(functools.partial(augment.adjust_contrast, factor=1.3), image, mode=mode),
      np.clip(image * 1.3, 0, 255), atol=1e-3)
  hsv = matplotlib.colors.rgb_to_hsv(image / 255.)
  sat = hsv.copy()
  sat[..., 1] = np.clip(sat[..., 1] * 0.6, 0, 1)
  np.testing.assert_allclose(
      run(functools.partial(augment.adjust_saturation, factor=0.6), image, mode=mode),
      matplotlib.colors.hsv_to_rgb(sat) * 255., atol=0.05)
  hue = hsv.copy()
  hue[..., 0] = (hue[..., 0] + 0.08) % 1.
  np.testing.assert_allclose(
      run(functools.partial(augment.adjust_hue, delta=0.08), image, mode=mode),
      matplotlib.colors.hsv_to_rgb(hue) * 255., atol=0.05)


@pytest.mark.parametrize('mode', MODES)
def test_random_photometric_is_seeded(mode):
  rng = np.random.default_rng(4)
  image = rng.uniform(0, 255, (6, 6, 3)).astype(np.float32)
  outs = [run(functools.partial(augment.random_photometric, seed=seed(i)), image, mode=mode)
          for i in range(6)]
  again = run(functools.partial(augment.random_photometric, seed=seed(0)), image, mode=mode)
  np.testing.assert_array_equal(outs[0], again)
  assert all(o.min() >= 0 and o.max() <= 255 and o.shape == image.shape for o in outs)
  assert len({o.tobytes() for o in outs}) == 6


def test_eager_and_tf_data_agree():
  rng = np.random.default_rng(5)
  image = rng.uniform(0, 255, (14, 11, 3)).astype(np.float32)
  label = rng.integers(0, 4, (14, 11)).astype(np.int32)

  def chain(image, label):
    s = augment.split_seed(seed(3), 4)
    image, label = augment.random_scale(image, label, s[0], (0.5, 1.5))
    image, label = augment.random_rotate(image, label, s[1], 10.)
    image, label = augment.random_crop(image, label, s[2], (8, 8))
    return augment.random_hflip(image, label, s[3])

  eager = run(chain, image, label, mode='eager')
  in_data = run(chain, image, label, mode='tf.data')
  np.testing.assert_allclose(eager[0], in_data[0], atol=1e-4)
  np.testing.assert_array_equal(eager[1], in_data[1])
