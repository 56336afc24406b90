"""tf.data input pipeline: TFDS examples -> augmented global batches of pixels on axis 'data'.

Train: each process reads its own even slice of `config.data.train_split` in TFDS's on-disk order
(which TFDS shuffled when writing), shuffles it each epoch through a `config.data.shuffle_buffer`
window seeded by (config.seed, process, epoch), decodes, augments every example with a stateless
seed derived from (config.seed, epoch, example index) and batches across epoch boundaries. The
batch at step s is therefore a pure function of (config, process count, s), and
`train_iterator(config, mesh, start_step)` skips whole epochs arithmetically and only the records
before `start_step` inside its epoch (still encoded: nothing is decoded while skipping). With
config.data.windows 'objects' or 'proposals' (DeconvNet's two training stages, windows.py) a train
example is a window cut around an object: an epoch is every window of the slice, known in advance
from one pass over the split's 'objects' (`window_plan`), and skipping counts windows.

Eval: every image is padded bottom/right to `config.data.eval_size` (image with the mean, i.e. 0
after normalisation; label 255), keeps its original height/width, and the last batch is filled with
all-ignore examples (valid=False) instead of being dropped; every process yields the same number of
batches. 'id' stays a host-local numpy array (this process's rows of the global batch, in order).

Images are centred on the mean pixel before any geometric op, so every invented pixel (padding,
rotation fill) is the mean pixel; see augment.py for the ops. Batches carry uint8 RGB pixels (a
quarter of float32's bytes host-to-device) rounded from the augmented image, and the train and eval
steps normalise them on the device (`normalize` accepts jax arrays): invented pixels are then the
mean rounded to integers, within 0.5/255 of 0 after normalisation. A background thread builds the
global arrays and starts their transfer while the devices compute. TF is used for input only and
never sees a GPU; tf.data's thread pool is sized to this process's share of the host's cores.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import queue
import threading
from typing import Any, Iterable, Iterator, Sequence

from jaxseg import accelerators

accelerators.set_no_gce_check_default(os.environ)  # Before TFDS probes GCE metadata.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from etils import epath  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from jaxseg.data import augment  # noqa: E402
from jaxseg.data import folder  # noqa: E402
from jaxseg.data import windows  # noqa: E402

try:  # TF must leave accelerators to JAX.
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # Devices already initialised by someone else; nothing to hide then.
  pass

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, on [0, 1].
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # BGR, on [0, 255] (the original FCN/VGG weights).
NORMALIZATIONS = ('imagenet', 'caffe')
AUGMENTATIONS = ('jaxseg', 'semseg')  # config.data.augmentation: see TrainAugment.
IGNORE_LABEL = augment.IGNORE_LABEL


# ----------------------------------------------------------------------------------- normalisation
def _check_method(method: str) -> None:
  if method not in NORMALIZATIONS:
    raise ValueError(f'config.data.normalization={method!r} is unknown; '
                     f'use one of {NORMALIZATIONS}.')


def mean_pixel(method: str) -> tuple[float, float, float]:
  """The RGB pixel (0-255) that `normalize` maps to 0: padding and rotation fill use it."""
  _check_method(method)
  if method == 'imagenet':
    return tuple(255. * m for m in IMAGENET_MEAN)
  return tuple(reversed(CAFFE_BGR_MEAN))


def _finish(centred: Any, method: str) -> Any:
  """Mean-centred RGB (0-255 scale) -> the model's input convention."""
  if method == 'imagenet':
    return centred / np.asarray([255. * s for s in IMAGENET_STD], np.float32)
  if isinstance(centred, tf.Tensor):
    return tf.reverse(centred, [-1])
  return centred[..., ::-1]


def normalize(images: Any, method: str) -> Any:
  """uint8 (or 0-255 float) RGB images (..., 3) -> float32 model input; tf in, tf out, else jnp.

  'imagenet': (x / 255 - mean) / std per RGB channel. 'caffe': BGR order, x - CAFFE_BGR_MEAN, 0-255.
  """
  mean = np.asarray(mean_pixel(method), np.float32)
  if isinstance(images, tf.Tensor):
    return _finish(tf.cast(images, tf.float32) - mean, method)
  return _finish(jnp.asarray(images, jnp.float32) - mean, method)


def _to_pixels(centred: tf.Tensor, method: str) -> tf.Tensor:
  """Mean-centred RGB (0-255 scale) -> uint8 RGB pixels, rounded: what batches carry."""
  pixels = centred + np.asarray(mean_pixel(method), np.float32)
  return tf.cast(tf.clip_by_value(tf.round(pixels), 0., 255.), tf.uint8)


def denormalize(images: Any, method: str) -> np.ndarray:
  """Inverse of `normalize`: model input -> float RGB pixels on [0, 255] (numpy)."""
  x = np.asarray(images, np.float32)
  if method == 'imagenet':
    x = x * np.asarray([255. * s for s in IMAGENET_STD], np.float32)
  else:
    _check_method(method)
    x = x[..., ::-1]
  return x + np.asarray(mean_pixel(method), np.float32)


