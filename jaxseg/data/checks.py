"""The example format every jaxseg builder writes, how sources are found, and the checks they pass.

Builders call these while preparing a dataset, so a bad source file stops the prepare with an error
naming the file; TFDS writes into a temporary folder and only renames it on success, so a failed
prepare leaves nothing `tfds.load` would read.
"""
import io
from typing import Iterable, Mapping, Sequence

from etils import epath
import numpy as np
import PIL.Image
import scipy.io
import tensorflow_datasets as tfds

from jaxseg.data.classes import IGNORE_LABEL


def segmentation_features(height: int | None = None, width: int | None = None
                          ) -> tfds.features.FeaturesDict:
  """{'image': uint8 (H, W, 3), 'label': uint8 (H, W) with 255 = ignore, 'id': text}."""
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(height, width, 3)),
      'label': tfds.features.Tensor(shape=(height, width), dtype=np.uint8, encoding='zlib'),
      'id': tfds.features.Text(),
  })


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


def read_index_mask(path: epath.Path) -> np.ndarray:
  """A label PNG as class indices: palette indices for mode 'P', values for mode 'L'.

  Colours are never mapped to classes: an RGB mask is an error.
  """
  data = read_bytes(path, 'label mask')
  try:
    with PIL.Image.open(io.BytesIO(data)) as mask:
      mask.load()
      mode = mask.mode
      if mode in ('P', 'L'):
        return np.array(mask, dtype=np.uint8)
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f'{path}: unreadable label mask ({e}). Replace the file with the original '
                     'from the dataset archive.') from e
  raise ValueError(
      f'{path}: label mask has PIL mode {mode!r}; expected a palette (P) or greyscale (L) PNG '
      'whose pixel values are class indices. jaxseg never maps colours to classes: convert the '
      'mask to an index image first.')


def read_sbd_mat(path: epath.Path) -> np.ndarray:
  """The class mask of an SBD `cls/<id>.mat` file (MATLAB struct GTcls, field Segmentation)."""
  data = read_bytes(path, 'SBD class mask')
  try:
    mat = scipy.io.loadmat(io.BytesIO(data))
  except Exception as e:  # scipy raises several unrelated types for corrupt files.
    raise ValueError(f'{path}: unreadable .mat file ({e}).') from e
  try:
    seg = np.asarray(mat['GTcls']['Segmentation'][0, 0])
  except (KeyError, ValueError, IndexError, TypeError):
    raise ValueError(f'{path}: no struct GTcls with field Segmentation; expected an SBD '
                     'dataset/cls/*.mat file.') from None
  if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
    raise ValueError(f'{path}: GTcls.Segmentation is {seg.dtype} {seg.shape}; expected a 2-D '
                     'integer mask.')
  return seg


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


def download_or_explain(dl_manager, urls: dict[str, str], instructions: str) -> dict:
  """download_and_extract, turning a failure into an error that says how to supply the files."""
  try:
    return dl_manager.download_and_extract(urls)
  except Exception as e:  # Network errors come in many types; keep the cause chained.
    raise RuntimeError(
        f'Could not download {", ".join(urls.values())} ({type(e).__name__}: {e}).\n'
        f'Download the files yourself and pass their folder as manual_dir '
        f'(tfds.download.DownloadConfig(manual_dir=...) or config.data.manual_dir).'
        f'{instructions}') from e
