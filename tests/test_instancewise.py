"""DeconvNet's instance-wise inference (jaxseg/inference/instancewise.py).

The reference is an independent NumPy transcription of the original loop
(HyeonwooNoh/DeconvNet inference/generate_EDeconvNet_CRF_results.m + util/preprocess_image_bb.m):
the uint8 image padded by padarray(I, [width, height]) with black, each box cropped in the padded
image's 1-based coordinates, resized with MATLAB's imresize 'bilinear' (transcribed below from
MATLAB's imresize.m: contributions() with symmetric index reflection), BGR minus the mean, the
network, the scores resized back and max-accumulated into a zero canvas.
"""
import cv2
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import numpy as np
import pytest

from jaxseg import train
from jaxseg.config_loading import experiments_dir, load_config
from jaxseg.data import pipeline
from jaxseg.inference import instancewise as iw
from jaxseg.inference.modes import model_apply_fn

CLASSES = 5
# preprocess_image_bb.m subtracts [104.00698793, 116.66876762, 122.67891434]; jaxseg's 'caffe'
# normalisation (the network's input convention here) uses VGG's mean, so the reference does too.
BGR_MEAN = np.asarray(pipeline.CAFFE_BGR_MEAN, np.float64)


# ------------------------------------------------------------------------ NumPy reference (MATLAB)
def _triangle(x):
  return (1 + x) * ((-1 <= x) & (x < 0)) + (1 - x) * ((0 <= x) & (x <= 1))


def _contributions(in_length, out_length):
  """MATLAB imresize.m contributions() for 'bilinear', antialiased: weights, 0-based indices."""
  scale = out_length / in_length
  kernel_width = 2.0
  if scale < 1:
    h = lambda x: scale * _triangle(scale * x)
    kernel_width = kernel_width / scale
  else:
    h = _triangle
  x = np.arange(1, out_length + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1 - 1 / scale)
  left = np.floor(u - kernel_width / 2)
  taps = int(np.ceil(kernel_width)) + 2
  indices = left[:, None] + np.arange(taps)[None, :]
  weights = h(u[:, None] - indices)
  weights = weights / weights.sum(axis=1, keepdims=True)
  aux = np.concatenate([np.arange(1, in_length + 1), np.arange(in_length, 0, -1)])
  indices = aux[np.mod(indices - 1, len(aux)).astype(int)] - 1
  return weights, indices


def matlab_imresize(a, out_hw):
  """imresize(a, out_hw, 'bilinear') of a float (h, w, c) array (smallest scale first, as
  MATLAB does)."""
  a = np.asarray(a, np.float64)
  scales = [out_hw[0] / a.shape[0], out_hw[1] / a.shape[1]]
  for axis in np.argsort(scales, kind='stable'):
    weights, indices = _contributions(a.shape[axis], out_hw[axis])
    taken = np.take(a, indices, axis=axis)  # (.., out, taps, ..)
    shape = [1] * taken.ndim
    shape[axis], shape[axis + 1] = weights.shape
    a = (taken * weights.reshape(shape)).sum(axis=axis + 1)
  return a


def original_loop(image, windows, net, size, aggregate='max'):
  """The script's loop on one uint8 RGB image; windows (y0, x0, y1, x1) end-exclusive in image
  coordinates, converted to the script's 1-based boxes_padded [x1 y1 x2 y2]."""
  height, width = image.shape[:2]
  padded = np.pad(image, ((width, width), (height, height), (0, 0)))  # padarray: zeros.
  total, count = None, np.zeros(padded.shape[:2])
  for y0, x0, y1, x1 in windows:
    box = [x0 + height + 1, y0 + width + 1, x1 + height, y1 + width]  # 1-based, inclusive.
    box_wd, box_ht = box[2] - box[0] + 1, box[3] - box[1] + 1
    crop = padded[box[1] - 1:box[3], box[0] - 1:box[2]].astype(np.float64)
    crop = matlab_imresize(crop, size)
    crop = crop[..., ::-1] - BGR_MEAN  # preprocess_image_bb.m: RGB -> BGR, minus the mean.
    seg = matlab_imresize(net(crop), (box_ht, box_wd))
    if total is None:
      total = np.zeros(padded.shape[:2] + seg.shape[-1:])
    region = (slice(box[1] - 1, box[3]), slice(box[0] - 1, box[2]))
    if aggregate == 'max':
      total[region] = np.maximum(total[region], seg)
    else:
      total[region] += seg
      count[region] += 1
  if aggregate == 'mean':
    total = total / np.maximum(count, 1)[..., None]
  return total[width:width + height, height:height + width]  # Image region (no 1-px shift).