# ----------------------------------------------------------------------------------------- builder
def load_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder named by config.data.dataset, prepared on first use.

  Reads from config.data.data_dir ('' = TFDS default); when the dataset is not prepared yet it is
  built there, from config.data.manual_dir when given (already downloaded sources).
  'segmentation_folder' is the folder config.data.folder with the config.data.folder_* options
  (jaxseg.data.folder.builder_config: a changed file or option is a new TFDS config).
  """
  import jaxseg.data  # noqa: F401  Registers jaxseg's builders.
  name = config.data.dataset
  kwargs = {'data_dir': config.data.data_dir or None}
  if name.split('/')[0].split(':')[0] == folder.NAME:
    if name != folder.NAME:
      raise ValueError(f'config.data.dataset={name!r}: use {folder.NAME!r} alone; the folder and '
                       'its options are the config.data.folder* fields.')
    kwargs['config'] = folder.builder_config(config.data)
  try:
    builder = tfds.builder(name, **kwargs)
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(
        f'config.data.dataset={name!r} is not a registered TFDS dataset; jaxseg provides '
        "'voc2012_segmentation', 'ade20k', 'cityscapes_fine', 'camvid', 'synthetic_shapes' and "
        "'segmentation_folder' (your own images and masks: config.data.folder).") from e
  if not builder.is_prepared():
    _prepare_once(builder, config)
    builder = tfds.builder(name, **kwargs)  # Reads what was written.
  missing = {'image', 'label'} - set(builder.info.features.keys())
  if missing:
    raise ValueError(f'config.data.dataset={name!r} has no feature(s) {sorted(missing)}; '
                     'a segmentation dataset needs image, label (and id).')
  return builder


def _prepare_once(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> None:
  """Process 0 downloads and prepares the dataset; the others wait, then read what it wrote.

  Every process hears whether the preparation succeeded (a broadcast all of them join), so a
  failure on process 0 fails every process instead of leaving them in a barrier. With one
  process per host on local disks, set config.data.data_dir to shared storage.
  """
  download_config = tfds.download.DownloadConfig(manual_dir=config.data.manual_dir or None)
  if jax.process_count() == 1:
    _prepare(builder, download_config)
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  error = None
  if jax.process_index() == 0:
    try:
      _prepare(builder, download_config)
    except Exception as e:  # pylint: disable=broad-except  Re-raised below, after telling others.
      error = e
  failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
  if error is not None:
    raise error
  if int(failed):
    raise ValueError(f'process 0 could not prepare {builder.name} in {builder.data_dir}; its '
                     'log has the reason.')


def _prepare(builder: tfds.core.DatasetBuilder,
             download_config: tfds.download.DownloadConfig) -> None:
  """download_and_prepare under a lock, after removing what killed prepares left behind.

  TFDS writes into `<config folder>/incomplete.<random>_<version>/` and renames it on success; a
  prepare killed mid-way leaves that folder (often gigabytes) and the next prepare starts a new
  one. While this process holds the lock no other jaxseg prepare of the dataset runs, so every
  `incomplete.*` folder beside the version folder is stale and is removed. A second job that
  waited for the lock finds the dataset prepared and reads it. Remote data_dirs (gs://) have no
  file locks: there the stale folders are only reported.
  """
  parent = epath.Path(builder.data_dir).parent
  with _prepare_lock(parent) as locked:
    if builder.is_prepared():  # Prepared by the job that held the lock before us.
      return
    for stale in sorted(parent.glob(f'{_INCOMPLETE_PREFIX}*')):
      if locked:
        logging.info('removing %s, left by an interrupted prepare of %s', stale, builder.name)
        stale.rmtree(missing_ok=True)
      else:
        logging.warning('%s was left by an interrupted prepare of %s (or belongs to one running '
                        'now); remove it once no prepare runs.', stale, builder.name)
    builder.download_and_prepare(download_config=download_config)


_INCOMPLETE_PREFIX = 'incomplete.'  # tensorflow_datasets.core.constants.INCOMPLETE_PREFIX


@contextlib.contextmanager
def _prepare_lock(folder: epath.Path) -> Iterator[bool]:
  """An exclusive lock on `folder`/.jaxseg_prepare.lock (local disks, NFS); True when held."""
  if '://' in str(folder):  # gs://, s3://: no file locks.
    yield False
    return
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / '.jaxseg_prepare.lock', 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)  # Released when the file closes, or the process dies.
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def split_size(builder: tfds.core.DatasetBuilder, split: Any, field: str) -> int:
  """Examples in `split` of the builder; ValueError naming `field` when it is no split."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError, AssertionError) as e:
    raise ValueError(f'{field}={split!r} is not a split of {builder.name} '
                     f'(splits: {sorted(builder.info.splits.keys())}).') from e


@dataclasses.dataclass(frozen=True)
class _Slice:
  split: Any  # What to pass to builder.as_dataset.
  offset: int  # Index of its first example within the whole split.
  size: int
  max_size: int  # The largest slice of any process (eval pads every process up to it).


def _process_slice(builder: tfds.core.DatasetBuilder, split: str, process_index: int,
                   process_count: int, field: str) -> _Slice:
  """This process's contiguous share of `split` (tfds.even_splits: sizes differ by at most one)."""
  split_size(builder, split, field)
  subsplits = tfds.even_splits(split, process_count)
  sizes = [builder.info.splits[s].num_examples for s in subsplits]
  return _Slice(subsplits[process_index], sum(sizes[:process_index]), sizes[process_index],
                max(sizes))


def _read(builder: tfds.core.DatasetBuilder, split: Any) -> tf.data.Dataset:
  """Raw examples in a fixed order; image and label are still encoded (decoded by `_decode`)."""
  decoders = {k: tfds.decode.SkipDecoding() for k in ('image', 'label', 'instance')
              if k in builder.info.features}
  read_config = tfds.ReadConfig(try_autocache=False)
  return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                            read_config=read_config)


