"""Your own data: a folder of images and masks, prepared as the TFDS dataset 'segmentation_folder'.

Layout (the names are config.data fields, relative to config.data.folder):
  images/<stem>.jpg|.png|...  the photos (JPEG, PNG, BMP, TIFF, WebP; RGB, greyscale, RGBA, CMYK)
  masks/<stem>.png            one mask per image, paired by the path without extension
                              (images/a/b.jpg <-> masks/a/b.png); subfolders are allowed
  classes.json|.csv|.txt      optional class table (`read_class_table`)
  splits/train.txt, val.txt   optional split lists (one stem per line; every *.txt is a split);
                              without them val is a seeded fraction of the pairs (`seeded_split`)
A VOC export (CVAT, Datumaro, labelme2voc) is JPEGImages/, SegmentationClass/,
ImageSets/Segmentation/ and labelmap.txt or class_names.txt.

Masks (config.data.folder_mask_format; 'auto' picks by PIL mode):
  index    greyscale (L, I;16, 1-bit) or palette PNGs whose pixel values are the classes
  palette  palette (P) PNGs whose palette indices are the classes (VOC); 'auto' also checks that
           the PNG's colours are the class table's, when the table has colours
  rgb      colour masks: each colour is looked up in the class table; alpha 0 (RGBA) = ignore.
           'auto' reads an RGB mask without a colour table whose three channels are equal as an
           index mask (class-index masks saved with three channels).
255 is always ignore unless the class table names it as a class; folder_ignore_value names one
more index value and folder_ignore_colour a colour that mean ignore, and a table entry named
ignore / void / unlabeled (any case, underscores stripped) is ignore too.

Classes: the table's, in its order (with an explicit value column: in the order of the values, so
values 0..K-1 stay as they are); without a table every mask value 0..max is a class and the class
count is found when preparing (a value in between that never occurs is an error). The dataset's
metadata holds class_names, palette (256 [r, g, b] rows, row 255 = ignore), ignore_label 255,
source (the folder) and pixel_counts ({split: pixels of each class, then of ignore}). Photos with
an EXIF orientation are turned upright when their mask is (`read_photo`).

The TFDS config name is '<folder name>-<options hash>-<files hash>': the files hash covers the
names, sizes and modification times of every image and mask and the split lists, so changing a
file, the table or an option prepares a new dataset instead of reading a stale one (an old one can
be deleted: data_dir/segmentation_folder/<config>). Several hosts must see the same folder (shared
storage, as data_dir) to agree on the name. Errors name the file and what to do; a failed prepare
leaves nothing behind.
"""
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
from typing import Any, Iterable, Iterator, Sequence

from etils import epath
import numpy as np
import PIL.Image
import PIL.ImageOps
import tensorflow_datasets as tfds

from jaxseg.data import checks
from jaxseg.data import classes

NAME = 'segmentation_folder'
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
MASK_SUFFIXES = ('.png', '.bmp', '.tif', '.tiff', '.gif')
LOSSY_SUFFIXES = ('.jpg', '.jpeg', '.webp')  # Compression blends class colours and values.
MASK_FORMATS = ('auto', 'index', 'palette', 'rgb')
IGNORE_NAMES = ('ignore', 'void', 'unlabeled', 'unlabelled')
_JUNK = ('thumbs.db', 'desktop.ini')  # OS files beside photos; hidden files are skipped too.
_INDEX_MODES = ('L', 'I', 'I;16', 'I;16B', 'I;16L', '1', 'LA')
_MAX_SHOWN = 5
_IGNORE = classes.IGNORE_LABEL


# ---------------------------------------------------------------------------------- class tables
@dataclasses.dataclass(frozen=True)
class ClassTable:
  """A parsed class table: class k is names[k], drawn values[k] in index masks, colours[k] in RGB.

  ignore_values / ignore_colours: the mask values and colours of the table's ignore entries.
  colours is None for tables of names (and values) only.
  """
  path: str
  names: tuple[str, ...]
  values: tuple[int, ...]
  colours: tuple[tuple[int, int, int], ...] | None
  ignore_values: tuple[int, ...] = ()
  ignore_colours: tuple[tuple[int, int, int], ...] = ()


_TABLE_FORMS = (
    'JSON {"classes": [{"name": "road", "colour": [128, 64, 128]}, ...]} (or that list, or '
    '{"road": [128, 64, 128], ...}; "id"/"value" gives a mask value), CSV rows name,r,g,b or '
    'name,value (header optional), a labelmap.txt (name:r,g,b:: per line, CVAT/VOC export) or a '
    'names .txt (one class name per line, labelme2voc class_names.txt)')


def is_ignore_name(name: str) -> bool:
  return name.strip().strip('_').lower() in IGNORE_NAMES


def read_class_table(path: epath.PathLike) -> ClassTable:
  """The class table at `path` (.json, .csv/.tsv or .txt); ValueError naming the line otherwise."""
  path = epath.Path(path)
  text = checks.read_bytes(path, 'class table').decode('utf-8-sig')
  suffix = path.suffix.lower()
  if suffix == '.json':
    rows = _json_rows(text, path)
  elif suffix in ('.csv', '.tsv'):
    rows = _csv_rows(text, path)
  elif suffix == '.txt':
    rows = _txt_rows(text, path)
  else:
    raise ValueError(f'{path}: class tables are .json, .csv or .txt files: {_TABLE_FORMS}.')
  return _table_from_rows(rows, path)


