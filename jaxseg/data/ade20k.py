"""ADE20K SceneParsing 2016 (ADEChallengeData2016, 150 classes) as the TFDS dataset 'ade20k'.

The data PSPNet was trained and scored on (hszhao/semseg README, ADE20K: "train on train (20210
images) set and test on val (2000 images) set"). Layout of ADEChallengeData2016.zip:
  ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg
  ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_%08d.png
  ADEChallengeData2016/{objectInfo150.txt,sceneCategories.txt}
Splits: 'train' (training/, 20,210) and 'val' (validation/, 2,000); image and annotation are
paired by file stem, which is also the example id. When sceneCategories.txt lists the release's
20,210 + 2,000 ids, each split must hold exactly those (an incomplete extraction is an error);
other folders (subsets) are taken as they are.

Labels: annotations are 8-bit greyscale PNGs holding 0..150, 0 = 'other objects', which the
benchmark does not score (CSAILVision/sceneparsing README: "annotations masks contain labels
ranging from 0 to 150, where 0 refers to "other objects". We do not consider those pixels in our
evaluation."). jaxseg stores k-1 for k in 1..150 and 255 for 0, the convention of hszhao/semseg
(commit 4f274c3): FAQ.md "Dataset format" (valid ids 0..C-1, ignore 255, "ADE20K original ids are
0-150 where 0 stands for void" so they need mapping), config/ade20k/*.yaml (classes: 150,
ignore_label: 255), util/util.py intersectionAndUnion (ignore_index=255, classes 0..K-1) and
data/ade20k/ade20k_names.txt, whose line 1 ('wall') is label 0. Class names are those of
classes.ADE20K_CLASSES; objectInfo150.txt, when present, must list them in that order (each
jaxseg name is one of its row's comma-separated synonyms: mostly the first, but row 90 is
'television, television receiver, ...' and semseg calls it 'television receiver').

Images: some of ADE20K's JPEGs are greyscale. checks.read_image keeps RGB and greyscale JPEGs
byte for byte (the 3-channel Image feature decodes greyscale to RGB: tf.image.decode_image with
channels=3) and re-encodes any other mode (CMYK) as RGB PNG, so every image comes out (H, W, 3)
uint8 RGB and ade20k.py needs no conversion of its own.

Why not TFDS's own 'scene_parse150': tensorflow_datasets 4.9.10
datasets/scene_parse150/scene_parse150_dataset_builder.py downloads the 2017 Places Challenge
files (_TRAIN_URL: http://sceneparsing.csail.mit.edu/data/ChallengeData2017/images.tar and
.../annotations_instance.tar) and stores the feature 'annotation' as a 3-channel PNG Image read
from annotations_instance/{training,validation}/*.png: the instance-segmentation task's masks,
whose red channel is one of 100 object categories and green channel an instance id
(CSAILVision/placeschallenge instancesegmentation/README.md), not the 150-class semantic maps
0..150 of ADEChallengeData2016 that PSPNet used. It keeps no ignore label, calls validation
'test', and lists examples in tf.io.gfile.listdir order. So jaxseg owns the 2016 builder.
"""
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxseg.data import checks
from jaxseg.data.classes import ADE20K_CLASSES, IGNORE_LABEL

URL = 'http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip'
ARCHIVE = 'ADEChallengeData2016.zip'
ROOT = 'ADEChallengeData2016'
SPLIT_SIZES = {'train': 20210, 'val': 2000}
FOLDERS = {'train': 'training', 'val': 'validation'}
# The release's ids: ADE_train_00000001..ADE_train_00020210, ADE_val_00000001..ADE_val_00002000.
PREFIXES = {'train': 'ADE_train_', 'val': 'ADE_val_'}
NUM_RAW_VALUES = 151  # Annotation values 0 ('other') .. 150.
_LAYOUT = (f'{ROOT}/{{images,annotations}}/{{training,validation}}/'
           'ADE_{train,val}_%08d.{jpg,png} (+ objectInfo150.txt, sceneCategories.txt)')


def raw_to_label(raw: np.ndarray) -> np.ndarray:
  """Annotation values to jaxseg labels: k in 1..150 -> k-1, 0 ('other') -> 255."""
  raw = np.asarray(raw)
  return np.where(raw == 0, IGNORE_LABEL, raw.astype(np.int64) - 1).astype(np.uint8)