def _decode(builder: tfds.core.DatasetBuilder, raw: dict) -> tuple[tf.Tensor, tf.Tensor]:
  """Encoded example -> image float32 (H, W, 3) RGB 0-255, label int32 (H, W)."""
  features = builder.info.features
  image = tf.cast(features['image'].decode_example(raw['image']), tf.float32)
  label = features['label'].decode_example(raw['label'])
  if label.shape.rank == 3:  # A label stored as a one-channel image.
    label = label[..., 0]
  return tf.ensure_shape(image, (None, None, 3)), tf.cast(label, tf.int32)


def _label_fault(label: tf.Tensor, num_classes: int, ignore: int) -> dict[str, tf.Tensor]:
  """{'label_ok': bool, 'label_bad': int32}: whether every value is a class or `ignore`.

  A value >= num_classes would count as a valid pixel with no loss and vanish from the
  confusion matrix, inflating every score; the host raises (`_check_labels`) instead. Two
  reductions per example. 'label_bad' is an offending value (the smallest negative one, else the
  largest one >= num_classes) when 'label_ok' is False.
  """
  kept = tf.where(label == ignore, 0, label)
  low, high = tf.reduce_min(kept), tf.reduce_max(kept)
  ok = tf.logical_and(low >= 0, high < num_classes)
  return {'label_ok': ok, 'label_bad': tf.where(low < 0, low, high)}


def _check_labels(batch: dict[str, np.ndarray], num_classes: int | None, ignore_label: int,
                  where: str) -> None:
  """Pops 'label_ok'/'label_bad' from a host batch; ValueError naming the example and value."""
  ok, bad = batch.pop('label_ok'), batch.pop('label_bad')
  faulty = np.flatnonzero(~ok)
  if not faulty.size:
    return
  i = faulty[0]
  classes = ('a class below config.data.num_classes' if num_classes is None else
             f'a class (0..{num_classes - 1}, config.data.num_classes={num_classes})')
  raise ValueError(
      f'example {batch["id"][i].decode()!r} of {where} has label value {int(bad[i])}, neither '
      f'{classes} nor the ignore label (config.data.ignore_label={ignore_label}). Set '
      'config.data.num_classes to the number of classes of the dataset (labels above it would '
      'count as pixels without loss and be left out of the scores), or fix its labels.')


# ------------------------------------------------------------------------------------------- mesh
@dataclasses.dataclass(frozen=True)
class _Layout:
  process_index: int  # This process's rank among the processes that own devices of the mesh.
  process_count: int
  local_batch_size: int


def _layout(mesh: Mesh, global_batch_size: int, field: str) -> _Layout:
  devices = list(mesh.devices.flat)
  if global_batch_size <= 0 or global_batch_size % len(devices):
    raise ValueError(f'{field}={global_batch_size} must be a positive multiple of the number of '
                     f'devices ({len(devices)}): set {field} to e.g. '
                     f'{max(1, global_batch_size // len(devices) + 1) * len(devices)}.')
  processes = sorted({d.process_index for d in devices})
  me = jax.process_index()
  if me not in processes:
    raise ValueError(f'process {me} owns no device of the mesh.')
  local_devices = sum(d.process_index == me for d in devices)
  return _Layout(processes.index(me), len(processes),
                 global_batch_size // len(devices) * local_devices)


def _to_global(local: dict[str, np.ndarray], sharding: NamedSharding, global_batch: int
               ) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v, (global_batch,) + v.shape[1:])
          for k, v in local.items()}


def _prefetch(it: Iterable[dict], size: int) -> Iterator[dict]:
  """Runs `it` in a background thread, keeping up to `size` batches ready.

  Building a global array starts its host-to-device copy, so the copies of the next batches
  overlap the current step instead of running in the training thread. Order is kept, and an
  error in the producer is raised in the consumer.
  """
  ready: queue.Queue = queue.Queue(maxsize=max(1, size))
  done = object()
  stop = threading.Event()

  def produce():
    try:
      for item in it:
        while not stop.is_set():
          try:
            ready.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      ready.put(done)
    except BaseException as e:  # pylint: disable=broad-except  Handed to the consumer.
      ready.put(e)

  thread = threading.Thread(target=produce, name='jaxseg-input', daemon=True)
  thread.start()
  try:
    while True:
      item = ready.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


