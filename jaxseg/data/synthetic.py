"""Synthetic shapes: the embedded demo dataset, generated procedurally (TFDS 'synthetic_shapes').

Each scene has 2-7 objects of six classes (disk, square, triangle, star, ring, cross) on a
textured background, plus background distractors (elongated ellipses, bars) that are class 0.
Shape is the reliable cue: every class has a typical hue but neighbouring hues overlap, objects
and distractors are filled with random textures (solid, stripes, checks, dots, gradient) in random
second colours, objects occlude each other and run off the image edge, and the images get colour,
contrast and noise jitter. Ignored pixels (255): a 1-pixel band on each side of every label
boundary (as VOC's boundary band) and, in some scenes, a rectangular unlabelled patch.

Every painted object is an instance ('instance', 'objects'; see checks.instance_features): its id
is its painting order, later objects occlude earlier ones, the ignored pixels are 255 there too,
and objects left without pixels (off the image, occluded, or all boundary) are dropped.

Deterministic: example i of a split is a pure function of (config.seed, split, i). Configs:
'default' (3,000 train / 300 val, 128x128) for the demo, 'tiny' (32 / 16, 64x64) for tests.
Images are stored as JPEG (quality 90): the noise would make PNGs ~5x larger.
"""
import dataclasses
import io

from etils import epath
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from jaxseg.data import checks
from jaxseg.data.classes import IGNORE_LABEL, SYNTHETIC_CLASSES