def _colour(value: Any, where: str) -> tuple[int, int, int]:
  """[r, g, b], 'r,g,b', 'r g b' or '#rrggbb' as three ints 0..255."""
  if isinstance(value, str):
    text = value.strip()
    if re.fullmatch(r'#[0-9a-fA-F]{6}', text):
      return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))
    value = [v for v in re.split(r'[,\s]+', text) if v]
  try:
    rgb = tuple(int(v) for v in value)
    exact = all(float(v) == int(v) for v in value)
  except (TypeError, ValueError):
    rgb, exact = (), False
  if len(rgb) != 3 or not exact or not all(0 <= v <= 255 for v in rgb):
    raise ValueError(f'{where}: colour {value!r} is not three integers 0..255 (r, g, b) or '
                     '#rrggbb.')
  return rgb


def _value(value: Any, where: str) -> int:
  try:
    number = int(value)
    exact = float(value) == number
  except (TypeError, ValueError):
    exact = False
  if not exact or number < 0:
    raise ValueError(f'{where}: mask value {value!r} is not an integer >= 0.')
  return number


def _json_rows(text: str, path: epath.Path) -> list[tuple[str, Any, Any, str]]:
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e}). Expected {_TABLE_FORMS}.') from None
  if isinstance(data, dict) and 'classes' in data:
    data = data['classes']
  rows = []
  if isinstance(data, dict):  # {"name": [r, g, b] or value}
    for name, spec in data.items():
      where = f'{path}: class {name!r}'
      if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        rows.append((name, spec, None, where))
      else:
        rows.append((name, None, spec, where))
    return rows
  if not isinstance(data, list):
    raise ValueError(f'{path}: expected a list of classes or an object; got {type(data).__name__}.'
                     f' Expected {_TABLE_FORMS}.')
  for n, entry in enumerate(data):
    where = f'{path}: entry {n}'
    if isinstance(entry, str):
      rows.append((entry, None, None, where))
      continue
    if not isinstance(entry, dict) or not isinstance(entry.get('name'), str):
      raise ValueError(f'{where} is {entry!r}; expected {{"name": ..., "colour": [r, g, b]}} '
                       '(colour and "id"/"value" optional).')
    colour = next((entry[k] for k in ('colour', 'color', 'rgb') if k in entry), None)
    value = next((entry[k] for k in ('id', 'value', 'index') if k in entry), None)
    rows.append((entry['name'], value, colour, where))
  return rows


_NAME_COLUMNS = ('name', 'class', 'class_name', 'classname', 'label', 'label_name')
_VALUE_COLUMNS = ('id', 'value', 'index', 'class_id', 'label_id', 'pixel_value', 'pixel value')


def _csv_rows(text: str, path: epath.Path) -> list[tuple[str, Any, Any, str]]:
  lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)
           if line.strip() and not line.lstrip().startswith('#')]
  if not lines:
    raise ValueError(f'{path}: the class table is empty. Expected {_TABLE_FORMS}.')
  first = lines[0][1]
  delimiter = '\t' if '\t' in first else (';' if ';' in first and ',' not in first else ',')
  table = [(n, [c.strip() for c in cells]) for (n, _), cells in
           zip(lines, csv.reader([line for _, line in lines], delimiter=delimiter))]
  header = table[0][1]
  if len(header) > 1 and not all(re.fullmatch(r'\d+', c) for c in header[1:]):
    columns = [c.lower() for c in header]
    find = lambda names: next((i for i, c in enumerate(columns) if c in names), None)  # noqa: E731
    name_at, value_at = find(_NAME_COLUMNS), find(_VALUE_COLUMNS)
    rgb_at = [find(names) for names in (('r', 'red'), ('g', 'green'), ('b', 'blue'))]
    if name_at is None or (value_at is None and None in rgb_at):
      raise ValueError(f'{path}:{table[0][0]}: header {header} has no name column and r, g, b '
                       f'or value columns; expected e.g. "name,r,g,b" or "name,value".')
    rows = table[1:]
  else:
    width = len(header)
    if width not in (1, 2, 4):
      raise ValueError(f'{path}:{table[0][0]}: {width} columns; without a header the rows are '
                       'name (1 column), name,value (2) or name,r,g,b (4).')
    name_at, value_at = 0, (1 if width == 2 else None)
    rgb_at = [1, 2, 3] if width == 4 else [None] * 3
    rows = table
  out = []
  for n, cells in rows:
    where = f'{path}:{n}'
    needed = max(i for i in (name_at, value_at, *rgb_at) if i is not None)
    if len(cells) <= needed:
      raise ValueError(f'{where}: {len(cells)} columns, expected {needed + 1}: {cells}.')
    colour = None if None in rgb_at else [cells[i] for i in rgb_at]
    out.append((cells[name_at], None if value_at is None else cells[value_at], colour, where))
  return out