def crop_matrix(start, length, canvas, size, max_length):
  """iw.crop_matrix as float64 NumPy (jitted: one compile instead of one per eager op)."""
  fn = jax.jit(iw.crop_matrix, static_argnums=(2, 3, 4))
  return np.asarray(fn(jnp.asarray(start), jnp.asarray(length), canvas, size, max_length),
                    np.float64)


def paste_matrix(start, length, canvas, size):
  fn = jax.jit(iw.paste_matrix, static_argnums=(2, 3))
  return np.asarray(fn(jnp.asarray(start), jnp.asarray(length), canvas, size), np.float64)


# ---------------------------------------------------------------------------- a fake network
RNG = np.random.default_rng(0)
WEIGHT = RNG.normal(0, 0.02, (3, CLASSES))
BIAS = RNG.normal(0, 0.3, (CLASSES,))
RAMP = RNG.normal(0, 1.0, (2, CLASSES))


def net_numpy(x):
  """tanh of a 1x1 conv plus a position ramp (so misplaced windows show), (h, w, 3) -> (h, w, C)."""
  h, w = x.shape[:2]
  pos = np.stack(np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing='ij'), -1)
  return 3 * np.tanh(x @ WEIGHT + BIAS) + pos @ RAMP


def net_jax(x):
  n, h, w, _ = x.shape
  pos = jnp.stack(jnp.meshgrid(jnp.arange(h) / h, jnp.arange(w) / w, indexing='ij'), -1)
  conv = jnp.einsum('nhwc,ck->nhwk', x, jnp.asarray(WEIGHT, jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)
  return 3 * jnp.tanh(conv + jnp.asarray(BIAS, jnp.float32)) + pos @ jnp.asarray(RAMP, jnp.float32)


def normalize(images):
  return pipeline.normalize(images, 'caffe')


def black():
  return normalize(np.zeros((3,), np.uint8))


def make_batch(images, canvas):
  """uint8 images -> normalised canvas (B, H, W, 3) (garbage past each image) and sizes."""
  out = np.full((len(images),) + canvas + (3,), 77, np.uint8)  # Padding must never be read.
  for i, im in enumerate(images):
    out[i, :im.shape[0], :im.shape[1]] = im
  sizes = np.asarray([im.shape[:2] for im in images], np.int32)
  return normalize(out), jnp.asarray(sizes)


IMAGES = [RNG.integers(0, 256, (46, 62, 3), np.uint8), RNG.integers(0, 256, (60, 40, 3), np.uint8)]
# Windows (y0, x0, y1, x1): inside, crossing each border, larger and smaller than the window size.
WINDOWS = [
    [(5, 7, 40, 50), (-10, -6, 30, 28), (20, 30, 60, 75), (-30, -20, 70, 90), (10, 40, 30, 62)],
    [(0, 0, 60, 40), (-5, 10, 25, 50), (35, -12, 72, 30), (12, 8, 28, 20), (-40, -30, 90, 60)],
]
SIZE = (24, 32)  # Non-square: rows and columns must not be swapped.
CANVAS = (64, 64)


def run(aggregate, windows=WINDOWS, valid=None, batch=3, size=SIZE):
  images, sizes = make_batch(IMAGES, CANVAS)
  windows = jnp.asarray(windows, jnp.int32)
  valid = jnp.ones(windows.shape[:2], bool) if valid is None else jnp.asarray(valid)
  return np.asarray(iw.instancewise(net_jax, images, sizes, windows, valid, size, aggregate, batch,
                                    black()))


# -------------------------------------------------------------------------------------- tests
def test_resize_hand_values_and_cv2():
  # imresize([1 2 3 4], [1 2], 'bilinear'): taps 0.125 0.375 0.375 0.125 about u = 1.5, 3.5, the
  # first and last reflected: [1.625, 3.375] by hand.
  np.testing.assert_allclose(matlab_imresize(np.arange(1., 5.)[None, :, None], (1, 2))[0, :, 0],
                             [1.625, 3.375])
  m = crop_matrix(0, 4, 4, 2, 4)
  np.testing.assert_allclose(m @ np.arange(1., 5.), [1.625, 3.375], atol=1e-6)
  # Enlarging, imresize bilinear is cv2's INTER_LINEAR.
  x = np.random.default_rng(2).normal(size=(13, 17, 3)).astype(np.float32)
  up = cv2.resize(x, (40, 29), interpolation=cv2.INTER_LINEAR)
  ry = crop_matrix(0, 13, 13, 29, 13)
  rx = crop_matrix(0, 17, 17, 40, 17)
  ours = np.einsum('oh,hwc,pw->opc', ry, x, rx, optimize=True)
  assert np.abs(ours - up).max() < 1e-5
  assert np.abs(matlab_imresize(x, (29, 40)) - up).max() < 1e-5


@pytest.mark.parametrize('start', [-7, 3])  # Crossing the canvas edge, or inside it.
@pytest.mark.parametrize('length,size', [(37, 24), (17, 24), (113, 224), (500, 224)])
def test_crop_and_paste_matrices_match_matlab(length, size, start):
  rng = np.random.default_rng(length)
  canvas = length + 20
  x = rng.normal(size=(canvas, 1))
  window = np.zeros((length, 1))
  lo, hi = max(start, 0), min(start + length, canvas)
  window[lo - start:hi - start] = x[lo:hi]
  ref = matlab_imresize(window[:, None], (size, 1))[:, 0]
  crop = crop_matrix(start, length, canvas, size, canvas + 30)
  ours = crop[:, lo:hi] @ x[lo:hi]
  assert np.abs(ours - ref).max() < 1e-4  # float32 positions up to ~500.
  # Back: `size` scores onto the window [start, start + length) of the canvas.
  s = rng.normal(size=(size, 1))
  ref_back = matlab_imresize(s[:, None], (length, 1))[:, 0]
  paste = paste_matrix(start, length, canvas, size)
  ours_back = (paste @ s)[lo:hi]
  assert np.abs(ours_back - ref_back[lo - start:hi - start]).max() < 1e-4
  assert np.all(paste[:lo] == 0) and np.all(paste[hi:] == 0)


def test_resize_differs_from_area_and_scale_and_translate_only_when_shrinking():
  """Measured (printed with -s): imresize's triangle filter vs cv2 INTER_AREA and
  jax.image.scale_and_translate(linear, antialias) on shrunk crops."""
  crop = np.random.default_rng(3).integers(0, 256, (300, 260, 3)).astype(np.float32)
  ref = matlab_imresize(crop, (224, 224))
  ry, rx = crop_matrix(0, 300, 300, 224, 300), crop_matrix(0, 260, 260, 224, 260)
  ours = np.einsum('oh,hwc,pw->opc', ry, crop, rx, optimize=True)
  area = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_AREA)
  jax_st = np.asarray(jax.image.scale_and_translate(
      jnp.asarray(crop), (224, 224, 3), (0, 1), jnp.asarray([224 / 300, 224 / 260]),
      jnp.zeros(2), 'linear', antialias=True))
  err, err_area = np.abs(ours - ref).max(), np.abs(area - ref).max()
  err_st = np.abs(jax_st - ref).max()
  print(f'\nshrink 300x260->224: ours {err:.2e}, cv2 INTER_AREA {err_area:.2f}, '
        f'scale_and_translate {err_st:.2f} (0-255 pixels)')
  assert err < 0.02 < 1 < err_area  # float32 weights; INTER_AREA is another filter.


