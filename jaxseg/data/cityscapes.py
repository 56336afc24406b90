"""Cityscapes, fine annotations (Cordts et al., CVPR 2016), as the TFDS dataset 'cityscapes_fine'.

Sources: leftImg8bit_trainvaltest.zip (11 GB) and gtFine_trainvaltest.zip (241 MB), manual
downloads from https://www.cityscapes-dataset.com/downloads/ (login needed), as zips in manual_dir
or extracted there:
  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png  (2048x1024 RGB)
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   (greyscale, 0..33)
Every image needs its labelIds file; gtFine's other files (color, instanceIds, polygons) are not
read. Example ids are <city>_<seq>_<frame> ('aachen_000000_000019').

Splits: train 2,975 (18 cities), val 500 (frankfurt, lindau, munster), test 1,525 (6 cities),
checked when a split holds all its official cities (fewer cities: a subset, not compared). gtFine's
test annotations are placeholders (void ids only, such as ego vehicle), so test labels are all 255
and test scores come from the benchmark server alone.

Labels: gtFine stores labelIds (34 ids, 0..33). They become the 19 trainIds of cityscapesscripts'
helpers/labels.py (0 road .. 18 bicycle, jaxseg.data.classes.CITYSCAPES_CLASSES), the classes the
benchmark scores; the other 15 ids (void, and parking, rail track, guard rail, bridge, tunnel,
polegroup, caravan, trailer, which are not evaluated) become 255. The stored label is the trainId
map; a labelId above 33 stops the prepare naming the file (license plate, id -1, is never drawn
into the PNGs; a 255 suggests a labelTrainIds file in the labelIds' place).

Images are kept full size, their PNG bytes as in the zip, whatever their size. PSPNet (Zhao et al.,
CVPR 2017; hszhao/semseg config/cityscapes/cityscapes_pspnet101.yaml) trains on 713x713 crops
(random scale 0.5..2, rotation +-10 degrees) and evaluates the full 2048x1024 images (base_size
2048, i.e. no resize at scale 1) with sliding 713x713 windows at stride ceil(713 * 2/3) = 476.

Why not TFDS's own 'cityscapes' builder (tensorflow_datasets/datasets/cityscapes): it runs on TFDS
4.9.10 (a fixture of 2048x1024 zips prepares and reads), but its examples are
{'image_id', 'image_left', 'segmentation_label'} with labelIds (34 ids, a (H, W, 1) PNG), split
'validation', so every jaxseg reader (train/eval pipelines, DeconvNet windows, notebooks, predict
examples) would need a per-dataset remapping of names, shapes and ids. Its shapes are fixed at
1024x2048: other sizes prepare but fail when read. It accepts zips only and checks neither label
values nor image/label sizes. This builder writes the format of every jaxseg dataset
(checks.segmentation_features: image, trainId label with 255 = ignore, id) and reuses TFDS's file
matching: images found per city folder, the id taken from the file name
(<city>_<seq>_<frame>_leftImg8bit.png), the label at gtFine/<split>/<city>/<id>_gtFine_labelIds.png.
"""
import re

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxseg.data import checks
from jaxseg.data.classes import CITYSCAPES_CLASSES, IGNORE_LABEL

DOWNLOADS_URL = 'https://www.cityscapes-dataset.com/downloads/'
ARCHIVES = {'leftImg8bit': 'leftImg8bit_trainvaltest.zip', 'gtFine': 'gtFine_trainvaltest.zip'}
SPLIT_SIZES = {'train': 2975, 'val': 500, 'test': 1525}
# Images per city in the official zips (train as counted in hszhao/semseg's list/fine_train.txt;
# val and test sum to their official sizes). They only name the short cities in an error.
CITY_SIZES = {
    'train': {'aachen': 174, 'bochum': 96, 'bremen': 316, 'cologne': 154, 'darmstadt': 85,
              'dusseldorf': 221, 'erfurt': 109, 'hamburg': 248, 'hanover': 196, 'jena': 119,
              'krefeld': 99, 'monchengladbach': 94, 'strasbourg': 365, 'stuttgart': 196,
              'tubingen': 144, 'ulm': 95, 'weimar': 142, 'zurich': 122},
    'val': {'frankfurt': 267, 'lindau': 59, 'munster': 174},
    'test': {'berlin': 544, 'bielefeld': 181, 'bonn': 46, 'leverkusen': 58, 'mainz': 298,
             'munich': 398},
}