def _txt_rows(text: str, path: epath.Path) -> list[tuple[str, Any, Any, str]]:
  lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
           if line.strip() and not line.lstrip().startswith('#')]
  rows = []
  labelmap = any(':' in line for _, line in lines)
  for n, line in lines:
    where = f'{path}:{n}'
    if not labelmap:  # labelme2voc class_names.txt: names in class order.
      rows.append((line, None, None, where))
      continue
    parts = line.split(':')  # CVAT/Datumaro: label:color_rgb:parts:actions
    if len(parts) < 2:
      raise ValueError(f'{where}: {line!r} is not "name:r,g,b::" (labelmap.txt line).')
    rows.append((parts[0], None, parts[1] or None, where))
  return rows


def _table_from_rows(rows: Sequence[tuple[str, Any, Any, str]], path: epath.Path) -> ClassTable:
  if not rows:
    raise ValueError(f'{path}: the class table is empty. Expected {_TABLE_FORMS}.')
  has_colour = {colour is not None for _, _, colour, _ in rows}
  has_value = {value is not None for _, value, _, _ in rows}
  for present, what in ((has_colour, 'a colour'), (has_value, 'a mask value')):
    if len(present) > 1:
      row = next(r for r in rows if (r[2] if what == 'a colour' else r[1]) is None)
      raise ValueError(f'{row[3]}: class {row[0]!r} has no {what[2:]} while others have one; give '
                       f'every class {what} or none.')
  parsed, seen = [], {}
  for name, value, colour, where in rows:
    name = str(name).strip()
    if not name:
      raise ValueError(f'{where}: empty class name.')
    if name in seen:
      raise ValueError(f'{where}: class {name!r} is listed twice (also {seen[name]}).')
    seen[name] = where
    parsed.append((name, None if value is None else _value(value, where),
                   None if colour is None else _colour(colour, where), where))
  for index, what in ((1, 'mask value'), (2, 'colour')):
    owners = {}
    for row in parsed:
      key = row[index]
      if key is not None and key in owners:
        raise ValueError(f'{row[3]}: classes {owners[key]!r} and {row[0]!r} have the same {what} '
                         f'{key}; each needs its own.')
      owners.setdefault(key, row[0])
  kept = [row for row in parsed if not is_ignore_name(row[0])]
  dropped = [row for row in parsed if is_ignore_name(row[0])]
  if not kept:
    raise ValueError(f'{path}: every entry is an ignore entry ({", ".join(r[0] for r in dropped)});'
                     ' the table needs at least one class.')
  if len(kept) > _IGNORE:
    raise ValueError(f'{path}: {len(kept)} classes; labels are uint8 with 255 = ignore, so at most '
                     f'{_IGNORE} classes.')
  with_values = True in has_value
  if with_values:
    kept.sort(key=lambda row: row[1])
  colours = tuple(row[2] for row in kept) if True in has_colour else None
  return ClassTable(
      path=str(path), names=tuple(row[0] for row in kept),
      values=tuple(row[1] for row in kept) if with_values else tuple(range(len(kept))),
      colours=colours,
      ignore_values=tuple(row[1] for row in dropped if row[1] is not None),
      ignore_colours=tuple(row[2] for row in dropped if row[2] is not None))


# ---------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  """How to read one folder; made from config.data by `builder_config` (paths resolved)."""
  root: str = ''
  images: str = 'images'
  masks: str = 'masks'
  mask_format: str = 'auto'
  table: ClassTable | None = None
  ignore_value: int = 255
  ignore_colour: tuple[int, ...] = ()
  splits: str = ''  # Folder of split lists (absolute); '' = seeded val fraction.
  val_fraction: float = 0.1
  split_seed: int = 0
  fingerprint: str = ''  # Of the files (names, sizes, modification times).

  def __repr__(self) -> str:  # TFDS logs custom configs; the table and hashes are noise there.
    return f'FolderConfig({self.name!r}, root={self.root!r})'

  @property
  def images_dir(self) -> epath.Path:
    return _under(epath.Path(self.root), self.images)

  @property
  def masks_dir(self) -> epath.Path:
    return _under(epath.Path(self.root), self.masks)


def _under(root: epath.Path, relative: str) -> epath.Path:
  path = epath.Path(os.path.expanduser(str(relative)))
  return path if path.is_absolute() else root / path


def _root(data: Any) -> epath.Path:
  folder = str(data.folder).strip()
  if not folder:
    raise ValueError(f"config.data.dataset={data.dataset!r} reads your own folder of images and "
                     'masks: set config.data.folder (--config.data.folder=PATH, the folder holding '
                     f'{data.folder_images}/ and {data.folder_masks}/).')
  return epath.Path(os.path.abspath(os.path.expanduser(folder)))


def _table_path(data: Any, root: epath.Path) -> epath.Path | None:
  return _under(root, data.folder_classes) if str(data.folder_classes).strip() else None


def _ignore_colour(data: Any) -> tuple[int, ...]:
  colour = tuple(data.folder_ignore_colour)
  return _colour(colour, 'config.data.folder_ignore_colour') if colour else ()