def check_raw_values(raw: np.ndarray, path: epath.Path) -> None:
  """Every annotation value must be 0 ('other') or a class 1..150."""
  values = np.flatnonzero(np.bincount(np.asarray(raw, np.uint8).ravel(), minlength=256))
  bad = [int(v) for v in values if v >= NUM_RAW_VALUES]
  if bad:
    raise ValueError(f'{path}: annotation values {bad} are outside 0 (other) and the 150 classes '
                     '1..150 of SceneParsing 2016; replace the file with the original from '
                     f'{ARCHIVE}.')


def check_object_info(path: epath.Path) -> None:
  """objectInfo150.txt ('Idx Ratio Train Val Name', tab-separated) must list ADE20K_CLASSES.

  Row k names class k by comma-separated synonyms; jaxseg's name of class k must be one of them.
  """
  hint = (f'{path} is not the objectInfo150.txt of the SceneParsing 2016 release '
          f"({ARCHIVE}), whose 150 classes jaxseg's ADE20K labels follow")
  lines = [line for line in checks.read_bytes(path, 'class table').decode('utf-8').splitlines()
           if line.strip()]
  rows = [line.split('\t') for line in lines[1:]]
  if not lines or lines[0].split()[:1] != ['Idx'] or len(rows) != len(ADE20K_CLASSES):
    raise ValueError(f'{hint}: expected a header "Idx ... Name" and {len(ADE20K_CLASSES)} rows, '
                     f'got {len(rows)} rows.')
  for k, (row, name) in enumerate(zip(rows, ADE20K_CLASSES), 1):
    synonyms = [s.strip() for s in row[-1].split(',')]
    if len(row) < 2 or row[0].strip() != str(k) or name not in synonyms:
      raise ValueError(f'{hint}: row {k} is {row[0].strip()!r} {row[-1].strip()!r}, expected '
                       f'class {k} {name!r}.')


def scene_category_ids(path: epath.Path) -> dict[str, list[str]]:
  """The ids sceneCategories.txt lists ('<id> <scene>' per line), by split prefix."""
  ids = checks.read_id_list(path)
  return {split: [i for i in ids if i.startswith(prefix)] for split, prefix in PREFIXES.items()}


def check_official_sizes(splits: dict[str, list[str]], listed: dict[str, list[str]],
                         listing: str = 'sceneCategories.txt') -> None:
  """With the release's id list (20,210 train + 2,000 val ids), each split must hold those ids.

  listed: ids per split from `listing`; a list of other sizes (a subset) is not compared.
  """
  if any(len(listed.get(s, ())) != n for s, n in SPLIT_SIZES.items()):
    return
  for split, expected in listed.items():
    have = set(splits[split])
    missing = [i for i in expected if i not in have]
    extra = sorted(have - set(expected))
    if missing or extra:
      raise ValueError(
          f'Split {split} has {len(have)} images, expected the {len(expected)} that {listing} '
          f'of the SceneParsing 2016 release lists'
          + (f'; missing {", ".join(missing[:3])}' if missing else '')
          + (f'; not listed {", ".join(extra[:3])}' if extra else '')
          + f'. Re-extract {ARCHIVE}; to prepare a subset on purpose, delete {listing} from '
          'the folder.')


