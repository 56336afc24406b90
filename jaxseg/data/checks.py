"""The example format every jaxseg builder writes, how sources are found, and the checks they pass.

Builders call these while preparing a dataset, so a bad source file stops the prepare with an error
naming the file; TFDS writes into a temporary folder and only renames it on success, so a failed
prepare leaves nothing `tfds.load` would read.
"""
import contextlib
import io
from typing import Iterable, Iterator, Mapping, Sequence

from etils import epath
import numpy as np
import PIL.Image
import scipy.io
import scipy.ndimage
import tensorflow_datasets as tfds

from jaxseg.data.classes import IGNORE_LABEL


def segmentation_features(height: int | None = None, width: int | None = None,
                          with_instances: bool = False) -> tfds.features.FeaturesDict:
  """{'image': uint8 (H, W, 3), 'label': uint8 (H, W) with 255 = ignore, 'id': text}.

  with_instances adds `instance_features(height, width)`.
  """
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(height, width, 3)),
      'label': tfds.features.Tensor(shape=(height, width), dtype=np.uint8, encoding='zlib'),
      'id': tfds.features.Text(),
      **(instance_features(height, width) if with_instances else {}),
  })


def instance_features(height: int | None = None, width: int | None = None
                      ) -> dict[str, tfds.features.FeatureConnector]:
  """The object-instance features, as written by `objects_from_instances`.

  'instance': uint8 (H, W, 1) PNG of instance ids per pixel: 0 = no object, k = object k
    (1-based, k <= 254), 255 = ignore (as VOC's SegmentationObject PNGs).
  'objects': a sequence whose entry k-1 describes instance id k: 'label' int32, its class, and
    'box' int32 (4,), the tight box (y0, x0, y1, x1) of its pixels, end exclusive.
  """
  return {
      'instance': tfds.features.Image(shape=(height, width, 1), dtype=np.uint8,
                                      encoding_format='png'),
      'objects': tfds.features.Sequence({
          'label': tfds.features.Tensor(shape=(), dtype=np.int32),
          'box': tfds.features.Tensor(shape=(4,), dtype=np.int32),
      }),
  }