# (name, trainId) of labelIds 0..33, transcribed from cityscapesscripts helpers/labels.py (v2.3.0);
# trainIds 255 (and license plate's -1, id -1, absent from the PNGs) are ignored.
LABELS = (
    ('unlabeled', 255), ('ego vehicle', 255), ('rectification border', 255), ('out of roi', 255),
    ('static', 255), ('dynamic', 255), ('ground', 255), ('road', 0), ('sidewalk', 1),
    ('parking', 255), ('rail track', 255), ('building', 2), ('wall', 3), ('fence', 4),
    ('guard rail', 255), ('bridge', 255), ('tunnel', 255), ('pole', 5), ('polegroup', 255),
    ('traffic light', 6), ('traffic sign', 7), ('vegetation', 8), ('terrain', 9), ('sky', 10),
    ('person', 11), ('rider', 12), ('car', 13), ('truck', 14), ('bus', 15), ('caravan', 255),
    ('trailer', 255), ('train', 16), ('motorcycle', 17), ('bicycle', 18))
NUM_LABEL_IDS = len(LABELS)  # 34: labelIds 0..33.
TRAIN_ID_OF_LABEL_ID = np.array([train_id for _, train_id in LABELS], np.uint8)

_IMAGE_SUFFIX = '_leftImg8bit.png'
_LABEL_SUFFIX = '_gtFine_labelIds.png'
_ID_PATTERN = re.compile(r'([a-z-]+)_\d+_\d+')  # TFDS's LEFT_IMAGE_FILE_RE, no suffix.
_LAYOUT = (f'leftImg8bit/{{train,val,test}}/<city>/<city>_<seq>_<frame>{_IMAGE_SUFFIX} and '
           f'gtFine/{{train,val,test}}/<city>/<city>_<seq>_<frame>{_LABEL_SUFFIX}')


def label_ids_to_train_ids(label_ids: np.ndarray, path: epath.PathLike = '<array>') -> np.ndarray:
  """gtFine labelIds (0..33) to trainIds (0..18, 255 = ignore), uint8 of the same shape.

  Raises:
    ValueError: naming `path`, if a value is not a labelId.
  """
  label_ids = np.asarray(label_ids)
  if label_ids.dtype == np.uint8:  # What the PNGs decode to: a bincount, no sort.
    values = np.flatnonzero(np.bincount(label_ids.ravel(), minlength=256))
  else:
    values = np.unique(label_ids)
  bad = [int(v) for v in values if not 0 <= v < NUM_LABEL_IDS]
  if bad:
    raise ValueError(
        f'{path}: values {bad[:5]} are not Cityscapes labelIds (0..{NUM_LABEL_IDS - 1}, '
        'cityscapesscripts helpers/labels.py). Expected the original gtFine '
        f'*{_LABEL_SUFFIX} file (not labelTrainIds or color); replace it from '
        f'{ARCHIVES["gtFine"]}.')
  return TRAIN_ID_OF_LABEL_ID[label_ids]


def check_official_sizes(split: str, city_counts: dict[str, int]) -> None:
  """With all of a split's official cities present, its image count must be the official one.

  city_counts: images found per city folder. Splits with fewer cities are subsets: not compared.
  """
  official = CITY_SIZES[split]
  if not set(official) <= set(city_counts):
    return
  found = sum(city_counts[c] for c in official)
  if found != SPLIT_SIZES[split]:
    short = ', '.join(f'{c} {city_counts[c]} (expected {n})' for c, n in official.items()
                      if city_counts[c] != n)
    raise ValueError(
        f'Cityscapes split {split} has {found} images in its {len(official)} official cities, '
        f'expected {SPLIT_SIZES[split]} ({short or "per-city counts as expected"}): is '
        f'{ARCHIVES["leftImg8bit"]} completely extracted?')


