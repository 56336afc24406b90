"""Joint image/mask augmentation ops for the tf.data input pipeline.

Every op takes one example (`image` float32 (H, W, 3), `label` int32 (H, W)) and, when random, an
explicit stateless seed (a shape-[2] integer tensor): the same seed gives the same result, eagerly
or inside `tf.data`, in any order and on any thread. Geometric ops move image and mask together; the
image is interpolated bilinearly, the mask by nearest neighbour, and the area they invent is filled
with `image_fill` (the pipeline works on mean-centred images, so 0 = the dataset mean) and label
`ignore_label` (255).

Photometric ops expect RGB pixel values in [0, 255] and leave the mask alone; they follow
mmsegmentation's PhotoMetricDistortion (brightness ±32, contrast ×[0.5, 1.5], saturation
×[0.5, 1.5], hue ±18/180, each applied with probability 1/2). `gaussian_blur` is
cv2.GaussianBlur(img, (5, 5), 0) as in PSPNet's training code: border reflect-101 and
`gaussian_kernel` = cv2.getGaussianKernel, which for odd sizes up to 7 with sigma 0 is a fixed
table (5: [1, 4, 6, 4, 1] / 16), not the Gaussian of OpenCV's default-sigma formula.

The last section transcribes hszhao/semseg util/transform.py (PSPNet's training transform in
tool/train.py) op by op, with OpenCV's sampling conventions: `rescale_cv2` (RandScale's
cv2.resize), `rotate_cv2` / `random_rotate_p` (RandRotate's cv2.warpAffine about (w/2, h/2),
applied with probability 1/2) and `pad_centered` / `random_crop_centered_pad` (Crop with crop_type='rand').
"""
from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

IGNORE_LABEL = 255


def split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
  """`num` independent stateless seeds, shape (num, 2), derived from `seed`."""
  return tf.random.experimental.stateless_split(seed, num=num)


def _uniform(seed: tf.Tensor, minval: float, maxval: float) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed=seed, minval=minval, maxval=maxval)


def _coin(seed: tf.Tensor, prob: float) -> tf.Tensor:
  """True with probability `prob`."""
  return tf.random.stateless_uniform([], seed=seed) < prob


# ---------------------------------------------------------------------------------------- geometry
def resize(image: tf.Tensor, label: tf.Tensor, size: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Resizes to `size` (h, w): image bilinear, mask nearest neighbour (half-pixel centres both)."""
  image = tf.image.resize(image, size, method='bilinear')
  label = tf.image.resize(label[..., None], size, method='nearest')[..., 0]
  return image, label


def random_scale(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor,
                 scale_range: Sequence[float]) -> tuple[tf.Tensor, tf.Tensor]:
  """Rescales both by one factor drawn uniformly from `scale_range` (sizes rounded, at least 1)."""
  lo, hi = float(scale_range[0]), float(scale_range[1])
  scale = _uniform(seed, lo, hi) if hi > lo else tf.constant(lo)
  hw = tf.cast(tf.shape(label), tf.float32)
  size = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), 1)
  return resize(image, label, size)


def _rotation(degrees: tf.Tensor, height: tf.Tensor, width: tf.Tensor, top: tf.Tensor = 0,
              left: tf.Tensor = 0, opencv_centre: bool = False) -> tf.Tensor:
  """Projective transform (1, 8) mapping output pixel (x, y) to the input point it samples.

  The output is the image rotated by `degrees` (counter-clockwise as displayed) about its centre,
  read from (x + left, y + top) on. Pixel centres sit at integer coordinates; the centre is
  ((w - 1) / 2, (h - 1) / 2), or with `opencv_centre` semseg's (w / 2, h / 2), half a pixel off.
  """
  theta = tf.cast(degrees, tf.float32) * (math.pi / 180.)
  if opencv_centre:
    cy, cx = tf.cast(height, tf.float32) / 2., tf.cast(width, tf.float32) / 2.
  else:
    cy, cx = (tf.cast(height, tf.float32) - 1.) / 2., (tf.cast(width, tf.float32) - 1.) / 2.
  cos, sin = tf.cos(theta), tf.sin(theta)
  x0, y0 = tf.cast(left, tf.float32) - cx, tf.cast(top, tf.float32) - cy
  return tf.stack([cos, -sin, cos * x0 - sin * y0 + cx,
                   sin, cos, sin * x0 + cos * y0 + cy, 0., 0.])[None]


def _warp(image: tf.Tensor, label: tf.Tensor, transform: tf.Tensor, out_shape: tf.Tensor,
          image_fill: float, ignore_label: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Samples image (bilinear) and label (nearest) at `transform`; outside reads the fill values."""
  def warp(x, interpolation, fill):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform, output_shape=out_shape,
        fill_value=tf.cast(fill, tf.float32), interpolation=interpolation,
        fill_mode='CONSTANT')[0]

  image = warp(image, 'BILINEAR', image_fill)
  label_f = warp(tf.cast(label[..., None], tf.float32), 'NEAREST', ignore_label)
  return image, tf.cast(label_f[..., 0], label.dtype)


