"""eval.mode='multiscale' against a NumPy + cv2 transcription of hszhao/semseg tool/test.py.

The reference below re-implements test.py's `test`, `scale_process` and `net_process` one image
at a time at its own size (cv2 INTER_LINEAR resizes, centred mean padding, windows with the last
one aligned to the edge, softmax averaged over flips and windows, probabilities resized back and
averaged over scales), in float64, with a tiny model written in NumPy. jaxseg runs the same model
in Flax on a padded batch of differently sized images in one static-shape program.
"""
import cv2
import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config_loading, inference

MEAN = 255.0 * np.array([0.485, 0.456, 0.406])  # RGB, semseg's test.py (and 'imagenet').
STD = 255.0 * np.array([0.229, 0.224, 0.225])
CROP, STRIDE = (33, 33), (22, 22)  # stride = ceil(33 * 2/3), test.py's stride_rate.
CLASSES = 5
SIZES = [(37, 53), (60, 41), (80, 70), (45, 45)]  # Landscape, portrait, > crop, square.
CANVAS = (80, 72)


class TinyNet(nn.Module):
  """tanh(3x3 conv) -> 1x1 scores + a learned per-position term: windows and flips matter."""
  crop: tuple[int, int] = CROP

  @nn.compact
  def __call__(self, x, train=False):
    h = jnp.tanh(nn.Conv(6, (3, 3), padding='SAME')(x))
    pos = self.param('pos', nn.initializers.normal(1.0), (*self.crop, CLASSES))
    return nn.Dense(CLASSES)(h) + pos


def numpy_net(params, x):
  """TinyNet on one (h, w, 3) float64 window, transcribed."""
  conv, dense = params['Conv_0'], params['Dense_0']
  kernel, rows, cols = np.asarray(conv['kernel'], np.float64), x.shape[0], x.shape[1]
  padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
  h = np.asarray(conv['bias'], np.float64) + sum(
      padded[dy:dy + rows, dx:dx + cols] @ kernel[dy, dx] for dy in range(3) for dx in range(3))
  return (np.tanh(h) @ np.asarray(dense['kernel'], np.float64) + np.asarray(dense['bias'])
          + np.asarray(params['pos'], np.float64))


def softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ref_net_process(params, window, flip):
  x = (window - MEAN) / STD
  probs = softmax(numpy_net(params, x))
  if flip:
    probs = (probs + softmax(numpy_net(params, x[:, ::-1]))[:, ::-1]) / 2
  return probs


def ref_scale_process(params, image, h, w, flip):
  ori_h, ori_w = image.shape[:2]
  crop_h, crop_w = CROP
  pad_h, pad_w = max(crop_h - ori_h, 0), max(crop_w - ori_w, 0)
  top, left = int(pad_h / 2), int(pad_w / 2)
  if pad_h or pad_w:
    image = cv2.copyMakeBorder(image, top, pad_h - top, left, pad_w - left,
                               cv2.BORDER_CONSTANT, value=MEAN.tolist())
  new_h, new_w = image.shape[:2]
  stride_h, stride_w = int(np.ceil(crop_h * 2 / 3)), int(np.ceil(crop_w * 2 / 3))
  assert (stride_h, stride_w) == STRIDE
  total = np.zeros((new_h, new_w, CLASSES))
  count = np.zeros((new_h, new_w))
  for iy in range(int(np.ceil((new_h - crop_h) / stride_h)) + 1):
    for ix in range(int(np.ceil((new_w - crop_w) / stride_w)) + 1):
      e_y, e_x = min(iy * stride_h + crop_h, new_h), min(ix * stride_w + crop_w, new_w)
      s_y, s_x = e_y - crop_h, e_x - crop_w
      total[s_y:e_y, s_x:e_x] += ref_net_process(params, image[s_y:e_y, s_x:e_x], flip)
      count[s_y:e_y, s_x:e_x] += 1
  total /= count[:, :, None]
  total = total[top:top + ori_h, left:left + ori_w]
  return cv2.resize(total, (w, h), interpolation=cv2.INTER_LINEAR)


def ref_test(params, image, scales, base_size, flip):
  """test.py's per-image loop: probabilities (h, w, C) before the argmax."""
  h, w = image.shape[:2]
  prediction = np.zeros((h, w, CLASSES))
  for scale in scales:
    long_size = round(scale * (base_size or max(h, w)))
    new_h = new_w = long_size
    if h > w:
      new_w = round(long_size / float(h) * w)
    else:
      new_h = round(long_size / float(w) * h)
    scaled = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    prediction += ref_scale_process(params, scaled, h, w, flip)
  return prediction / len(scales)