def objects_from_instances(instance: np.ndarray, categories: Sequence[int], num_classes: int,
                           path: epath.Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Renumbers an instance map and describes its objects: the 'instance' and 'objects' features.

  Args:
    instance: (H, W) integer map: 0 = no object, 1..254 = instance ids, 255 = ignore.
    categories: categories[k - 1] is the class of instance id k (SBD's GTinst.Categories layout);
      entries of ids without pixels are not read.
    num_classes: classes 1..num_classes-1 are object classes.
    path: the instance file, for error messages.

  Returns:
    (instance, objects): the map as uint8 (H, W, 1) with the ids that have pixels renumbered
    1..n in their original order (0 and 255 kept), and {'label': int32 (n,), 'box': int32 (n, 4)}
    whose row k-1 is the class and the tight (y0, x0, y1, x1) box, end exclusive, of new id k.
  """
  instance = np.asarray(instance)
  if instance.ndim != 2 or not np.issubdtype(instance.dtype, np.integer):
    raise ValueError(f'{path}: instance map is {instance.dtype} {instance.shape}; expected a 2-D '
                     'integer map.')
  values = np.unique(instance)
  bad = [int(v) for v in values if not 0 <= v <= IGNORE_LABEL]
  if bad:
    raise ValueError(f'{path}: instance ids {bad[:5]} are outside 0 (no object), 1..254 '
                     f'(objects) and {IGNORE_LABEL} (ignore).')
  ids = values[(values > 0) & (values < IGNORE_LABEL)].astype(int)
  categories = np.asarray(categories).ravel()
  if len(ids) and ids[-1] > len(categories):
    raise ValueError(f'{path}: instance ids go up to {ids[-1]} but only {len(categories)} '
                     f'categories are given (one class per instance id, 1-based): the instance '
                     'map and its categories do not belong together; replace the file with the '
                     'original from the dataset archive.')
  labels = categories[ids - 1].astype(np.int64) if len(ids) else np.zeros(0, np.int64)
  wrong = [(int(k), int(c)) for k, c in zip(ids, labels) if not 0 < c < num_classes]
  if wrong:
    raise ValueError(f'{path}: instances (id, class) {wrong[:5]} have classes outside the object '
                     f'classes 1..{num_classes - 1}.')
  lut = np.zeros(IGNORE_LABEL + 1, np.uint8)
  lut[IGNORE_LABEL] = IGNORE_LABEL
  lut[ids] = np.arange(1, len(ids) + 1)
  renumbered = lut[instance]
  slices = scipy.ndimage.find_objects(np.where(renumbered == IGNORE_LABEL, 0, renumbered),
                                      max_label=len(ids))
  boxes = np.array([(r.start, c.start, r.stop, c.stop) for r, c in slices], np.int32)
  return renumbered[..., None], {'label': labels.astype(np.int32),
                                 'box': boxes.reshape(len(ids), 4)}


def categories_from_label(instance: np.ndarray, label: np.ndarray, instance_path: epath.Path,
                          label_path: epath.Path) -> np.ndarray:
  """The class of each instance id 1..max: the majority class of its pixels in the label map.

  VOC's SegmentationObject PNGs carry instance ids only; their classes are in SegmentationClass,
  which in the official data has exactly one class under each instance. Should an instance cover
  several classes, the most frequent non-ignore value wins (ties: the lower class id). Ids without
  pixels get class 0 (`objects_from_instances` drops them).

  Raises:
    ValueError: naming both files, if an instance lies on background or ignore pixels only
      (the majority value is 0 or it has no non-ignore pixel).
  """
  instance = np.asarray(instance).astype(np.int64)
  keep = (instance > 0) & (instance < IGNORE_LABEL) & (label != IGNORE_LABEL)
  ids = np.unique(instance[(instance > 0) & (instance < IGNORE_LABEL)])
  size = int(ids.max()) + 1 if len(ids) else 1
  votes = np.zeros((size, IGNORE_LABEL + 1), np.int64)
  np.add.at(votes, (instance[keep], label[keep].astype(np.int64)), 1)
  categories = votes.argmax(1)
  for k in ids:
    if not votes[k].any() or categories[k] == 0:
      raise ValueError(
          f'{instance_path}: instance {k} has no object class under its pixels in {label_path} '
          f'(values {np.flatnonzero(votes[k]).tolist()}, 255 excluded): the instance map and '
          'its class mask do not match; replace both with the originals from the archive.')
  return categories[1:]


def read_bytes(path: epath.Path, what: str) -> bytes:
  try:
    return path.read_bytes()
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: {what} is missing.') from None


def require_files(paths: Iterable[epath.Path], what: str, hint: str) -> None:
  """Raises FileNotFoundError listing (up to 5 of) the missing paths before anything is written."""
  missing = [p for p in paths if not p.exists()]
  if missing:
    shown = '\n  '.join(map(str, missing[:5]))
    more = f'\n  ... and {len(missing) - 5} more' if len(missing) > 5 else ''
    raise FileNotFoundError(f'{len(missing)} {what} missing:\n  {shown}{more}\n{hint}')


def read_image(path: epath.Path) -> tuple[bytes, tuple[int, int]]:
  """Fully decodes an image file; returns encoded bytes TF can decode and its (height, width).

  JPEG/PNG files in RGB or greyscale are kept byte for byte (no recompression); any other format
  or mode is converted to RGB PNG.
  """
  data = read_bytes(path, 'image')
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      image.load()  # Decodes everything: catches truncated files, not just bad headers.
      size = image.size[::-1]
      if image.format in ('JPEG', 'PNG') and image.mode in ('RGB', 'L'):
        return data, size
      buffer = io.BytesIO()
      image.convert('RGB').save(buffer, format='PNG')
      return buffer.getvalue(), size
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f'{path}: unreadable image ({e}). Replace the file with the original '
                     'from the dataset archive.') from e


def read_index_mask(path: epath.Path, what: str = 'label mask') -> np.ndarray:
  """A label PNG as class indices: palette indices for mode 'P', values for mode 'L'.

  Colours are never mapped to classes: an RGB mask is an error. `what` names the file's role in
  errors ('label mask', 'instance mask').
  """
  data = read_bytes(path, what)
  try:
    with PIL.Image.open(io.BytesIO(data)) as mask:
      mask.load()
      mode = mask.mode
      if mode in ('P', 'L'):
        return np.array(mask, dtype=np.uint8)
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f'{path}: unreadable {what} ({e}). Replace the file with the original '
                     'from the dataset archive.') from e
  raise ValueError(
      f'{path}: {what} has PIL mode {mode!r}; expected a palette (P) or greyscale (L) PNG '
      'whose pixel values are indices. jaxseg never maps colours to indices: convert the '
      'mask to an index image first.')


def read_sbd_mat(path: epath.Path) -> np.ndarray:
  """The class mask of an SBD `cls/<id>.mat` file (MATLAB struct GTcls, field Segmentation)."""
  return _sbd_fields(path, 'GTcls', ('Segmentation',), 'class mask', 'cls')[0]


def read_sbd_inst_mat(path: epath.Path) -> tuple[np.ndarray, np.ndarray]:
  """The instance map and classes of an SBD `inst/<id>.mat` file.

  MATLAB struct GTinst: Segmentation (H, W) uint8 with 0 = no object and k = instance k;
  Categories (n, 1), the class (1..20) of instance k in row k-1; Boundaries is not read.

  Returns:
    (segmentation (H, W), categories (n,)).
  """
  seg, categories = _sbd_fields(path, 'GTinst', ('Segmentation', 'Categories'), 'instance mask',
                                'inst')
  categories = categories.ravel()
  numeric = np.issubdtype(categories.dtype, np.number) or categories.size == 0
  if not numeric or not np.array_equal(categories, np.round(categories)):
    raise ValueError(f'{path}: GTinst.Categories is {categories.dtype} {categories[:5]}; expected '
                     'integer class ids, one per instance.')
  return seg, categories.astype(np.int64)


def _sbd_fields(path, struct, fields, what, folder):
  data = read_bytes(path, f'SBD {what}')
  try:
    mat = scipy.io.loadmat(io.BytesIO(data))
  except Exception as e:  # scipy raises several unrelated types for corrupt files.
    raise ValueError(f'{path}: unreadable .mat file ({e}).') from e
  try:
    values = [np.asarray(mat[struct][field][0, 0]) for field in fields]
  except (KeyError, ValueError, IndexError, TypeError):
    raise ValueError(f'{path}: no struct {struct} with field{"s" if len(fields) > 1 else ""} '
                     f'{" and ".join(fields)}; expected an SBD dataset/{folder}/*.mat file.'
                     ) from None
  seg = values[0]
  if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
    raise ValueError(f'{path}: {struct}.Segmentation is {seg.dtype} {seg.shape}; expected a 2-D '
                     'integer mask.')
  return values


def check_label_values(label: np.ndarray, num_classes: int, path: epath.Path) -> None:
  """Every value must be a class index (0..num_classes-1) or the ignore label 255."""
  if label.dtype == np.uint8:
    values = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
  else:
    values = np.unique(label)
  bad = [int(v) for v in values if not (0 <= v < num_classes or v == IGNORE_LABEL)]
  if bad:
    raise ValueError(f'{path}: label values {bad} are outside the {num_classes} classes '
                     f'(0..{num_classes - 1}) and the ignore label {IGNORE_LABEL}.')


def check_same_size(image_hw: Sequence[int], label: np.ndarray, image_path: epath.Path,
                    label_path: epath.Path) -> None:
  if tuple(image_hw) != label.shape:
    raise ValueError(
        f'{label_path}: mask is {label.shape[0]}x{label.shape[1]} (HxW) but its image '
        f'{image_path} is {image_hw[0]}x{image_hw[1]}.')


def read_id_list(path: epath.Path) -> list[str]:
  """Ids one per line (VOC/SBD ImageSets style), duplicates dropped, order kept."""
  text = read_bytes(path, 'split list').decode('utf-8')
  return list(dict.fromkeys(line.split()[0] for line in text.splitlines() if line.strip()))


def check_disjoint(train: Mapping[str, Iterable[str]], held_out: Mapping[str, Iterable[str]]
                   ) -> None:
  """Raises ValueError if any held-out (evaluation) id is also in a training split."""
  for train_name, train_ids in train.items():
    train_ids = set(train_ids)
    for eval_name, eval_ids in held_out.items():
      leaked = sorted(train_ids.intersection(eval_ids))
      if leaked:
        raise ValueError(f'{len(leaked)} {eval_name} ids are also in {train_name} (e.g. '
                         f'{", ".join(leaked[:3])}): evaluation images must not be trained on.')


def manual_dir_or_none(dl_manager: tfds.download.DownloadManager,
                       requested: epath.PathLike | None, instructions: str) -> epath.Path | None:
  """The folder of already downloaded sources, or None when the builder should download them.

  requested: the manual_dir the user passed (DownloadConfig.manual_dir); a missing or empty one is
  an error rather than a silent download. Without one, TFDS's default <download_dir>/manual is
  used when it holds files.
  """
  if requested:
    path = epath.Path(requested).expanduser()
    if not path.is_dir() or not any(path.iterdir()):
      raise FileNotFoundError(f'manual_dir {path} does not exist or is empty.{instructions}')
  try:
    return dl_manager.manual_dir
  except AssertionError:  # TFDS: the default manual folder is missing or empty.
    return None


# TFDS's downloader retries a request 10 times with exponential backoff (about 3.5 minutes when
# offline) and sets no timeout; jaxseg's builders download with these bounds instead.
DOWNLOAD_RETRIES = 2
DOWNLOAD_TIMEOUT_S = (20.0, 120.0)  # (connect, read: the longest wait for the next bytes).


class SourcesUnavailableError(FileNotFoundError, RuntimeError):
  """A dataset's source files are neither in manual_dir nor downloadable.

  A FileNotFoundError, so the CLI prints it whole as bad input (the user supplies the files), and
  a RuntimeError, the failed download it reports.
  """


@contextlib.contextmanager
def bounded_downloads(retries: int = DOWNLOAD_RETRIES,
                      timeout: tuple[float, float] = DOWNLOAD_TIMEOUT_S) -> Iterator[None]:
  """TFDS downloads with at most `retries` retries per request and (connect, read) timeouts.

  tensorflow_datasets/core/download/downloader.py (`_open_with_requests`) mounts urllib3
  `Retry(total=MAX_RETRIES, backoff_factor=0.2)` with MAX_RETRIES = 10 and calls requests without
  a timeout: offline, a download retries through about 3.5 minutes of backoff, and on a network
  that drops packets every attempt also waits for the system's connect timeout (about 2 minutes).
  DownloadConfig offers neither setting, so for the duration of the block that module constant
  is lowered and requests' HTTPAdapter.send gets `timeout` where its caller passed none.
  """
  import requests.adapters  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import downloader  # pylint: disable=g-import-not-at-top
  adapter = requests.adapters.HTTPAdapter
  send, max_retries, limit = adapter.send, downloader.MAX_RETRIES, tuple(timeout)

  def send_with_timeout(self, request, stream=False, timeout=None, **kwargs):
    return send(self, request, stream=stream, timeout=limit if timeout is None else timeout,
                **kwargs)

  adapter.send, downloader.MAX_RETRIES = send_with_timeout, retries
  try:
    yield
  finally:
    adapter.send, downloader.MAX_RETRIES = send, max_retries


def download_or_explain(dl_manager, urls: dict[str, str], instructions: str) -> dict:
  """download_and_extract (bounded: `bounded_downloads`), a failure explaining what to fetch.

  Raises:
    SourcesUnavailableError: naming the URLs, the cause, and how to pass the files as manual_dir.
  """
  try:
    with bounded_downloads():
      return dl_manager.download_and_extract(urls)
  except Exception as e:  # Network errors come in many types; keep the cause chained.
    raise SourcesUnavailableError(
        f'Could not download {", ".join(urls.values())} ({type(e).__name__}: {e}).\n'
        f'Download the files yourself and pass their folder as manual_dir '
        f'(tfds.download.DownloadConfig(manual_dir=...) or config.data.manual_dir).'
        f'{instructions}') from e