def rotate(image: tf.Tensor, label: tf.Tensor, degrees: tf.Tensor, image_fill: float = 0.,
           ignore_label: int = IGNORE_LABEL) -> tuple[tf.Tensor, tf.Tensor]:
  """Rotates both by `degrees` (counter-clockwise) about the image centre, keeping the size."""
  shape = tf.shape(label)
  return _warp(image, label, _rotation(degrees, shape[0], shape[1]), shape, image_fill,
               ignore_label)


def random_rotate(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, max_degrees: float,
                  image_fill: float = 0., ignore_label: int = IGNORE_LABEL
                  ) -> tuple[tf.Tensor, tf.Tensor]:
  """Rotates both by an angle drawn uniformly from [-max_degrees, max_degrees]."""
  degrees = _uniform(seed, -float(max_degrees), float(max_degrees))
  return rotate(image, label, degrees, image_fill, ignore_label)


def pad_to_size(image: tf.Tensor, label: tf.Tensor, size: Sequence[int] | tf.Tensor,
                image_fill: float = 0., ignore_label: int = IGNORE_LABEL
                ) -> tuple[tf.Tensor, tf.Tensor]:
  """Pads bottom/right up to at least `size` (h, w); larger sides are left as they are."""
  shape = tf.shape(label)
  pad_h = tf.maximum(size[0] - shape[0], 0)
  pad_w = tf.maximum(size[1] - shape[1], 0)
  paddings = [[0, pad_h], [0, pad_w]]
  image = tf.pad(image, paddings + [[0, 0]], constant_values=image_fill)
  label = tf.pad(label, paddings, constant_values=tf.cast(ignore_label, label.dtype))
  return image, label


def crop(image: tf.Tensor, label: tf.Tensor, top: tf.Tensor, left: tf.Tensor,
         size: Sequence[int]) -> tuple[tf.Tensor, tf.Tensor]:
  """The (h, w) = `size` window at (top, left) of both; static output shape."""
  h, w = int(size[0]), int(size[1])
  image = tf.ensure_shape(image[top:top + h, left:left + w], (h, w, 3))
  label = tf.ensure_shape(label[top:top + h, left:left + w], (h, w))
  return image, label


def _crop_offsets(shape: tf.Tensor, size: Sequence[int], seed: tf.Tensor
                  ) -> tuple[tf.Tensor, tf.Tensor]:
  """Uniform (top, left) of a `size` window in an image of `shape` padded up to `size`."""
  seeds = split_seed(seed, 2)
  top = tf.random.stateless_uniform([], seeds[0], 0, tf.maximum(shape[0] - size[0], 0) + 1,
                                    dtype=tf.int32)
  left = tf.random.stateless_uniform([], seeds[1], 0, tf.maximum(shape[1] - size[1], 0) + 1,
                                     dtype=tf.int32)
  return top, left