@pytest.mark.parametrize('aggregate', ['max', 'mean'])
def test_matches_the_original_loop(aggregate):
  scores = run(aggregate)
  for b, image in enumerate(IMAGES):
    ref = original_loop(image, WINDOWS[b], net_numpy, SIZE, aggregate)
    h, w = image.shape[:2]
    err = np.abs(scores[b, :h, :w] - ref).max()
    agree = np.mean(scores[b, :h, :w].argmax(-1) == ref.argmax(-1))
    print(f'\n{aggregate} image {b}: max abs error {err:.2e}, argmax agreement {agree:.4f}')
    assert err < 1e-4
    assert agree > 0.999
    assert np.all(scores[b, h:] == 0) and np.all(scores[b, :, w:] == 0)
  if aggregate == 'max':
    assert scores.min() >= 0  # Zero canvas: the max never goes below 0.


def test_invalid_windows_contribute_nothing():
  valid = [[True, False, True, False, True], [False, True, True, False, False]]
  scores = run('max', valid=valid)
  kept = [[w for w, v in zip(ws, vs) if v] for ws, vs in zip(WINDOWS, valid)]
  for b, image in enumerate(IMAGES):
    ref = original_loop(image, kept[b], net_numpy, SIZE, 'max')
    assert np.abs(scores[b, :image.shape[0], :image.shape[1]] - ref).max() < 1e-4
  assert np.all(run('mean', valid=np.zeros((2, 5), bool)) == 0)
  # Degenerate windows and padded examples (size 0) give nothing either.
  images, sizes = make_batch(IMAGES, CANVAS)
  out = iw.instancewise(net_jax, images, sizes.at[1].set(0), jnp.asarray(WINDOWS, jnp.int32),
                        jnp.ones((2, 5), bool), SIZE, 'max', 4, black())
  assert np.all(np.asarray(out)[1] == 0)