def make_data(seed=0):
  """Smooth uint8 images of SIZES, and the normalised canvas batch with garbage past each."""
  rng = np.random.default_rng(seed)
  images = []
  for h, w in SIZES:
    coarse = rng.uniform(0, 255, (h // 4 + 2, w // 4 + 2, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 12, (h, w, 3))
    images.append(np.clip(np.round(smooth + noise), 0, 255).astype(np.uint8))
  # Past each image: values far from the mean, which multiscale must never read.
  canvas = rng.normal(0, 5, (len(SIZES), *CANVAS, 3)).astype(np.float32)
  for i, image in enumerate(images):
    h, w = image.shape[:2]
    canvas[i, :h, :w] = (image.astype(np.float32) - MEAN) / STD
  sizes = np.array(SIZES, np.int32)
  return images, canvas, sizes


@pytest.fixture(scope='module')
def net():
  model = TinyNet()
  variables = model.init(jax.random.key(0), jnp.zeros((1, *CROP, 3)))
  return model, variables


def check_close(got, images, want_fn, tol=2e-5):
  for i, image in enumerate(images):
    h, w = image.shape[:2]
    want = want_fn(image.astype(np.float64))
    err = np.abs(got[i, :h, :w] - want).max()
    assert err < tol, f'image {i} {h}x{w}: max abs error {err:.2e}'
    assert np.all(got[i, h:] == 0) and np.all(got[i, :, w:] == 0)
    top2 = np.sort(want, -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4
    np.testing.assert_array_equal(got[i, :h, :w].argmax(-1)[clear], want.argmax(-1)[clear])
    assert clear.mean() > 0.99


@pytest.mark.parametrize('flip,base_size', [(True, 64), (False, 64), (True, 0)])
def test_multiscale_matches_semseg_test_py(net, flip, base_size):
  model, variables = net
  scales = (0.5, 1.0, 1.75)  # Base 64: 32 < crop (padded on both sides) ... 112 (5 x 5 windows).
  images, canvas, sizes = make_data()
  infer = inference.inference_fn(inference.model_apply_fn(model, variables), 'multiscale', CROP,
                                 STRIDE, scales, flip, base_size)
  got = np.asarray(jax.jit(infer)(canvas, sizes))
  assert got.shape == (len(SIZES), *CANVAS, CLASSES)
  check_close(got, images,
              lambda im: ref_test(variables['params'], im, scales, base_size, flip))


def test_evaluate_multiscale_on_8_devices(net):
  if jax.device_count() < 8:
    pytest.skip('needs 8 (simulated) devices')
  model, variables = net
  config = config_loading.load_config(config_loading.experiments_dir() / 'default.py')
  config.data.dataset = 'synthetic_shapes'
  config.data.num_classes = CLASSES
  config.eval.mode = 'multiscale'
  config.eval.crop_size, config.eval.stride = CROP, STRIDE
  config.eval.scales, config.eval.flip, config.eval.base_size = (0.75, 1.25), True, 48
  images, canvas, sizes = make_data(seed=1)
  rng = np.random.default_rng(2)
  labels = np.full((8, *CANVAS), 255, np.int32)
  want = np.zeros((CLASSES, CLASSES), np.int64)
  for i, image in enumerate(images):
    h, w = image.shape[:2]
    labels[i, :h, :w] = rng.integers(0, CLASSES, (h, w))
    pred = ref_test(variables['params'], image.astype(np.float64), (0.75, 1.25), 48,
                    True).argmax(-1)
    np.add.at(want, (labels[i, :h, :w], pred), 1)
  count = len(images)
  pad = 8 - count  # Filler examples: valid False, size 0.
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  shard = NamedSharding(mesh, P('data'))
  batch = {'image': np.concatenate([canvas, np.zeros((pad, *CANVAS, 3), np.float32)]),
           'label': labels, 'valid': np.arange(8) < count,
           'height': np.concatenate([sizes[:, 0], np.zeros(pad, np.int32)]),
           'width': np.concatenate([sizes[:, 1], np.zeros(pad, np.int32)])}
  batch = {k: jax.device_put(v, shard) for k, v in batch.items()}
  batch['id'] = np.array([f'im{i}'.encode() for i in range(8)])
  results = inference.evaluate(config, model, variables, mesh, 'val', batches=[batch])
  np.testing.assert_array_equal(results['confusion_matrix'], want)
  assert results['num_images'] == count


def test_predictor_multiscale_matches_semseg(net):
  model, variables = net
  config = config_loading.load_config(config_loading.experiments_dir() / 'default.py')
  config.data.num_classes = CLASSES
  config.eval.mode = 'multiscale'
  config.eval.crop_size, config.eval.stride = CROP, STRIDE
  config.eval.scales, config.eval.flip, config.eval.base_size = (1.0, 1.5), True, 40
  predictor = inference.Predictor(config, model, variables, bucket=64)
  images, _, _ = make_data(seed=3)
  for image in images[:2]:
    want = ref_test(variables['params'], image.astype(np.float64), (1.0, 1.5), 40, True)
    top2 = np.sort(want, -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4
    got = predictor(image)
    assert got.shape == image.shape[:2] and clear.mean() > 0.99
    np.testing.assert_array_equal(got[clear], want.argmax(-1)[clear])