def random_crop(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, size: Sequence[int],
                image_fill: float = 0., ignore_label: int = IGNORE_LABEL
                ) -> tuple[tf.Tensor, tf.Tensor]:
  """Pads (bottom/right) to at least `size`, then crops a uniformly placed `size` window."""
  top, left = _crop_offsets(tf.shape(label), size, seed)
  image, label = pad_to_size(image, label, size, image_fill, ignore_label)
  return crop(image, label, top, left, size)


def rotate_crop(image: tf.Tensor, label: tf.Tensor, degrees: tf.Tensor, top: tf.Tensor,
                left: tf.Tensor, size: Sequence[int], image_fill: float = 0.,
                ignore_label: int = IGNORE_LABEL) -> tuple[tf.Tensor, tf.Tensor]:
  """`rotate`, `pad_to_size` and `crop` in one, computing only the window (rotation is costly)."""
  h, w = int(size[0]), int(size[1])
  shape = tf.shape(label)
  image, label = _warp(image, label, _rotation(degrees, shape[0], shape[1], top, left),
                       tf.constant([h, w]), image_fill, ignore_label)
  # Window pixels beyond the rotated image are padding.
  inside = ((tf.range(h)[:, None] + top < shape[0]) & (tf.range(w)[None, :] + left < shape[1]))
  image = tf.where(inside[..., None], image, tf.cast(image_fill, image.dtype))
  label = tf.where(inside, label, tf.cast(ignore_label, label.dtype))
  return tf.ensure_shape(image, (h, w, 3)), tf.ensure_shape(label, (h, w))


def random_rotate_crop(image: tf.Tensor, label: tf.Tensor, rotate_seed: tf.Tensor,
                       crop_seed: tf.Tensor, max_degrees: float, size: Sequence[int],
                       image_fill: float = 0., ignore_label: int = IGNORE_LABEL
                       ) -> tuple[tf.Tensor, tf.Tensor]:
  """`random_rotate(rotate_seed)` then `random_crop(crop_seed)`, fused: the same result."""
  degrees = _uniform(rotate_seed, -float(max_degrees), float(max_degrees))
  top, left = _crop_offsets(tf.shape(label), size, crop_seed)
  return rotate_crop(image, label, degrees, top, left, size, image_fill, ignore_label)


def hflip(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  return tf.reverse(image, [1]), tf.reverse(label, [1])


def random_hflip(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor
                 ) -> tuple[tf.Tensor, tf.Tensor]:
  """Flips both left-right with probability 1/2."""
  return tf.cond(_coin(seed, 0.5), lambda: hflip(image, label), lambda: (image, label))


# ------------------------------------------------------------------------------- image-only ops
def gaussian_kernel(size: int = 5, sigma: float = 0.) -> tf.Tensor:
  """cv2.getGaussianKernel(size, sigma): what cv2.GaussianBlur uses.

  For odd sizes up to 7 with sigma <= 0 OpenCV takes fixed tables (5: [1, 4, 6, 4, 1] / 16);
  otherwise the normalised Gaussian, sigma <= 0 meaning 0.3 * ((size - 1) / 2 - 1) + 0.8.
  """
  tables = {1: (1.,), 3: (0.25, 0.5, 0.25), 5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
            7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125)}
  if sigma <= 0 and size in tables:
    return tf.constant(tables[size], tf.float32)
  if sigma <= 0:
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
  x = tf.range(size, dtype=tf.float32) - (size - 1) / 2.
  k = tf.exp(-x * x / (2. * sigma * sigma))
  return k / tf.reduce_sum(k)


def gaussian_blur(image: tf.Tensor, size: int = 5, sigma: float = 0.) -> tf.Tensor:
  """cv2.GaussianBlur(image, (size, size), sigma) of an (H, W, C) image (reflect-101 borders)."""
  k = gaussian_kernel(size, sigma)
  r = size // 2
  channels = image.shape[-1] or 3
  x = tf.pad(image[None], [[0, 0], [r, r], [r, r], [0, 0]], mode='REFLECT')
  kh = tf.tile(tf.reshape(k, (size, 1, 1, 1)), [1, 1, channels, 1])
  kw = tf.tile(tf.reshape(k, (1, size, 1, 1)), [1, 1, channels, 1])
  x = tf.nn.depthwise_conv2d(x, kh, [1, 1, 1, 1], 'VALID')
  x = tf.nn.depthwise_conv2d(x, kw, [1, 1, 1, 1], 'VALID')
  return x[0]