SHAPES = SYNTHETIC_CLASSES[1:]
_SPLIT_STREAM = {'train': 0, 'val': 1}  # Separate random streams per split.


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  num_train: int = 3000
  num_val: int = 300
  height: int = 128
  width: int = 128
  seed: int = 0


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
  """Procedural scenes of six shape classes on textured backgrounds; no download."""

  name = 'synthetic_shapes'
  # TFDS 4.9.10 derives this with the importlib_resources backport, which it does not install on
  # Python >= 3.9 (tensorflow/datasets#11212); the module file is what it would find.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Six shape classes, boundary and patch ignore regions.',
      '1.1.0': 'Object instances (instance, objects); scenes unchanged.',
  }
  BUILDER_CONFIGS = [
      SyntheticConfig(name='default', description='3,000 train / 300 val scenes, 128x128.'),
      SyntheticConfig(name='tiny', num_train=32, num_val=16, height=64, width=64,
                      description='32 train / 16 val scenes, 64x64, for tests.'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return self.dataset_info_from_configs(
        description=__doc__,
        features=checks.segmentation_features(config.height, config.width, with_instances=True),
        supervised_keys=('image', 'label'),
        metadata=tfds.core.MetadataDict(class_names=list(SYNTHETIC_CLASSES), ignore_label=255),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    return {'train': self._generate_examples('train', config.num_train),
            'val': self._generate_examples('val', config.num_val)}

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    for index in range(num_examples):
      example_id = f'{split}_{index:05d}'
      image, label, instance, classes = render_scene_with_instances(
          scene_rng(config.seed, split, index), config.height, config.width)
      instance, objects = checks.objects_from_instances(
          instance, classes, len(SYNTHETIC_CLASSES), f'synthetic_shapes scene {example_id}')
      yield example_id, {'image': encode_jpeg(image), 'label': label, 'id': example_id,
                         'instance': instance, 'objects': objects}


def encode_jpeg(image: np.ndarray) -> bytes:
  """How scenes are stored: JPEG quality 90 (noisy scenes make PNGs ~5x larger)."""
  buffer = io.BytesIO()
  PIL.Image.fromarray(image).save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, _SPLIT_STREAM[split], index])


def render_scene(rng: np.random.Generator, height: int, width: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """One scene: image uint8 (H, W, 3) and label uint8 (H, W) with classes 0..6 and 255."""
  image, label, _, _ = render_scene_with_instances(rng, height, width)
  return image, label


def render_scene_with_instances(rng: np.random.Generator, height: int, width: int
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
  """One scene and its objects: (image, label, instance, classes).

  image and label are `render_scene`'s (the same random draws); instance is uint8 (H, W): 0 where
  no object is visible, k where object k (1-based painting order) is on top, 255 wherever label is
  255; classes[k - 1] is the class of object k. Objects may have no visible pixels.
  """
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  image = _background(rng, yy, xx)
  label = np.zeros((height, width), np.uint8)
  instance = np.zeros((height, width), np.uint8)
  classes = []
  scale = min(height, width)

  for _ in range(rng.integers(0, 5)):  # Distractors: background, but object-like colours.
    center = rng.uniform(0, 1, 2) * (height, width)
    radius = rng.uniform(0.08, 0.3) * scale
    box = _box(center, radius, height, width)
    a, b = _local_coords(yy[box], xx[box], center, rng.uniform(0, 2 * np.pi), radius)
    mask = _distractor_mask(rng, a, b)
    _paint(image[box], mask, _texture(rng, a, b, _colour(rng, rng.uniform(0, 360))))

  for _ in range(rng.integers(2, 8)):
    cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
    radius = rng.uniform(0.1, 0.27) * scale
    center = rng.uniform(-0.05, 1.05, 2) * (height, width)
    box = _box(center, 1.15 * radius, height, width)
    a, b = _local_coords(yy[box], xx[box], center, rng.uniform(0, 2 * np.pi), radius)
    mask = _shape_mask(SHAPES[cls - 1], a, b)
    hue = (cls - 1) * 360 / len(SHAPES) + rng.normal(0, 25)
    _paint(image[box], mask, _texture(rng, a, b, _colour(rng, hue)))
    label[box][mask] = cls
    classes.append(cls)
    instance[box][mask] = len(classes)

  label[_boundary(label)] = IGNORE_LABEL
  if rng.uniform() < 0.2:  # An unlabelled patch, as in partially annotated real data.
    h, w = (rng.uniform(0.08, 0.25, 2) * (height, width)).astype(int) + 1
    y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    label[y:y + h, x:x + w] = IGNORE_LABEL

  contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(-0.1, 0.1)
  image = (image - 0.5) * contrast + 0.5 + brightness + rng.uniform(0, 0.3) * rng.uniform(
      -0.1, 0.1, 3)
  image += rng.uniform(0, 0.06) * rng.standard_normal(image.shape, dtype=np.float32)
  instance[label == IGNORE_LABEL] = IGNORE_LABEL
  return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), label, instance, classes


def _local_coords(yy, xx, center, theta, radius):
  """Object coordinates: rotated by theta, in units of the object's radius."""
  dy, dx = yy - center[0], xx - center[1]
  c, s = np.cos(theta), np.sin(theta)
  return (dx * c + dy * s) / radius, (-dx * s + dy * c) / radius


def _shape_mask(shape: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  rho = np.hypot(a, b)
  if shape == 'disk':
    return rho <= 1.0
  if shape == 'square':
    return np.maximum(np.abs(a), np.abs(b)) <= 0.8
  if shape == 'triangle':  # Equilateral, circumradius 1.1: inside all three edges.
    normals = np.deg2rad([270.0, 30.0, 150.0])
    return np.all([a * np.cos(t) + b * np.sin(t) <= 0.55 for t in normals], axis=0)
  if shape == 'star':  # Five points: radius goes linearly from 1.1 (tip) to 0.45 (notch).
    k = (np.arctan2(b, a) * 5 / (2 * np.pi)) % 1.0
    return rho <= 0.45 + 0.65 * np.abs(2 * k - 1)
  if shape == 'ring':
    return (rho <= 1.0) & (rho >= 0.55)
  if shape == 'cross':
    return ((np.abs(a) <= 0.3) & (np.abs(b) <= 1.0)) | ((np.abs(b) <= 0.3) & (np.abs(a) <= 1.0))
  raise ValueError(f'Unknown shape {shape!r}; known: {SHAPES}.')


def _distractor_mask(rng, a, b):
  """An elongated ellipse or a bar: distinguishable from the classes by shape alone."""
  thickness = rng.uniform(0.12, 0.4)
  if rng.uniform() < 0.5:
    return a ** 2 + (b / thickness) ** 2 <= 1.0
  return (np.abs(a) <= 1.0) & (np.abs(b) <= thickness * 0.5)


def _box(center, extent, height, width) -> tuple[slice, slice]:
  """The image window holding everything within `extent` pixels of center (may be empty)."""
  y0, x0 = (max(0, int(c - extent)) for c in center)
  y1 = min(height, max(y0, int(center[0] + extent) + 2))
  x1 = min(width, max(x0, int(center[1] + extent) + 2))
  return slice(y0, y1), slice(x0, x1)


def _colour(rng, hue_degrees: float) -> np.ndarray:
  """An RGB colour in [0, 1] with the given hue and random saturation and value."""
  return _hsv_to_rgb(hue_degrees % 360, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))


def _hsv_to_rgb(h, s, v) -> np.ndarray:
  k = (np.array([5, 3, 1]) + h / 60) % 6
  return (v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)


def _texture(rng, a, b, colour):
  """A fill for pixels at object coordinates (a, b): solid, stripes, checks, dots or gradient."""
  if rng.uniform() < 0.6:
    other = rng.uniform(0, 1, 3).astype(np.float32)
  else:
    other = colour * rng.uniform(0.3, 0.7)
  weight = _pattern(rng, a, b, int(rng.integers(0, 5)))
  return colour * (1 - weight) + other * weight


def _pattern(rng, a, b, kind: int) -> np.ndarray:
  """(H, W, 1) mixing weight in [0, 1]: 0 solid, 1 stripes, 2 checks, 3 dots, 4 gradient."""
  freq = rng.uniform(1.5, 4.0)
  if kind == 0:
    weight = np.zeros_like(a)
  elif kind == 1:
    t = rng.uniform(0, np.pi)
    weight = np.sin(2 * np.pi * freq * (a * np.cos(t) + b * np.sin(t))) > 0
  elif kind == 2:
    weight = (np.floor(a * freq) + np.floor(b * freq)) % 2
  elif kind == 3:
    weight = ((a * freq % 1 - 0.5) ** 2 + (b * freq % 1 - 0.5) ** 2) < 0.08
  else:
    weight = np.clip((a + 1) / 2, 0, 1)
  return weight.astype(np.float32)[..., None]


def _paint(image, mask, texture):
  image[mask] = texture[mask]


def _background(rng, yy, xx) -> np.ndarray:
  """Gradient between two colours, smooth noise and sometimes a faint stripe or check pattern."""
  height, width = yy.shape
  low, high = (_hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, 0.7), rng.uniform(0.2, 0.9))
               for _ in range(2))
  t = rng.uniform(0, 2 * np.pi)
  ramp = (xx * np.cos(t) + yy * np.sin(t)) / max(height, width)
  ramp = ((ramp - ramp.min()) / (np.ptp(ramp) + 1e-6))[..., None]
  image = low * (1 - ramp) + high * ramp
  image += 0.15 * _smooth_noise(rng, height, width, int(rng.integers(2, 8)))
  if rng.uniform() < 0.4:
    a, b = xx / max(height, width) * 4, yy / max(height, width) * 4
    pattern = _pattern(rng, a, b, int(rng.integers(1, 4))) - 0.5
    image += rng.uniform(0.05, 0.2) * pattern * rng.uniform(-1, 1, 3).astype(np.float32)
  return image.astype(np.float32)