class Ade20k(tfds.core.GeneratorBasedBuilder):
  """ADE20K SceneParsing 2016: 150 classes (annotation k -> label k-1), 255 = 'other'."""

  name = 'ade20k'
  # TFDS 4.9.10 derives this with the importlib_resources backport, which it does not install on
  # Python >= 3.9 (tensorflow/datasets#11212); the module file is what it would find.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'ADEChallengeData2016: train (20,210) and val (2,000).'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Without a manual_dir the builder downloads {URL}.
  To use a copy you already have, put {ARCHIVE} in manual_dir, or make manual_dir its
  extracted {ROOT} folder or that folder's parent. Expected layout:
    <manual_dir>/{_LAYOUT}
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=checks.segmentation_features(),
        supervised_keys=('image', 'label'),
        homepage='http://sceneparsing.csail.mit.edu/',
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(class_names=list(ADE20K_CLASSES), ignore_label=255),
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    # Kept so that a manual_dir the user names but left empty is an error, not a download.
    self._requested_manual_dir = download_config.manual_dir if download_config else None
    return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._source_root(dl_manager)
    if (root / 'objectInfo150.txt').exists():
      check_object_info(root / 'objectInfo150.txt')
    rows = {split: _split_files(root, split) for split in SPLIT_SIZES}
    ids = {split: [image.stem for image, _ in pairs] for split, pairs in rows.items()}
    checks.check_disjoint({'train': ids['train']}, {'val': ids['val']})
    if (root / 'sceneCategories.txt').exists():
      check_official_sizes(ids, scene_category_ids(root / 'sceneCategories.txt'))
    checks.require_files(
        [mask for pairs in rows.values() for _, mask in pairs], 'ADE20K annotations are',
        f'Every image needs its annotation (same name, .png). Expected layout: {_LAYOUT}; '
        f're-extract {ARCHIVE}.')
    return {split: self._generate_examples(pairs) for split, pairs in rows.items()}

  def _generate_examples(self, pairs):
    for image_path, mask_path in pairs:
      image, image_hw = checks.read_image(image_path)
      raw = checks.read_index_mask(mask_path, 'annotation')
      checks.check_same_size(image_hw, raw, image_path, mask_path)
      check_raw_values(raw, mask_path)
      example_id = image_path.stem
      yield example_id, {'image': image, 'label': raw_to_label(raw), 'id': example_id}

  def _source_root(self, dl_manager) -> epath.Path:
    manual_dir = checks.manual_dir_or_none(dl_manager, getattr(self, '_requested_manual_dir', None),
                                           self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    if manual_dir is None:
      extracted = checks.download_or_explain(
          dl_manager, {'ade20k': URL}, self.MANUAL_DOWNLOAD_INSTRUCTIONS)['ade20k']
      root = _find_root(extracted)
      if root is None:
        raise FileNotFoundError(f'{URL} extracted to {extracted} has no {ROOT}/ folder with '
                                f'images/ and annotations/.')
      return root
    root = _find_root(manual_dir)
    if root is None and (manual_dir / ARCHIVE).exists():
      root = _find_root(dl_manager.extract(manual_dir / ARCHIVE))
    if root is None:
      raise FileNotFoundError(
          f'ADE20K (SceneParsing 2016) not found in manual_dir {manual_dir}. Download {URL} and '
          f'put {ARCHIVE} in {manual_dir}, or extract it there so that {manual_dir}/{_LAYOUT} '
          'exist.')
    return root


def _find_root(base: epath.Path) -> epath.Path | None:
  base = epath.Path(base)
  for path in (base, base / ROOT):
    if (path / 'images').is_dir() and (path / 'annotations').is_dir():
      return path
  return None


def _split_files(root: epath.Path, split: str) -> list[tuple[epath.Path, epath.Path]]:
  """(image, annotation) paths of a split, paired by stem, sorted; orphan annotations fail."""
  images_dir = root / 'images' / FOLDERS[split]
  masks_dir = root / 'annotations' / FOLDERS[split]
  images = sorted(images_dir.glob('*.jpg')) if images_dir.is_dir() else []
  if not images:
    raise FileNotFoundError(f'ADE20K split {split}: no {images_dir}/*.jpg. Expected layout: '
                            f'{_LAYOUT}; re-extract {ARCHIVE}.')
  stems = {p.stem for p in images}
  orphans = sorted(p for p in masks_dir.glob('*.png') if p.stem not in stems)
  if orphans:
    shown = '\n  '.join(map(str, orphans[:5]))
    more = f'\n  ... and {len(orphans) - 5} more' if len(orphans) > 5 else ''
    raise FileNotFoundError(
        f'{len(orphans)} ADE20K annotations have no image (same name, .jpg, in {images_dir}):\n'
        f'  {shown}{more}\nRe-extract {ARCHIVE}.')
  return [(p, masks_dir / f'{p.stem}.png') for p in images]


_CITATION = """\
@inproceedings{zhou2017scene,
  title={Scene Parsing through {ADE20K} Dataset},
  author={Zhou, Bolei and Zhao, Hang and Puig, Xavier and Fidler, Sanja and Barriuso, Adela and
          Torralba, Antonio},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)}, year={2017}}
@article{zhou2019semantic,
  title={Semantic Understanding of Scenes through the {ADE20K} Dataset},
  author={Zhou, Bolei and Zhao, Hang and Puig, Xavier and Xiao, Tete and Fidler, Sanja and
          Barriuso, Adela and Torralba, Antonio},
  journal={International Journal of Computer Vision}, volume={127}, number={3}, pages={302--321},
  year={2019}}
"""