def host_threads(env: dict | None = None, usable: int | None = None,
                 machine: int | None = None) -> int:
  """tf.data threads for this process: its share of the host's cores, at least 1.

  A launcher that binds CPUs to tasks (SLURM --cpus-per-task, mpirun --bind-to) leaves this
  process fewer usable cores than the machine has: those are its share. Otherwise the machine's
  cores are divided among the host's processes of the job (one process per GPU), read from
  OMPI_COMM_WORLD_LOCAL_SIZE, LOCAL_WORLD_SIZE or SLURM_NTASKS_PER_NODE.
  """
  env = os.environ if env is None else env
  machine = machine or os.cpu_count() or 1
  usable = usable or (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                      else machine)
  if usable < machine:
    return max(1, usable)
  for name in ('OMPI_COMM_WORLD_LOCAL_SIZE', 'LOCAL_WORLD_SIZE', 'SLURM_NTASKS_PER_NODE'):
    value = env.get(name, '').split('(')[0]  # SLURM writes e.g. '8(x2)'.
    if value.isdigit() and int(value) > 0:
      return max(1, machine // int(value))
  return machine


def _parallelism(config: ml_collections.ConfigDict) -> int:
  n = int(config.data.num_parallel_calls)
  return tf.data.AUTOTUNE if n < 0 else max(n, 1)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True  # Parallel maps keep their input order: batches are reproducible.
  # Each process of a host gets its share of the cores, not a pool the size of the machine.
  options.threading.private_threadpool_size = host_threads()
  return options


# ------------------------------------------------------------------------------------------ train
@dataclasses.dataclass(frozen=True)
class TrainAugment:
  """The per-example train transform, read once from config.data.

  `augmentation` 'jaxseg': photometric, blur, scale, rotate + pad bottom/right + crop (fused),
  flip. 'semseg': PSPNet's train_transform of hszhao/semseg tool/train.py with the ops of
  util/transform.py in its order: RandScale, RandRotate (probability 1/2), RandomGaussianBlur
  (probability blur_prob, 0.5 there), RandomHorizontalFlip, Crop('rand') with centred padding,
  each with OpenCV's conventions (augment.py); semseg has no photometric jitter, which runs first
  here when config.data.photometric is set. Both fill with the mean pixel and ignore_label.
  """
  crop_size: tuple[int, int]
  scale_range: tuple[float, float]
  hflip: bool
  rotate_degrees: float
  blur_prob: float
  photometric: bool
  normalization: str
  ignore_label: int = IGNORE_LABEL
  augmentation: str = 'jaxseg'

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'TrainAugment':
    d = config.data
    crop = tuple(int(v) for v in d.crop_size)
    if len(crop) != 2 or min(crop) <= 0:
      raise ValueError(f'config.data.crop_size={tuple(d.crop_size)} must be two positive ints '
                       '(H, W).')
    scale = tuple(float(v) for v in d.scale_range)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
      raise ValueError(f'config.data.scale_range={tuple(d.scale_range)} must be (lo, hi) with '
                       '0 < lo <= hi; (1.0, 1.0) disables scaling.')
    if not 0 <= d.blur_prob <= 1:
      raise ValueError(f'config.data.blur_prob={d.blur_prob} must lie in [0, 1].')
    if d.rotate_degrees < 0:
      raise ValueError(f'config.data.rotate_degrees={d.rotate_degrees} must be >= 0.')
    _check_method(d.normalization)
    if d.augmentation not in AUGMENTATIONS:
      raise ValueError(f'config.data.augmentation={d.augmentation!r} is unknown; use one of '
                       f'{AUGMENTATIONS}.')
    return cls(crop, scale, bool(d.hflip), float(d.rotate_degrees), float(d.blur_prob),
               bool(d.photometric), d.normalization, int(d.ignore_label), d.augmentation)

  def __call__(self, image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor
               ) -> tuple[tf.Tensor, tf.Tensor]:
    """image float32 RGB 0-255 (H, W, 3), label int32 (H, W) -> uint8 RGB crop, label crop."""
    seeds = augment.split_seed(seed, 6)
    if self.augmentation == 'semseg':
      return self._semseg(image, label, seeds)
    if self.photometric:
      image = augment.random_photometric(image, seeds[0])
    if self.blur_prob > 0:
      image = augment.random_gaussian_blur(image, seeds[1], self.blur_prob)
    image = image - np.asarray(mean_pixel(self.normalization), np.float32)  # Fill value is now 0.
    if self.scale_range != (1., 1.):
      image, label = augment.random_scale(image, label, seeds[2], self.scale_range)
    if self.rotate_degrees > 0:  # Rotate, pad and crop, fused: only the crop is computed.
      image, label = augment.random_rotate_crop(image, label, seeds[3], seeds[4],
                                                self.rotate_degrees, self.crop_size, 0.,
                                                self.ignore_label)
    else:
      image, label = augment.random_crop(image, label, seeds[4], self.crop_size, 0.,
                                         self.ignore_label)
    if self.hflip:
      image, label = augment.random_hflip(image, label, seeds[5])
    return _to_pixels(image, self.normalization), label

  def _semseg(self, image: tf.Tensor, label: tf.Tensor, seeds: tf.Tensor
              ) -> tuple[tf.Tensor, tf.Tensor]:
    """semseg's order; each op keeps the seed its 'jaxseg' counterpart uses."""
    if self.photometric:
      image = augment.random_photometric(image, seeds[0])
    # Centred first, so the fills below are the mean; blurring commutes with centring (a
    # normalised kernel with reflected borders).
    image = image - np.asarray(mean_pixel(self.normalization), np.float32)
    if self.scale_range != (1., 1.):
      image, label = augment.random_rescale_cv2(image, label, seeds[2], self.scale_range)
    if self.rotate_degrees > 0:
      image, label = augment.random_rotate_p(image, label, seeds[3], self.rotate_degrees, 0.5,
                                             0., self.ignore_label)
    if self.blur_prob > 0:
      image = augment.random_gaussian_blur(image, seeds[1], self.blur_prob)
    if self.hflip:
      image, label = augment.random_hflip(image, label, seeds[5])
    image, label = augment.random_crop_centered_pad(image, label, seeds[4], self.crop_size, 0.,
                                                    self.ignore_label)
    return _to_pixels(image, self.normalization), label


def _fold(seed: tf.Tensor, *data: Any) -> tf.Tensor:
  for d in data:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
  return seed


@dataclasses.dataclass(frozen=True)
class TrainWindows:
  """What one train example is (config.data.windows; jaxseg.data.windows), read once.

  'image': a crop of the whole image. 'objects' / 'proposals': DeconvNet's stage-1 / stage-2
  windows, each resized to `resize` before the train transform; `per_object` windows per object
  and epoch, classes balanced when `balance`.
  """
  mode: str
  context: float = 1.2
  resize: tuple[int, int] = (250, 250)
  balance: bool = False
  min_iou: float = 0.5
  per_object: int = 1
  proposals: str = ''  # 'proposals' only: a proposals file/folder; '' = sampled around objects.

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  builder: tfds.core.DatasetBuilder) -> 'TrainWindows':
    d = config.data
    if d.windows not in windows.MODES:
      raise ValueError(f'config.data.windows={d.windows!r} is unknown; use one of '
                       f'{windows.MODES}.')
    if d.windows == 'image':
      if d.balance_classes:
        raise ValueError("config.data.balance_classes=True balances object windows; set "
                         "config.data.windows='objects' or 'proposals', or balance_classes=False.")
      if d.proposals:
        raise ValueError(f'config.data.proposals={d.proposals!r} is read only with '
                         "config.data.windows='proposals'.")
      return cls('image')
    missing = {'instance', 'objects'} - set(builder.info.features.keys())
    if missing:
      raise ValueError(
          f'config.data.windows={d.windows!r} needs object annotations, but '
          f'config.data.dataset={d.dataset!r} has no feature(s) {sorted(missing)}; use a dataset '
          "with instances (voc2012_segmentation, synthetic_shapes) or config.data.windows='image'.")
    if d.windows == 'objects' and d.proposals:
      raise ValueError(f'config.data.proposals={d.proposals!r} is read only with '
                       "config.data.windows='proposals' (stage 2).")
    if not d.window_context >= 1.:
      raise ValueError(f'config.data.window_context={d.window_context} must be >= 1 (the box '
                       'enlargement; DeconvNet: 1.2).')
    resize = tuple(int(v) for v in d.window_resize)
    if len(resize) != 2 or min(resize) <= 0:
      raise ValueError(f'config.data.window_resize={tuple(d.window_resize)} must be two positive '
                       'ints (H, W).')
    if not 0. < d.proposal_min_iou <= 1.:
      raise ValueError(f'config.data.proposal_min_iou={d.proposal_min_iou} must lie in (0, 1].')
    sampled = d.windows == 'proposals' and not d.proposals
    per_object = windows.PROPOSALS_PER_OBJECT if sampled else 1
    return cls(d.windows, float(d.window_context), resize, bool(d.balance_classes),
               float(d.proposal_min_iou), per_object, str(d.proposals))