def test_centre_pixel_network_recovers_objects():
  # Coloured rectangles on grey; a network that scores, over its whole window, the class whose
  # colour the window's centre pixel has recovers them from their boxes.
  colours = np.asarray([[128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
  objects = [[(4, 6, 30, 40, 1), (34, 10, 60, 36, 2), (8, 44, 56, 70, 3)],
             [(10, 5, 50, 30, 3), (2, 34, 40, 62, 1)]]
  shapes = [(64, 72), (56, 64)]
  images, labels = [], []
  for shape, objs in zip(shapes, objects):
    label = np.zeros(shape, np.int32)
    for y0, x0, y1, x1, c in objs:
      label[y0:y1, x0:x1] = c
    images.append(colours[label])
    labels.append(label)
  table = jnp.asarray(normalize(colours))  # (4, 3) normalised colour of each class.

  def centre_net(x):
    centre = x[:, x.shape[1] // 2, x.shape[2] // 2]  # (n, 3)
    cls = jnp.argmin(jnp.abs(centre[:, None] - table[None]).sum(-1), axis=1)
    onehot = jax.nn.one_hot(cls, 4) + 0.1 * jax.nn.one_hot(0, 4)
    return jnp.broadcast_to(onehot[:, None, None], x.shape[:3] + (4,))

  batch, sizes = make_batch(images, (64, 72))
  windows = jnp.asarray([[o[:4] for o in objs] + [(0, 0, 1, 1)] * (3 - len(objs))
                         for objs in objects], jnp.int32)
  valid = jnp.asarray([[True] * len(objs) + [False] * (3 - len(objs)) for objs in objects])
  for aggregate in ('max', 'mean'):
    out = np.asarray(iw.instancewise(centre_net, batch, sizes, windows, valid, (16, 16),
                                     aggregate, 2, black()))
    for b, label in enumerate(labels):
      h, w = label.shape
      np.testing.assert_array_equal(out[b, :h, :w].argmax(-1), label)


def test_jit_and_shard_map_over_two_devices_agree():
  images, sizes = make_batch(IMAGES, CANVAS)
  windows = jnp.asarray(WINDOWS, jnp.int32)
  valid = jnp.ones((2, 5), bool).at[0, 3].set(False)

  def infer(images, sizes, windows, valid):
    return iw.instancewise(net_jax, images, sizes, windows, valid, SIZE, 'max', 2, black())

  eager = np.asarray(infer(images, sizes, windows, valid))
  jitted = np.asarray(jax.jit(infer)(images, sizes, windows, valid))
  mesh = Mesh(np.asarray(jax.devices()[:2]), ('data',))
  sharded = jax.jit(jax.shard_map(infer, mesh=mesh, in_specs=P('data'), out_specs=P('data')))
  out = sharded(images, sizes, windows, valid)
  assert len(out.sharding.device_set) == 2
  np.testing.assert_allclose(jitted, eager, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out), eager, atol=1e-5)


def test_errors():
  images, sizes = make_batch(IMAGES, CANVAS)
  windows, valid = jnp.asarray(WINDOWS, jnp.int32), jnp.ones((2, 5), bool)
  with pytest.raises(ValueError, match='aggregate'):
    iw.instancewise(net_jax, images, sizes, windows, valid, SIZE, 'median')
  with pytest.raises(ValueError, match='window size'):
    iw.instancewise(lambda x: net_jax(x)[:, ::2], images, sizes, windows, valid, SIZE)
  with pytest.raises(ValueError, match=r'\(B, K, 4\)'):
    iw.instancewise(net_jax, images, sizes, windows[0], valid, SIZE)


def test_deconvnet_width_1_16_on_224_windows():
  config = load_config(experiments_dir() / 'default.py')
  with config.unlocked():
    config.model.name = 'deconvnet'
    config.model.width = 1 / 16
    config.data.num_classes = 3
  model = train.build_model(config)
  # Random variables of the model's structure (the fresh prototxt init gives ~1e-3 logits).
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))
  rng = np.random.default_rng(1)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      value = rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
    elif name in ('scale', 'var'):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      value = rng.normal(0, 0.1, leaf.shape)
    return jnp.asarray(value, jnp.float32)

  variables = jax.tree_util.tree_map_with_path(fill, shapes)
  apply_fn = model_apply_fn(model, variables)
  image = np.random.default_rng(4).integers(0, 256, (150, 180, 3), np.uint8)
  # Max-unpooling switches make the network discontinuous: float32 rounding of an arbitrary
  # resize flips a few and moves scores by O(10) locally. Windows of 224 (crossing the border),
  # 112 (x2) and 448 (x0.5, into the padding) have exact float32 resize weights, so the crops are
  # the reference's to rounding of the mean subtraction.
  windows = [(-20, -10, 204, 214), (30, 60, 142, 172), (-118, -130, 330, 318)]
  images, sizes = make_batch([image], (150, 180))
  scores = np.asarray(jax.jit(lambda i, s, w, v: iw.instancewise(
      apply_fn, i, s, w, v, (224, 224), 'max', 2, black()))(
          images, sizes, jnp.asarray([windows], jnp.int32), jnp.ones((1, 3), bool)))
  forward = jax.jit(apply_fn)

  def net(crop):
    return np.asarray(forward(jnp.asarray(crop[None], jnp.float32))[0], np.float64)

  ref = original_loop(image, windows, net, (224, 224))
  err = np.abs(scores[0] - ref).max()
  agree = np.mean(scores[0].argmax(-1) == ref.argmax(-1))
  print(f'\nDeconvNet 1/16: max abs error {err:.2e} (scores up to {np.abs(ref).max():.2f}), '
        f'argmax agreement {agree:.4f}')
  assert np.abs(ref).max() > 0.5
  assert err < 1e-3 * np.abs(ref).max()
  assert agree > 0.999