def _layout_hint(root: epath.Path) -> str:
  folders = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
  hint = f' {root} holds the folders: {", ".join(folders) or "none"}.'
  if 'JPEGImages' in folders and 'SegmentationClass' in folders:
    hint += (' It looks like a VOC export: --config.data.folder_images=JPEGImages '
             '--config.data.folder_masks=SegmentationClass'
             + (' --config.data.folder_splits=ImageSets/Segmentation'
                if (root / 'ImageSets' / 'Segmentation').is_dir() else '')
             + (' --config.data.folder_classes=labelmap.txt' if (root / 'labelmap.txt').exists()
                else ''))
  return hint


def builder_config(data: Any) -> FolderConfig:
  """The FolderConfig of config.data (its folder_* fields); errors name the field."""
  root = _root(data)
  if not root.is_dir():
    raise FileNotFoundError(f'config.data.folder={data.folder!r}: {root} is not a folder.')
  for field in ('folder_images', 'folder_masks'):
    path = _under(root, data[field])
    if not path.is_dir():
      raise FileNotFoundError(f'config.data.{field}={data[field]!r}: {path} is not a folder.'
                              + _layout_hint(root))
  mask_format = str(data.folder_mask_format)
  if mask_format not in MASK_FORMATS:
    raise ValueError(f'config.data.folder_mask_format={mask_format!r} is unknown; use one of '
                     f'{MASK_FORMATS}.')
  table_path = _table_path(data, root)
  table = read_class_table(table_path) if table_path is not None else None
  ignore_value = int(data.folder_ignore_value)
  if ignore_value < 0:
    raise ValueError(f'config.data.folder_ignore_value={ignore_value} must be a mask value >= 0 '
                     f'(255 is ignore anyway).')
  ignore_colour = _ignore_colour(data)
  splits = ''
  if str(data.folder_splits).strip():
    splits_dir = _under(root, data.folder_splits)
    if not splits_dir.is_dir():
      raise FileNotFoundError(f'config.data.folder_splits={data.folder_splits!r}: {splits_dir} is '
                              'not a folder (of train.txt, val.txt, ...; "" = a seeded val '
                              'fraction).')
    splits = str(splits_dir)
  val_fraction = float(data.folder_val_fraction)
  if not 0 <= val_fraction < 1:
    raise ValueError(f'config.data.folder_val_fraction={val_fraction} must lie in [0, 1).')
  config = FolderConfig(
      name='pending', root=str(root), images=str(data.folder_images),
      masks=str(data.folder_masks), mask_format=mask_format, table=table,
      ignore_value=ignore_value, ignore_colour=ignore_colour, splits=splits,
      val_fraction=val_fraction, split_seed=int(data.folder_split_seed))
  options = _digest(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str))
  fingerprint = _files_fingerprint(config)
  slug = re.sub(r'[^a-z0-9]+', '_', root.name.lower()).strip('_')[:32] or 'folder'
  return dataclasses.replace(
      config, name=f'{slug}-{options[:8]}-{fingerprint[:8]}', fingerprint=fingerprint,
      description=f'Images and masks of {root}.')