def _smooth_noise(rng, height, width, cells: int) -> np.ndarray:
  """Uniform noise on a coarse (cells+1)^2 grid, bilinearly upsampled to (H, W, 3), in [-1, 1]."""
  grid = rng.uniform(-1, 1, (cells + 1, cells + 1, 3)).astype(np.float32)
  rows = np.tensordot(_lerp_weights(height, cells), grid, axes=(1, 0))  # (H, cells+1, 3)
  return np.einsum('hjc,wj->hwc', rows, _lerp_weights(width, cells), optimize=True)


def _lerp_weights(size: int, cells: int) -> np.ndarray:
  """(size, cells+1) matrix of linear-interpolation weights from grid nodes to pixels."""
  pos = np.linspace(0, cells, size, dtype=np.float32)
  return np.maximum(0, 1 - np.abs(pos[:, None] - np.arange(cells + 1, dtype=np.float32)))


def _boundary(label: np.ndarray) -> np.ndarray:
  """Pixels with a 4-neighbour of another label: one pixel on each side of every boundary."""
  edge = np.zeros(label.shape, bool)
  vertical = label[1:] != label[:-1]
  horizontal = label[:, 1:] != label[:, :-1]
  edge[1:] |= vertical
  edge[:-1] |= vertical
  edge[:, 1:] |= horizontal
  edge[:, :-1] |= horizontal
  return edge