class CityscapesFine(tfds.core.GeneratorBasedBuilder):
  """Cityscapes gtFine: 19 train classes, 255 = ignore; images full size."""

  name = 'cityscapes_fine'  # TFDS registers 'cityscapes' itself (labelIds, other feature names).
  # TFDS 4.9.10 derives this with the importlib_resources backport, which it does not install on
  # Python >= 3.9 (tensorflow/datasets#11212); the module file is what it would find.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'gtFine train/val/test, labelIds mapped to the 19 trainIds.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Cityscapes needs a login: download {ARCHIVES['leftImg8bit']} and {ARCHIVES['gtFine']}
  from {DOWNLOADS_URL} (or with cityscapesscripts:
  csDownload -d <manual_dir> {ARCHIVES['leftImg8bit']} {ARCHIVES['gtFine']}).
  Put the zips in manual_dir, or their extracted folders:
    <manual_dir>/{_LAYOUT}
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=checks.segmentation_features(),
        supervised_keys=('image', 'label'),
        homepage='https://www.cityscapes-dataset.com',
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(class_names=list(CITYSCAPES_CLASSES),
                                        ignore_label=IGNORE_LABEL),
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    # Kept so that a manual_dir the user names but left empty is an error, not a silent default.
    self._requested_manual_dir = download_config.manual_dir if download_config else None
    return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    images_root, labels_root = self._sources(dl_manager)
    rows = {split: _split_files(images_root, labels_root, split) for split in SPLIT_SIZES}
    checks.require_files(
        sorted(label for split_rows in rows.values() for _, _, label in split_rows),
        f'gtFine *{_LABEL_SUFFIX} files of leftImg8bit images are',
        f'Every image needs its labels: re-extract {ARCHIVES["gtFine"]} (expected layout under '
        f'{labels_root.parent}: {_LAYOUT}).')
    ids = {split: [i for i, _, _ in split_rows] for split, split_rows in rows.items()}
    checks.check_disjoint({'train': ids['train']}, {'val': ids['val'], 'test': ids['test']})
    return {split: self._generate_examples(split_rows) for split, split_rows in rows.items()}

  def _generate_examples(self, rows):
    for example_id, image_path, label_path in rows:
      image, image_hw = checks.read_image(image_path)
      label_ids = checks.read_index_mask(label_path)
      checks.check_same_size(image_hw, label_ids, image_path, label_path)
      label = label_ids_to_train_ids(label_ids, label_path)
      yield example_id, {'image': image, 'label': label, 'id': example_id}

  def _sources(self, dl_manager) -> tuple[epath.Path, epath.Path]:
    """The leftImg8bit and gtFine folders: extracted in manual_dir, else from its zips."""
    manual_dir = checks.manual_dir_or_none(dl_manager, getattr(self, '_requested_manual_dir', None),
                                           self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    if manual_dir is None:
      raise checks.SourcesUnavailableError(
          'Cityscapes cannot be downloaded without a login, and no manual_dir was given '
          '(tfds.download.DownloadConfig(manual_dir=...) or config.data.manual_dir).'
          f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    roots = []
    for folder, archive in ARCHIVES.items():
      root = _find_folder(manual_dir, folder)
      if root is None and (manual_dir / archive).exists():
        root = _find_folder(dl_manager.extract(manual_dir / archive), folder)
      if root is None:
        raise FileNotFoundError(
            f'Cityscapes {folder} not found in manual_dir {manual_dir}. Download {archive} from '
            f'{DOWNLOADS_URL} (login needed) and put it in {manual_dir}, or extract it there so '
            f'that {manual_dir}/{folder}/{{train,val,test}}/<city>/ exist. Expected layout: '
            f'{_LAYOUT}.')
      roots.append(root)
    return roots[0], roots[1]


def _find_folder(base: epath.Path, folder: str) -> epath.Path | None:
  """base/<folder> (or base/cityscapes/<folder>) when it has split folders."""
  base = epath.Path(base)
  for path in (base / folder, base / 'cityscapes' / folder):
    if any((path / split).is_dir() for split in SPLIT_SIZES):
      return path
  return None


def _split_files(images_root: epath.Path, labels_root: epath.Path, split: str
                 ) -> list[tuple[str, epath.Path, epath.Path]]:
  """(id, image, label) of a split's images, sorted by city and id; counts checked."""
  images = sorted((images_root / split).glob(f'*/*{_IMAGE_SUFFIX}'))
  if not images:
    raise FileNotFoundError(
        f'Cityscapes split {split}: no {images_root / split}/<city>/*{_IMAGE_SUFFIX}. '
        f'Re-extract {ARCHIVES["leftImg8bit"]} (expected layout: {_LAYOUT}).')
  rows, city_counts = [], {}
  for path in images:
    city = path.parent.name
    example_id = path.name[:-len(_IMAGE_SUFFIX)]
    match = _ID_PATTERN.fullmatch(example_id)
    if match is None or match.group(1) != city:
      raise ValueError(
          f'{path}: expected the file name {city}_<seq>_<frame>{_IMAGE_SUFFIX} (digits for '
          f'<seq> and <frame>, the city as its folder); files of {ARCHIVES["leftImg8bit"]} '
          'are named so.')
    rows.append((example_id, path, labels_root / split / city / f'{example_id}{_LABEL_SUFFIX}'))
    city_counts[city] = city_counts.get(city, 0) + 1
  check_official_sizes(split, city_counts)
  return rows


_CITATION = """\
@inproceedings{Cordts2016Cityscapes,
  title={The Cityscapes Dataset for Semantic Urban Scene Understanding},
  author={Cordts, Marius and Omran, Mohamed and Ramos, Sebastian and Rehfeld, Timo and
          Enzweiler, Markus and Benenson, Rodrigo and Franke, Uwe and Roth, Stefan and
          Schiele, Bernt},
  booktitle={Proc. of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2016}}
"""