def _digest(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()


def _walk(folder: epath.Path) -> Iterator[tuple[str, os.stat_result]]:
  """(path relative to folder, stat) of every file below it, hidden files and OS junk skipped."""
  for parent, dirs, files in os.walk(folder, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for name in sorted(files):
      if name.startswith('.') or name.lower() in _JUNK:
        continue
      path = os.path.join(parent, name)
      yield os.path.relpath(path, folder).replace(os.sep, '/'), os.stat(path)


def _files_fingerprint(config: FolderConfig) -> str:
  h = hashlib.sha256()
  for folder in (config.images_dir, config.masks_dir):
    h.update(f'{folder}\n'.encode())
    for rel, st in _walk(folder):
      h.update(f'{rel}\t{st.st_size}\t{st.st_mtime_ns}\n'.encode())
  if config.splits:
    for path in sorted(epath.Path(config.splits).glob('*.txt')):
      h.update(path.name.encode() + b'\n' + path.read_bytes())
  return h.hexdigest()


# ---------------------------------------------------------------------------------------- palette
def palette_of(table: ClassTable | None, ignore_colour: Sequence[int] = (),
               mask_palette: np.ndarray | None = None) -> np.ndarray:
  """(256, 3) uint8: row k the colour of class k, row 255 the ignore colour.

  The table's colours; for a table without colours (or none), the masks' own PNG palette at each
  class's mask value, else VOC's colours.
  """
  base = classes.voc_palette()
  if mask_palette is not None:
    base[:len(mask_palette)] = mask_palette[:256]
  palette = base.copy()
  if table is not None:
    k = len(table.names)
    if table.colours is not None:
      palette[:k] = table.colours
    else:
      palette[:k] = [base[v] if v < 256 else base[i] for i, v in enumerate(table.values)]
    if table.ignore_colours:
      palette[_IGNORE] = table.ignore_colours[0]
  if len(ignore_colour):
    palette[_IGNORE] = ignore_colour
  return palette


def _first_mask_palette(masks_dir: epath.Path) -> np.ndarray | None:
  """The PNG palette of the first mask (sorted), when it is a palette image."""
  for rel, _ in _walk(masks_dir):
    if os.path.splitext(rel)[1].lower() in MASK_SUFFIXES:
      try:
        with PIL.Image.open(masks_dir / rel) as mask:
          colours = mask.getpalette() if mask.mode == 'P' else None
      except (OSError, SyntaxError, ValueError):
        return None  # Reported by the prepare, which reads every mask.
      return None if colours is None else np.array(colours, np.uint8).reshape(-1, 3)
  return None


def folder_spec(data: Any) -> classes.DatasetSpec:
  """Class names and palette of config.data's folder dataset (classes.spec_for_data).

  With a class table: its classes and colours (the table must be readable: a relative
  config.data.folder_classes is under config.data.folder). Without one: classes '0'..
  (config.data.num_classes of them) in the masks' PNG palette when the folder is here, else VOC's
  (also for a recipe whose folder is not set yet).
  """
  root = _root(data) if str(data.folder).strip() else None
  ignore_colour = _ignore_colour(data)
  if str(data.folder_classes).strip():
    table_path = epath.Path(os.path.expanduser(str(data.folder_classes)))
    if root is None and not table_path.is_absolute():
      raise ValueError(f'config.data.folder_classes={data.folder_classes!r} is relative to '
                       'config.data.folder, which is not set: set both (or an absolute path).')
    table_path = _under(root, data.folder_classes) if root is not None else table_path
    if not table_path.exists():
      raise FileNotFoundError(
          f'config.data.folder_classes={data.folder_classes!r}: {table_path} is missing (a '
          'relative path is under config.data.folder). Pass --config.data.folder_classes= with '
          "the table's absolute path.")
    table = read_class_table(table_path)
    palette = palette_of(table, ignore_colour)
    names = table.names
  else:
    masks_dir = _under(root, data.folder_masks) if root is not None else None
    mask_palette = (_first_mask_palette(masks_dir) if masks_dir is not None and masks_dir.is_dir()
                    else None)
    palette = palette_of(None, ignore_colour, mask_palette)
    names = tuple(str(i) for i in range(int(data.num_classes)))
  palette.setflags(write=False)
  return classes.DatasetSpec(len(names), tuple(names), _IGNORE, palette)


# --------------------------------------------------------------------------------- files and splits
@dataclasses.dataclass(frozen=True)
class Pair:
  stem: str
  image: epath.Path
  mask: epath.Path


def _shown(items: Sequence[Any]) -> str:
  text = '\n  '.join(str(i) for i in items[:_MAX_SHOWN])
  more = f'\n  ... and {len(items) - _MAX_SHOWN} more' if len(items) > _MAX_SHOWN else ''
  return f'\n  {text}{more}'


def _files_by_stem(folder: epath.Path, suffixes: Sequence[str], what: str, field: str
                   ) -> dict[str, epath.Path]:
  """{stem: path} of the files below `folder` (stem: relative path without extension)."""
  found, unsupported, lossy, twice = {}, [], [], []
  for rel, _ in _walk(folder):
    stem, suffix = os.path.splitext(rel)
    path = folder / rel
    if suffix.lower() not in suffixes:
      (lossy if what == 'mask' and suffix.lower() in LOSSY_SUFFIXES else unsupported).append(path)
    elif stem in found:
      twice.append(f'{found[stem]} and {path}')
    else:
      found[stem] = path
  if lossy:
    raise ValueError(f'{len(lossy)} masks in {folder} are JPEG/WebP files:{_shown(lossy)}\nLossy '
                     'compression blends neighbouring classes into colours and values of no '
                     'class; export the masks as PNG.')
  if unsupported:
    raise ValueError(f'{len(unsupported)} files in {folder} ({field}) are not {what} files '
                     f'({", ".join(suffixes)}):{_shown(unsupported)}\nMove them out of the folder '
                     'or convert them.')
  if twice:
    raise ValueError(f'{len(twice)} {what} stems in {folder} have two files (images and masks '
                     f'pair by name without extension):{_shown(twice)}\nKeep one of each.')
  return found


def seeded_split(stems: Iterable[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
  """(train, val): val is the round(n x fraction) stems (at least 1) of smallest sha256(seed:stem).

  Depends on the set of stems and the seed only (not on file order), and adding images moves
  few existing ones between the splits.
  """
  stems = sorted(set(stems))
  if fraction <= 0:
    return stems, []
  count = min(max(1, round(len(stems) * fraction)), len(stems) - 1)
  ranked = sorted(stems, key=lambda s: hashlib.sha256(f'{seed}:{s}'.encode()).hexdigest())
  val = set(ranked[:count])
  return [s for s in stems if s not in val], [s for s in stems if s in val]


def _read_lists(splits: epath.Path, known: set[str]) -> dict[str, list[str]]:
  lists = {}
  for path in sorted(splits.glob('*.txt')):
    name = path.stem
    if not re.fullmatch(r'[A-Za-z0-9_]+', name):
      raise ValueError(f'{path}: split names are letters, digits and _ (TFDS); rename the file.')
    stems = []
    for stem in checks.read_id_list(path):
      base, suffix = os.path.splitext(stem)
      if stem not in known and suffix.lower() in IMAGE_SUFFIXES + MASK_SUFFIXES:
        stem = base  # 'a.jpg' lists the stem 'a'.
      stems.append(stem)
    if not stems:
      raise ValueError(f'{path}: the split list is empty.')
    lists[name] = list(dict.fromkeys(stems))
  if 'train' not in lists:
    found = ', '.join(p.name for p in sorted(splits.glob('*.txt'))) or 'none'
    raise FileNotFoundError(f'{splits} has no train.txt (found: {found}); '
                            'config.data.folder_splits needs train.txt (and val.txt, test.txt).')
  return lists


def scan_folder(config: FolderConfig) -> dict[str, list[Pair]]:
  """{split: pairs (sorted by stem)}: every file paired, every listed stem present."""
  images = _files_by_stem(config.images_dir, IMAGE_SUFFIXES, 'image', 'config.data.folder_images')
  masks = _files_by_stem(config.masks_dir, MASK_SUFFIXES, 'mask', 'config.data.folder_masks')
  if not images:
    raise FileNotFoundError(f'{config.images_dir} (config.data.folder_images) holds no images '
                            f'({", ".join(IMAGE_SUFFIXES)}).')
  pairing = (f'Images and masks pair by name without extension: {config.images_dir}/a.jpg <-> '
             f'{config.masks_dir}/a.png.')
  if config.splits:
    lists = _read_lists(epath.Path(config.splits), set(images) | set(masks))
    listed = sorted({s for stems in lists.values() for s in stems})
    for found, folder, what in ((images, config.images_dir, 'images'),
                                (masks, config.masks_dir, 'masks')):
      missing = [s for s in listed if s not in found]
      if missing:
        raise FileNotFoundError(
            f'{len(missing)} stems listed in {config.splits}/*.txt have no {what} in {folder}:'
            f'{_shown(missing)}\nFix the lists or add the files. {pairing}')
    held_out = {name: lists[name] for name in ('val', 'test') if name in lists}
    checks.check_disjoint({'train.txt': lists['train']},
                          {f'{name}.txt': stems for name, stems in held_out.items()})
  else:
    for found, other, folder, what in (
        (images, masks, config.masks_dir, 'images without a mask'),
        (masks, images, config.images_dir, 'masks without an image')):
      alone = sorted(found[s] for s in found if s not in other)
      if alone:
        raise FileNotFoundError(
            f'{len(alone)} {what} (looked for in {folder}):{_shown(alone)}\n{pairing} Remove or '
            'move the unpaired files, or list the pairs to use in split lists '
            '(config.data.folder_splits).')
    stems = sorted(images)
    if config.val_fraction > 0 and len(stems) < 2:
      raise ValueError(f'{config.images_dir} has {len(stems)} image: a val split needs at least 2 '
                       'pairs; add images or set config.data.folder_val_fraction=0.')
    train, val = seeded_split(stems, config.val_fraction, config.split_seed)
    lists = {'train': train, **({'val': val} if val else {})}
  return {name: [Pair(s, images[s], masks[s]) for s in sorted(stems)]
          for name, stems in lists.items()}


# ------------------------------------------------------------------------------------ reading
def read_photo(path: epath.Path, mask_hw: Sequence[int]) -> tuple[bytes, tuple[int, int]]:
  """Encoded RGB image TF can decode and its (H, W), turned as its EXIF orientation says.

  Annotation tools (labelme, CVAT) draw on the turned photo; the stored pixels are kept when the
  mask has their size and not the turned one.
  """
  data, image_hw = checks.read_image(path)
  with PIL.Image.open(path) as image:
    orientation = image.getexif().get(0x0112, 1)
    if orientation not in range(2, 9):
      return data, image_hw
    turned = PIL.ImageOps.exif_transpose(image)
  turned_hw = turned.size[::-1]
  if tuple(mask_hw) != turned_hw and tuple(mask_hw) == tuple(image_hw):
    return data, image_hw
  buffer = io.BytesIO()
  turned.convert('RGB').save(buffer, format='PNG')
  return buffer.getvalue(), turned_hw


def _value_list(values: np.ndarray, counts: np.ndarray) -> str:
  order = np.argsort(-counts, kind='stable')[:_MAX_SHOWN]
  shown = ', '.join(f'{int(values[i])} ({int(counts[i])} px)' for i in order)
  return shown + (f' and {len(values) - _MAX_SHOWN} more' if len(values) > _MAX_SHOWN else '')


def _colour_list(codes: np.ndarray, counts: np.ndarray) -> str:
  order = np.argsort(-counts, kind='stable')[:_MAX_SHOWN]
  shown = ', '.join(f'({c >> 16 & 255}, {c >> 8 & 255}, {c & 255}) {int(counts[i])} px'
                    for i, c in ((i, int(codes[i])) for i in order))
  return shown + (f' and {len(codes) - _MAX_SHOWN} more' if len(codes) > _MAX_SHOWN else '')


def _index_label(raw: np.ndarray, config: FolderConfig, path: epath.Path) -> np.ndarray:
  values, inverse, counts = np.unique(raw, return_inverse=True, return_counts=True)
  table = config.table
  mapping = np.full(len(values), -1, np.int64)
  if table is not None:
    lookup = {v: k for k, v in enumerate(table.values)}
    ignored = {config.ignore_value, _IGNORE, *table.ignore_values}
  else:
    lookup = {}
    ignored = {config.ignore_value, _IGNORE}
  for i, v in enumerate(values.tolist()):
    if v in lookup:
      mapping[i] = lookup[v]
    elif v in ignored:
      mapping[i] = _IGNORE
    elif table is None and 0 <= v < _IGNORE:
      mapping[i] = v
  bad = mapping < 0
  if bad.any():
    if table is not None:
      classes_text = (f'the mask values of the {len(table.names)} classes of {table.path} '
                      f'({", ".join(map(str, table.values[:8]))}'
                      f'{", ..." if len(table.values) > 8 else ""})')
    else:
      classes_text = 'a class 0..254 (without a class table, config.data.folder_classes)'
    raise ValueError(
        f'{path}: mask values {_value_list(values[bad], counts[bad])} are neither {classes_text} '
        f'nor ignore (255, config.data.folder_ignore_value={config.ignore_value}). Add them to '
        'the class table, set config.data.folder_ignore_value, or fix the mask.')
  return mapping[inverse].reshape(raw.shape).astype(np.uint8)


def _check_png_palette(png_palette: np.ndarray | None, raw: np.ndarray, config: FolderConfig,
                       path: epath.Path) -> None:
  """A palette mask read as indices must draw each class in the table's colour (mode 'auto')."""
  table = config.table
  if table is None or table.colours is None or png_palette is None:
    return
  present = set(np.unique(raw).tolist())
  wrong = []
  for k, v in enumerate(table.values):
    if v in present and v < len(png_palette) and tuple(png_palette[v]) != table.colours[k]:
      wrong.append(f'{v} ({table.names[k]}): PNG {tuple(int(c) for c in png_palette[v])}, table '
                   f'{table.colours[k]}')
  if wrong:
    raise ValueError(
        f'{path}: the palette PNG draws indices in colours other than the class table '
        f'{table.path}: {"; ".join(wrong[:3])}. If the colours are the classes, set '
        "config.data.folder_mask_format=rgb (look colours up in the table); if the indices are, "
        'set config.data.folder_mask_format=palette.')


def _rgb_label(rgba: np.ndarray, config: FolderConfig, path: epath.Path) -> np.ndarray:
  table = config.table
  codes = (rgba[..., 0].astype(np.int64) << 16) | (rgba[..., 1].astype(np.int64) << 8) | rgba[
      ..., 2]
  codes = np.where(rgba[..., 3] == 0, -1, codes)  # Transparent: not annotated.
  values, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
  pack = lambda c: (c[0] << 16) | (c[1] << 8) | c[2]  # noqa: E731
  lookup = {pack(c): k for k, c in enumerate(table.colours)}
  ignored = {-1, *(pack(c) for c in table.ignore_colours)}
  if len(config.ignore_colour):
    ignored.add(pack(config.ignore_colour))
  mapping = np.array([lookup.get(v, _IGNORE if v in ignored else -1) for v in values.tolist()])
  bad = mapping < 0
  if bad.any():
    raise ValueError(
        f'{path}: {int(counts[bad].sum())} pixels have colours that are no class of {table.path} '
        f'(nor config.data.folder_ignore_colour={tuple(config.ignore_colour)}): '
        f'{_colour_list(values[bad], counts[bad])}. Add them to the table, or repaint them; '
        'anti-aliased brushes and lossy exports create colours in between the classes.')
  return mapping[inverse].reshape(codes.shape).astype(np.uint8)


def read_mask(path: epath.Path, config: FolderConfig) -> np.ndarray:
  """A mask file as uint8 labels (class indices of the table, 255 = ignore)."""
  data = checks.read_bytes(path, 'mask')
  fmt = config.mask_format
  try:
    with PIL.Image.open(io.BytesIO(data)) as mask:
      mask.load()
      mode = mask.mode
      supported = mode in _INDEX_MODES + ('P', 'RGB', 'RGBA')
      png_palette = (np.array(mask.getpalette(), np.uint8).reshape(-1, 3) if mode == 'P'
                     else None)
      as_colours = mode in ('RGB', 'RGBA') or (fmt == 'rgb' and mode in ('P', 'L', 'LA'))
      pixels = np.array(mask.convert('RGBA') if as_colours else mask) if supported else None
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f'{path}: unreadable mask ({e}). Replace the file.') from e
  if pixels is None:
    raise ValueError(f'{path}: mask has PIL mode {mode!r}; masks are greyscale or palette images '
                     'of class values, or RGB(A) colour masks.')
  if as_colours:
    table = config.table
    colour_table = table is not None and table.colours is not None
    if fmt == 'rgb' or (fmt == 'auto' and colour_table):
      if not colour_table:
        raise ValueError(f'{path}: reading colours needs a class table with colours: set '
                         f'config.data.folder_classes to one: {_TABLE_FORMS}.')
      return _rgb_label(pixels, config, path)
    grey = (np.array_equal(pixels[..., 0], pixels[..., 1])
            and np.array_equal(pixels[..., 1], pixels[..., 2]))
    if fmt == 'palette' or not grey:
      raise ValueError(
          f'{path}: mask is an {mode} colour image, which config.data.folder_mask_format={fmt!r}'
          f'{" without a colour table" if not colour_table else ""} cannot read as class values. '
          'Give a class table with colours (config.data.folder_classes) and folder_mask_format '
          "'rgb' or 'auto', or save the masks as greyscale or palette PNGs of class values.")
    # Three equal channels: a class-index mask saved as RGB (alpha 0 = ignore).
    raw = np.where(pixels[..., 3] == 0, _IGNORE, pixels[..., 0].astype(np.int64))
    return _index_label(raw, config, path)
  if fmt == 'palette' and mode != 'P':
    raise ValueError(f'{path}: mask has PIL mode {mode!r}, not a palette (P) PNG as '
                     "config.data.folder_mask_format='palette' says; use 'index' or 'auto'.")
  if mode == 'LA':  # Grey values; alpha 0 = ignore.
    raw = np.where(pixels[..., 1] == 0, _IGNORE, pixels[..., 0].astype(np.int64))
  else:
    raw = pixels.astype(np.int64)
  if fmt == 'auto' and mode == 'P':
    _check_png_palette(png_palette, raw, config, path)
  return _index_label(raw, config, path)


# ---------------------------------------------------------------------------------------- builder
class SegmentationFolder(tfds.core.GeneratorBasedBuilder):
  """Your own images and masks (config.data.folder); see the module docstring."""

  name = NAME
  # TFDS 4.9.10 derives this with the importlib_resources backport, which it does not install on
  # Python >= 3.9 (tensorflow/datasets#11212); the module file is what it would find.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images and masks paired by stem; index, palette and colour masks.'}

  def _folder_config(self) -> FolderConfig:
    config = self.builder_config
    if not isinstance(config, FolderConfig):
      raise ValueError(f"{NAME} reads a folder named by a FolderConfig: use jaxseg with "
                       "config.data.dataset='segmentation_folder' and config.data.folder=PATH, or "
                       f'tfds.builder({NAME!r}, config=jaxseg.data.folder.builder_config('
                       'config.data)).')
    return config

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    metadata = tfds.core.MetadataDict(ignore_label=_IGNORE)
    if isinstance(config, FolderConfig):
      mask_palette = _first_mask_palette(config.masks_dir) if config.table is None else None
      palette = palette_of(config.table, config.ignore_colour, mask_palette)
      metadata.update(source=config.root, palette=palette.tolist(),
                      class_names=list(config.table.names) if config.table else [])
    return self.dataset_info_from_configs(
        description=__doc__,
        features=checks.segmentation_features(),
        supervised_keys=('image', 'label'),
        metadata=metadata,
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    self._pixel_counts = {}
    result = super()._download_and_prepare(dl_manager, download_config)
    self._check_classes()  # After every split is written; a raise discards them all.
    return result

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self._folder_config()
    return {split: self._generate_examples(split, pairs)
            for split, pairs in scan_folder(config).items()}

  def _generate_examples(self, split: str, pairs: Sequence[Pair]):
    config = self._folder_config()
    counts = self._pixel_counts.setdefault(split, np.zeros(256, np.int64))
    for pair in pairs:
      label = read_mask(pair.mask, config)
      image, image_hw = read_photo(pair.image, label.shape)
      checks.check_same_size(image_hw, label, pair.image, pair.mask)
      counts += np.bincount(label.ravel(), minlength=256)
      yield pair.stem, {'image': image, 'label': label, 'id': pair.stem}

  def _check_classes(self) -> None:
    """Sets the class names of a table-less folder; a train split of one class is an error."""
    config = self._folder_config()
    total = sum(self._pixel_counts.values())
    if config.table is None:
      present = np.flatnonzero(total[:_IGNORE])
      count = int(present[-1]) + 1 if len(present) else 0
      absent = [v for v in range(count) if not total[v] and v != config.ignore_value]
      if absent:
        raise ValueError(
            f'The masks of {config.masks_dir} hold the values {present.tolist()[:20]}: '
            f'{absent[:10]} in between never occur. Without a class table every value 0..'
            f'{count - 1} is a class; write one (config.data.folder_classes, e.g. a CSV of '
            'name,value rows) naming the classes and their mask values, or fix the masks.')
      self.info.metadata['class_names'] = [str(v) for v in range(count)]
    names = self.info.metadata['class_names']
    train = self._pixel_counts.get('train', np.zeros(256, np.int64))
    seen = np.flatnonzero(train[:len(names)])
    if len(seen) < 2:
      binary = ' Masks of 0 and 255 only? 255 is ignore: name it as a class in a table (CSV ' \
               'rows "background,0" and "object,255").' if train[_IGNORE] else ''
      raise ValueError(
          f'The train masks of {config.masks_dir} hold {len(seen)} class '
          f'({", ".join(names[v] for v in seen) or "none"}) besides ignore: there is nothing to '
          f'tell apart.{binary}')
    self.info.metadata['pixel_counts'] = {
        split: counts[:len(names)].tolist() + [int(counts[_IGNORE])]
        for split, counts in self._pixel_counts.items()}