def object_classes(builder: tfds.core.DatasetBuilder, split: Any) -> list[np.ndarray]:
  """The class of every object of every example of `split`, in the train stream's record order.

  Reads the 'objects' labels only (no image is decoded).
  """
  decoders = tfds.decode.PartialDecoding({'objects': {'label': True}})
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                          read_config=tfds.ReadConfig(try_autocache=False))
  ds = ds.map(lambda ex: ex['objects']['label'])
  return [np.asarray(c, np.int64) for c in ds.as_numpy_iterator()]


def file_proposal_windows(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
                          spec: TrainWindows) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Per example of the train split (record order): its windows from config.data.proposals
  (jaxseg.inference.proposals.read_proposals, by the example's 'id') that overlap an object,
  enlarged (`windows.file_proposal_windows`), and the class of each.

  Reads 'id', 'objects' and the instance map (for the image size), no image.
  """
  from jaxseg.inference import proposals  # pylint: disable=g-import-not-at-top  (no TF there)
  reader = proposals.read_proposals(spec.proposals)
  decoders = tfds.decode.PartialDecoding({'id': True, 'instance': True, 'objects': True})
  ds = builder.as_dataset(split=config.data.train_split, shuffle_files=False, decoders=decoders,
                          read_config=tfds.ReadConfig(try_autocache=False))
  ds = ds.map(lambda ex: (ex['id'], tf.shape(ex['instance'])[:2], ex['objects']['box'],
                          ex['objects']['label']))
  boxes, classes = [], []
  for image_id, hw, object_boxes, object_labels in ds.as_numpy_iterator():
    hw = tuple(int(v) for v in hw)
    found = reader.boxes(image_id.decode(), hw)
    w, c = windows.file_proposal_windows(found, hw, object_boxes, object_labels, spec.min_iou,
                                         spec.context)
    boxes.append(w)
    classes.append(c)
  return boxes, classes


def window_plan(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
                spec: TrainWindows) -> tuple[windows.WindowPlan, np.ndarray | None]:
  """The windows of one epoch of the whole train split (class counts over the whole split).

  Returns the plan and, with a proposals file, the flat int32 (n, 4) table of its windows (the
  plan's 'objects' are then the file's kept windows); else None.
  """
  field = f'config.data.dataset={config.data.dataset!r}'
  if spec.mode == 'proposals' and spec.proposals:
    boxes, classes = file_proposal_windows(config, builder, spec)
    table = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int32)
    plan = windows.plan_windows(classes, int(config.data.num_classes), 1, spec.balance, field)
    return plan, table.astype(np.int32)
  classes = object_classes(builder, config.data.train_split)
  return windows.plan_windows(classes, int(config.data.num_classes), spec.per_object,
                              spec.balance, field), None


def _train_dataset(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, *,
                   process_index: int, process_count: int, local_batch_size: int,
                   start_step: int = 0) -> tf.data.Dataset:
  """This process's infinite stream of local train batches from `start_step` on.

  Batches hold 'image', 'label', 'id', 'label_ok' and 'label_bad' (`_label_fault` of the
  example's whole label map, checked by `train_iterator`) and, for tests, 'index' (example index
  in the split), 'epoch' and 'slot' (the window's number within its example; 0 for whole-image
  examples).

  With config.data.windows 'objects'/'proposals' an epoch is every window of the process's
  examples (`window_plan`): records are shuffled as for images, each is repeated once per window
  (still encoded), the windows are shuffled through a second buffer of config.data.shuffle_buffer,
  and resuming skips windows (whole epochs arithmetically). Each window is decoded, cut and
  resized (jaxseg.data.windows), then transformed with the seed (config.seed, epoch, index, slot).
  """
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be >= 0.')
  transform = TrainAugment.from_config(config)
  spec = TrainWindows.from_config(config, builder)
  part = _process_slice(builder, config.data.train_split, process_index, process_count,
                        'config.data.train_split')
  if part.size == 0:
    raise ValueError(f'config.data.train_split={config.data.train_split!r} has too few examples '
                     f'to give each of {process_count} processes one.')
  per_epoch = part.size
  if spec.mode != 'image':
    plan, file_windows = window_plan(config, builder, spec)
    plan = plan.slice(part.offset, part.size)
    per_epoch = plan.total
    if per_epoch == 0:
      raise ValueError(f'config.data.train_split={config.data.train_split!r} of '
                       f'config.data.dataset={config.data.dataset!r} has no objects in process '
                       f"{process_index}'s share: config.data.windows={spec.mode!r} has no "
                       'windows to train on.')
  epoch0, skip0 = divmod(start_step * local_batch_size, per_epoch)
  buffer = max(1, min(int(config.data.shuffle_buffer), part.size))
  window_buffer = max(1, min(int(config.data.shuffle_buffer), per_epoch))
  shuffle_root = tf.constant([config.seed, 1 + process_index], tf.int64)
  augment_root = tf.constant([config.seed, 0], tf.int64)
  records = _read(builder, part.split).enumerate(start=part.offset)

  def one_epoch(epoch):
    shuffle_seed = tf.random.stateless_uniform(
        [], _fold(shuffle_root, epoch), minval=0, maxval=2**31 - 1, dtype=tf.int64)
    ds = records.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    skip = tf.where(epoch == epoch0, tf.constant(skip0, tf.int64), 0)
    if spec.mode == 'image':
      return ds.skip(skip).map(lambda index, raw: (epoch, index, tf.constant(0, tf.int64), raw))
    count = tf.constant(plan.count, tf.int64)
    ds = ds.flat_map(lambda index, raw: tf.data.Dataset.from_tensors((index, raw)).repeat(
        count[index - part.offset]).enumerate())
    window_seed = tf.random.stateless_uniform(
        [], _fold(shuffle_root, epoch, 1), minval=0, maxval=2**31 - 1, dtype=tf.int64)
    ds = ds.shuffle(window_buffer, seed=window_seed, reshuffle_each_iteration=False)
    return ds.skip(skip).map(lambda slot, record: (epoch, record[0], slot, record[1]))

  if spec.mode != 'image':
    object_start = tf.constant(plan.object_start, tf.int64)
    num_objects = tf.constant(plan.num_objects, tf.int64)
    window_ends = tf.constant(plan.window_ends, tf.int64)
    fill = np.asarray(mean_pixel(config.data.normalization), np.float32)
    ignore = int(config.data.ignore_label)
    if file_windows is not None:
      file_windows = tf.constant(file_windows, tf.int32)

  def cut_window(raw, image, label, index, slot, seed):
    """The window `slot` of example `index`, resized to spec.resize (uncentred, mean fill)."""
    at = index - part.offset
    k = windows.object_of_slot(window_ends, object_start[at], num_objects[at], slot)
    if file_windows is not None:
      window = file_windows[tf.cast(object_start[at], tf.int32) + k]
      return windows.file_window(image, label, window, spec.resize, fill, ignore)
    objects = raw['objects']
    boxes = tf.cast(objects['box'], tf.int32)
    if spec.mode == 'objects':
      instance = builder.info.features['instance'].decode_example(raw['instance'])
      return windows.object_window(image, label, instance, tf.cast(objects['label'], tf.int32),
                                   boxes, k, spec.context, spec.resize, fill, ignore)
    image, label, _ = windows.proposal_window(image, label, boxes, k, seed, spec.context,
                                              spec.min_iou, spec.resize, fill, ignore)
    return image, label

  num_classes, ignore_label = int(config.data.num_classes), int(config.data.ignore_label)

  def example(epoch, index, slot, raw):
    image, label = _decode(builder, raw)
    fault = _label_fault(label, num_classes, ignore_label)
    image_id = raw['id'] if 'id' in raw else tf.strings.as_string(index)
    if spec.mode == 'image':
      seed = _fold(augment_root, epoch, index)
    else:
      window_seed, seed = tf.unstack(augment.split_seed(_fold(augment_root, epoch, index, slot),
                                                        2))
      image, label = cut_window(raw, image, label, index, slot, window_seed)
    image, label = transform(image, label, seed)
    return {'image': image, 'label': label, 'index': index, 'epoch': epoch, 'slot': slot,
            'id': image_id, **fault}

  ds = tf.data.Dataset.counter(epoch0).flat_map(one_epoch)
  ds = ds.map(example, num_parallel_calls=_parallelism(config))
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def train_iterator(config: ml_collections.ConfigDict, mesh: Mesh, start_step: int = 0
                   ) -> Iterator[dict[str, jax.Array]]:
  """Infinite global train batches {'image' uint8 RGB (B, h, w, 3), 'label' int32 (B, h, w)}.

  B = config.train.batch_size (global, sharded over mesh axis 'data');
  (h, w) = config.data.crop_size.
  The batch at step s depends only on the config and s: starting at `start_step` yields exactly
  what an uninterrupted run yields from that step on.
  """
  layout = _layout(mesh, int(config.train.batch_size), 'config.train.batch_size')
  builder = load_builder(config)
  ds = _train_dataset(config, builder, process_index=layout.process_index,
                      process_count=layout.process_count,
                      local_batch_size=layout.local_batch_size, start_step=start_step)
  ds = ds.map(lambda b: {k: b[k] for k in ('image', 'label', 'id', 'label_ok', 'label_bad')})
  sharding = NamedSharding(mesh, P('data'))

  def batches():
    for b in ds.as_numpy_iterator():
      _check_labels(b, int(config.data.num_classes), int(config.data.ignore_label),
                    f'config.data.train_split={config.data.train_split!r} of '
                    f'{config.data.dataset}')
      yield _to_global({'image': b['image'], 'label': b['label']}, sharding,
                       int(config.train.batch_size))

  return _prefetch(batches(), int(config.data.prefetch))


# ------------------------------------------------------------------------------------------- eval
def _eval_split(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
                split: str | None) -> tuple[str, str]:
  """(split string to read, config field it came from), honouring config.eval.num_examples.

  The split must exist and hold config.eval.num_examples examples (ValueError naming both).
  """
  field = 'config.data.eval_split' if split is None else 'split'
  split = config.data.eval_split if split is None else split
  n = int(config.eval.num_examples)
  if n >= 0:
    if '[' in split:
      raise ValueError(f'config.eval.num_examples={n} cannot be combined with the sliced split '
                       f'{split!r}; slice the split only, or set config.eval.num_examples=-1.')
    size = split_size(builder, split, field)
    if n > size:
      raise ValueError(f'config.eval.num_examples={n} is more than the {size} examples of '
                       f'{field}={split!r}; use at most {size}, or -1 for the whole split.')
    if n == 0:
      raise ValueError('config.eval.num_examples=0 would evaluate nothing; use -1 for the whole '
                       'split.')
    split = f'{split}[:{n}]'
  return split, field


def num_eval_examples(config: ml_collections.ConfigDict, split: str | None = None) -> int:
  """Real (unpadded) examples that eval_iterator(config, mesh, split) yields over all processes."""
  builder = load_builder(config)
  split, field = _eval_split(config, builder, split)
  return split_size(builder, split, field)


def _eval_size(config: ml_collections.ConfigDict) -> tuple[int, int]:
  size = tuple(int(v) for v in config.data.eval_size)
  if len(size) != 2 or min(size) <= 0:
    raise ValueError(f'config.data.eval_size={tuple(config.data.eval_size)} must be two positive '
                     'ints (H, W).')
  return size


def _eval_dataset(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
                  split: Any, local_batch_size: int) -> tf.data.Dataset:
  """This process's eval examples, padded to eval_size, in local batches (last one short)."""
  height, width = _eval_size(config)
  method = config.data.normalization
  mean = np.asarray(mean_pixel(method), np.float32)
  ignore = int(config.data.ignore_label)
  num_classes = int(config.data.num_classes)

  def example(raw):
    image, label = _decode(builder, raw)
    fault = _label_fault(label, num_classes, ignore)
    h, w = tf.shape(label)[0], tf.shape(label)[1]
    fits = tf.logical_and(h <= height, w <= width)

    def pad():
      return augment.pad_to_size(image - mean, label, (height, width), 0., ignore)

    def blank():  # Only to keep shapes static; the host raises before anyone sees it.
      return tf.zeros((height, width, 3)), tf.fill((height, width), ignore)

    image_p, label_p = tf.cond(fits, pad, blank)
    out = {'image': _to_pixels(tf.ensure_shape(image_p, (height, width, 3)), method),
           'label': tf.ensure_shape(label_p, (height, width)),
           'valid': tf.constant(True), 'height': h, 'width': w, 'fits': fits, **fault}
    out['id'] = raw['id'] if 'id' in raw else tf.strings.as_string(tf.constant(-1))
    return out

  ds = _read(builder, split)
  ds = ds.map(example, num_parallel_calls=_parallelism(config))
  ds = ds.batch(local_batch_size)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _padded_eval_batches(ds: tf.data.Dataset, num_batches: int, local_batch_size: int,
                         eval_size: Sequence[int], ignore_label: int, split: str,
                         num_classes: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Local numpy batches of exactly `local_batch_size`, `num_batches` of them (padding appended).

  Raises ValueError for an image larger than eval_size or a label value that is no class.
  """
  height, width = eval_size
  emitted = 0
  for batch in ds.as_numpy_iterator():
    _check_labels(batch, num_classes, ignore_label, f'split {split!r}')
    bad = np.flatnonzero(~batch.pop('fits'))
    if bad.size:
      i = bad[0]
      raise ValueError(
          f'eval image {batch["id"][i].decode()!r} of split {split!r} is '
          f'{batch["height"][i]}x{batch["width"][i]}, larger than config.data.eval_size='
          f'{tuple(eval_size)}; raise config.data.eval_size to at least the largest image.')
    yield _pad_rows(batch, local_batch_size, ignore_label)
    emitted += 1
  empty = {'image': np.zeros((0, height, width, 3), np.uint8),
           'label': np.zeros((0, height, width), np.int32), 'valid': np.zeros((0,), bool),
           'height': np.zeros((0,), np.int32), 'width': np.zeros((0,), np.int32),
           'id': np.zeros((0,), object)}
  for _ in range(emitted, num_batches):
    yield _pad_rows(empty, local_batch_size, ignore_label)


def _pad_rows(batch: dict[str, np.ndarray], size: int, ignore_label: int) -> dict[str, np.ndarray]:
  """Appends all-ignore examples (valid False, label 255, image 0 = mean) up to `size` rows."""
  n = len(batch['valid'])
  if n == size:
    return batch
  fill = {'label': ignore_label, 'id': b''}
  out = {}
  for k, v in batch.items():
    pad = np.full((size - n,) + v.shape[1:], fill.get(k, 0), v.dtype)
    out[k] = np.concatenate([v, pad])
  return out


def eval_iterator(config: ml_collections.ConfigDict, mesh: Mesh, split: str | None = None
                  ) -> Iterator[dict[str, Any]]:
  """Global eval batches over `split` (default config.data.eval_split), never dropping examples.

  Yields {'image' uint8 RGB (B, H, W, 3), 'label' int32 (B, H, W) padded with 255, 'valid' bool (B,),
  'height', 'width' int32 (B,)} as global arrays sharded over 'data', plus 'id': a host-local numpy
  array (bytes) for this process's rows. B = config.eval.batch_size, (H, W) = config.data.eval_size.
  """
  layout = _layout(mesh, int(config.eval.batch_size), 'config.eval.batch_size')
  builder = load_builder(config)
  split, field = _eval_split(config, builder, split)
  part = _process_slice(builder, split, layout.process_index, layout.process_count, field)
  local = layout.local_batch_size
  ds = _eval_dataset(config, builder, part.split, local)
  num_batches = math.ceil(part.max_size / local)
  eval_size = _eval_size(config)
  sharding = NamedSharding(mesh, P('data'))
  global_batch = int(config.eval.batch_size)

  def batches():
    for b in _padded_eval_batches(ds, num_batches, local, eval_size,
                                  int(config.data.ignore_label), split,
                                  int(config.data.num_classes)):
      ids = b.pop('id')
      out = _to_global(b, sharding, global_batch)
      out['id'] = ids
      yield out

  return _prefetch(batches(), int(config.data.prefetch))