def random_gaussian_blur(image: tf.Tensor, seed: tf.Tensor, prob: float, size: int = 5
                         ) -> tf.Tensor:
  """Blurs (`gaussian_blur(image, size)`) with probability `prob`."""
  return tf.cond(_coin(seed, prob), lambda: gaussian_blur(image, size), lambda: image)


def adjust_brightness(image: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
  return tf.clip_by_value(image + delta, 0., 255.)


def adjust_contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """mmsegmentation's contrast: a plain multiplication, clipped."""
  return tf.clip_by_value(image * factor, 0., 255.)


def adjust_saturation(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Scales HSV saturation (clipped to [0, 1])."""
  return tf.clip_by_value(tf.image.adjust_saturation(image / 255., factor) * 255., 0., 255.)


def adjust_hue(image: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
  """Rotates HSV hue by `delta` turns (in [-1, 1])."""
  return tf.clip_by_value(tf.image.adjust_hue(image / 255., delta) * 255., 0., 255.)


def random_photometric(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Brightness, contrast, saturation and hue jitter, each with probability 1/2, on 0-255 RGB."""
  s = split_seed(seed, 8)
  ops = ((adjust_brightness, -32., 32.), (adjust_contrast, 0.5, 1.5),
         (adjust_saturation, 0.5, 1.5), (adjust_hue, -0.1, 0.1))
  for i, (op, lo, hi) in enumerate(ops):
    amount = _uniform(s[2 * i + 1], lo, hi)
    image = tf.cond(_coin(s[2 * i], 0.5), lambda op=op, a=amount: op(image, a), lambda: image)
  return image


# ------------------------------------------------------------- hszhao/semseg util/transform.py
def _linear_taps(out_size: tf.Tensor, in_size: tf.Tensor, inv_factor: tf.Tensor
                 ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """cv2.resize INTER_LINEAR's source taps along one axis: (low index, high index, weight of high).

  OpenCV samples output pixel d at (d + 0.5) / factor - 0.5 (the factor itself, not in/out
  sizes, since semseg passes fx) and reads only the edge pixel beyond either end.
  """
  src = tf.cast((tf.cast(tf.range(out_size), tf.float64) + 0.5) * inv_factor - 0.5, tf.float32)
  low = tf.floor(src)
  frac = src - low
  low = tf.cast(low, tf.int32)
  frac = tf.where((low < 0) | (low >= in_size - 1), 0., frac)
  low = tf.clip_by_value(low, 0, in_size - 1)
  return low, tf.minimum(low + 1, in_size - 1), frac


def rescale_cv2(image: tf.Tensor, label: tf.Tensor, factor: tf.Tensor
                ) -> tuple[tf.Tensor, tf.Tensor]:
  """`cv2.resize(x, None, fx=factor, fy=factor)`: image INTER_LINEAR, label INTER_NEAREST.

  As semseg's RandScale (util/transform.py). Sides become round(side * factor) (at least 1); the
  label reads source pixel floor(d / factor), OpenCV's nearest neighbour (not half-pixel centred).
  """
  factor = tf.cast(factor, tf.float64)
  inv = 1. / factor
  shape = tf.shape(label)
  out = tf.maximum(tf.cast(tf.round(tf.cast(shape, tf.float64) * factor), tf.int32), 1)
  # Horizontal pass first, then vertical, as OpenCV's separable resize.
  x0, x1, fx = _linear_taps(out[1], shape[1], inv)
  fx = fx[None, :, None]
  image = tf.gather(image, x0, axis=1) * (1. - fx) + tf.gather(image, x1, axis=1) * fx
  y0, y1, fy = _linear_taps(out[0], shape[0], inv)
  fy = fy[:, None, None]
  image = tf.gather(image, y0, axis=0) * (1. - fy) + tf.gather(image, y1, axis=0) * fy

  def nearest(n, size):
    src = tf.floor(tf.cast(tf.range(n), tf.float64) * inv)
    return tf.minimum(tf.cast(src, tf.int32), size - 1)

  label = tf.gather(tf.gather(label, nearest(out[0], shape[0]), axis=0),
                    nearest(out[1], shape[1]), axis=1)
  return image, label


def random_rescale_cv2(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor,
                       scale_range: Sequence[float]) -> tuple[tf.Tensor, tf.Tensor]:
  """semseg's RandScale: `rescale_cv2` by one factor uniform in `scale_range` (aspect ratio 1)."""
  lo, hi = float(scale_range[0]), float(scale_range[1])
  factor = _uniform(seed, lo, hi) if hi > lo else tf.constant(lo)
  return rescale_cv2(image, label, factor)


def rotate_cv2(image: tf.Tensor, label: tf.Tensor, degrees: tf.Tensor, image_fill: float = 0.,
               ignore_label: int = IGNORE_LABEL) -> tuple[tf.Tensor, tf.Tensor]:
  """Rotates both by `degrees` (counter-clockwise) about (w / 2, h / 2), keeping the size.

  semseg's RandRotate body: cv2.warpAffine with cv2.getRotationMatrix2D((w / 2, h / 2), degrees,
  1), image INTER_LINEAR, label INTER_NEAREST, constant borders `image_fill` / `ignore_label`.
  """
  shape = tf.shape(label)
  transform = _rotation(degrees, shape[0], shape[1], opencv_centre=True)
  return _warp(image, label, transform, shape, image_fill, ignore_label)


def random_rotate_p(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, max_degrees: float,
                    prob: float = 0.5, image_fill: float = 0., ignore_label: int = IGNORE_LABEL
                    ) -> tuple[tf.Tensor, tf.Tensor]:
  """semseg's RandRotate (util/transform.py): `rotate_cv2` with probability `prob`.

  The angle is uniform in [-max_degrees, max_degrees]; otherwise both are returned unchanged.
  """
  coin_seed, angle_seed = tf.unstack(split_seed(seed, 2))
  degrees = _uniform(angle_seed, -float(max_degrees), float(max_degrees))
  return tf.cond(_coin(coin_seed, prob),
                 lambda: rotate_cv2(image, label, degrees, image_fill, ignore_label),
                 lambda: (image, label))


def pad_centered(image: tf.Tensor, label: tf.Tensor, size: Sequence[int] | tf.Tensor,
                 image_fill: float = 0., ignore_label: int = IGNORE_LABEL
                 ) -> tuple[tf.Tensor, tf.Tensor]:
  """Pads up to at least `size` (h, w), centred as semseg's Crop (util/transform.py).

  int(pad / 2) rows / columns go on top / left, the rest bottom / right; image `image_fill`,
  label `ignore_label`. Larger sides are left as they are.
  """
  shape = tf.shape(label)
  pad_h = tf.maximum(size[0] - shape[0], 0)
  pad_w = tf.maximum(size[1] - shape[1], 0)
  paddings = [[pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2]]
  image = tf.pad(image, paddings + [[0, 0]], constant_values=image_fill)
  label = tf.pad(label, paddings, constant_values=tf.cast(ignore_label, label.dtype))
  return image, label


def random_crop_centered_pad(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor,
                             size: Sequence[int], image_fill: float = 0.,
                             ignore_label: int = IGNORE_LABEL) -> tuple[tf.Tensor, tf.Tensor]:
  """semseg's Crop(size, crop_type='rand') (util/transform.py); static output shape.

  `pad_centered`, then the `size` window at offsets uniform in [0, padded side - crop side]
  (both ends included, as random.randint).
  """
  top, left = _crop_offsets(tf.shape(label), size, seed)
  image, label = pad_centered(image, label, size, image_fill, ignore_label)
  return crop(image, label, top, left, size)
