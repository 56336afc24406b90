"""PASCAL VOC 2012 segmentation with the SBD-augmented set, as TFDS 'voc2012_segmentation'.

Splits (sizes with the official sources; checked at prepare time):
  train       1,464  VOC2012 ImageSets/Segmentation/train.txt, VOC masks.
  val         1,449  VOC2012 ImageSets/Segmentation/val.txt, VOC masks.
  seg11valid    736  FCN's validation list (VOC2011 seg val minus SBD train), VOC masks. The list
                     is FCN's own and cannot be derived from the archives, so it ships with jaxseg
                     (voc_lists/seg11valid.txt.gz); the split is that list intersected with val.txt.
  train_aug  10,582  (VOC train | SBD train | SBD val) minus VOC val: the usual SBD-augmented
                     set, derived from the sources' own lists rather than shipped. Label: VOC's
                     mask where the id is in VOC's train list (it has the 255 boundary band), else
                     SBD's.
  sbd_train   8,498  SBD train with SBD masks (FCN's training set). It overlaps VOC val, so evaluate
                     models trained on it on seg11valid only.
Config 'voc_only' needs no SBD and has train, val and seg11valid only.

VOC-format datasets with their own ids (what annotation tools export as "PASCAL VOC"): train.txt
and val.txt are read whatever ids they hold; seg11valid is left out when none of FCN's ids is in
val.txt (it would be an empty split, which TFDS refuses); every other list in
ImageSets/Segmentation except trainval.txt (= train + val) becomes a split of its own name
(e.g. test.txt -> 'test'). Where the lists are not the official ones, SegmentationObject is
optional: without that folder the examples have no instances (DeconvNet's object windows then
have nothing to crop). Labels must still be VOC's 21 classes; a dataset with other classes is a
'segmentation_folder' dataset (jaxseg.data.folder).

Masks are read as palette indices (PIL mode 'P'), 255 (boundary/ignore) kept; SBD masks come from
cls/<id>.mat, struct GTcls, field Segmentation.

Object instances (DeconvNet's object-centred training crops) follow the label's source: VOC's
SegmentationObject/<id>.png (palette index = instance id, 255 boundary band; the path VOCdevkit's
VOCopts.seg.instimgpath names, as in DeconvNet's inference/util/init_VOC2012_TEST.m) with the class
of each instance taken from SegmentationClass (the majority non-255 value under its pixels; they
agree exactly in the official data), or SBD's inst/<id>.mat (struct GTinst: Segmentation holds the
instance ids, Categories the class of instance k in row k). Features 'instance' and 'objects'
(class and tight box per instance) are described in checks.instance_features.
"""
import dataclasses
import functools
import gzip
import importlib.resources
import logging

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxseg.data import checks
from jaxseg.data.classes import VOC_CLASSES

VOC_URL = 'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar'
SBD_URL = ('http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/'
           'semantic_contours/benchmark.tgz')
VOC_ARCHIVE = 'VOCtrainval_11-May-2012.tar'
SBD_ARCHIVE = 'benchmark.tgz'

# Documented split sizes with the official sources (VOC2012 trainval + SBD benchmark.tgz).
SPLIT_SIZES = {'train': 1464, 'val': 1449, 'seg11valid': 736, 'train_aug': 10582,
               'sbd_train': 8498}
SBD_SIZES = {'train': 8498, 'val': 2857}

_VOC_LAYOUT = ('VOCdevkit/VOC2012/{ImageSets/Segmentation,JPEGImages,SegmentationClass,'
               'SegmentationObject}')
_SBD_LAYOUT = 'benchmark_RELEASE/dataset/{cls,inst,img,train.txt,val.txt}'


@functools.cache
def seg11valid_ids() -> tuple[str, ...]:
  """FCN's seg11valid.txt (736 ids), shipped with jaxseg."""
  path = importlib.resources.files('jaxseg.data') / 'voc_lists' / 'seg11valid.txt.gz'
  return tuple(gzip.decompress(path.read_bytes()).decode('ascii').split())


def train_aug_ids(voc_train, voc_val, sbd_train, sbd_val) -> list[str]:
  """The SBD-augmented training ids: VOC train | SBD train | SBD val, minus VOC val (sorted)."""
  return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))


def check_official_sizes(splits: dict[str, list[str]], sbd_train, sbd_val) -> None:
  """With the official lists as input, every split must have its documented size."""
  if len(splits['train']) != SPLIT_SIZES['train'] or len(splits['val']) != SPLIT_SIZES['val']:
    return  # Custom or partial VOC lists: nothing to compare with.
  expected = {'seg11valid': SPLIT_SIZES['seg11valid']}
  if len(sbd_train) == SBD_SIZES['train'] and len(sbd_val) == SBD_SIZES['val']:
    expected.update(train_aug=SPLIT_SIZES['train_aug'], sbd_train=SPLIT_SIZES['sbd_train'])
  for name, size in expected.items():
    if name in splits and len(splits[name]) != size:
      raise ValueError(f'Split {name} has {len(splits[name])} ids, expected {size} from the '
                       'official VOC2012 and SBD lists: are the split lists modified?')


@dataclasses.dataclass
class VocConfig(tfds.core.BuilderConfig):
  with_sbd: bool = True


class Voc2012Segmentation(tfds.core.GeneratorBasedBuilder):
  """PASCAL VOC 2012 segmentation (21 classes, 255 = ignore) and instances, optionally with SBD."""

  name = 'voc2012_segmentation'
  # TFDS 4.9.10 derives this with the importlib_resources backport, which it does not install on
  # Python >= 3.9 (tensorflow/datasets#11212); the module file is what it would find.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'VOC2012 train/val, seg11valid, SBD train_aug and sbd_train.',
      '1.1.0': 'Object instances: instance (VOC SegmentationObject / SBD inst) and objects (class, '
               'box).',
  }
  BUILDER_CONFIGS = [
      VocConfig(name='full', description='VOC2012 + SBD: train, val, seg11valid, train_aug, '
                'sbd_train.'),
      VocConfig(name='voc_only', with_sbd=False,
                description='VOC2012 alone: train, val, seg11valid.'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Without a manual_dir the builder downloads {VOC_URL}
  and (config 'full') {SBD_URL}.
  To use copies you already have, put in manual_dir either the archives
    {VOC_ARCHIVE} and {SBD_ARCHIVE}
  or their extracted folders:
    {_VOC_LAYOUT}
    {_SBD_LAYOUT}
  SegmentationObject (VOC) and inst (SBD) hold the object instances; both archives ship them.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=checks.segmentation_features(with_instances=True),
        supervised_keys=('image', 'label'),
        homepage='http://host.robots.ox.ac.uk/pascal/VOC/voc2012/',
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(class_names=list(VOC_CLASSES), ignore_label=255),
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    # Kept so that a manual_dir the user names but left empty is an error, not a download.
    self._requested_manual_dir = download_config.manual_dir if download_config else None
    return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    voc_root, sbd_root = self._sources(dl_manager)
    seg = voc_root / 'ImageSets' / 'Segmentation'
    voc_train = checks.read_id_list(seg / 'train.txt')
    voc_val = checks.read_id_list(seg / 'val.txt')
    checks.check_disjoint({'VOC train.txt': voc_train}, {'VOC val.txt': voc_val})
    val_set = set(voc_val)
    splits = {'train': voc_train, 'val': voc_val,
              'seg11valid': [i for i in seg11valid_ids() if i in val_set]}
    if not splits['seg11valid']:
      logging.info('%s: none of the %d ids of FCN\'s seg11valid is in it (a VOC-format dataset '
                   'with its own ids): the split seg11valid is left out.', seg / 'val.txt',
                   len(seg11valid_ids()))
      del splits['seg11valid']
    splits.update(extra_lists(seg, splits))
    sbd_train = sbd_val = ()
    if sbd_root is not None:
      sbd_train = checks.read_id_list(sbd_root / 'train.txt')
      sbd_val = checks.read_id_list(sbd_root / 'val.txt')
      splits['train_aug'] = train_aug_ids(voc_train, voc_val, sbd_train, sbd_val)
      splits['sbd_train'] = sbd_train
    check_official_sizes(splits, sbd_train, sbd_val)
    seg11valid = {'seg11valid': splits['seg11valid']} if 'seg11valid' in splits else {}
    checks.check_disjoint({k: v for k, v in splits.items() if k in ('train', 'train_aug')},
                          {'val': voc_val, **seg11valid})
    checks.check_disjoint({'sbd_train': sbd_train}, seg11valid)

    voc_labelled = set(voc_train) | val_set | {i for k in splits for i in splits[k]
                                               if k not in ('train_aug', 'sbd_train')}
    examples = {}
    for split, ids in splits.items():
      examples[split] = [
          self._example_files(i, voc_root, sbd_root,
                              use_voc_mask=i in voc_labelled and split != 'sbd_train')
          for i in ids]
    official = (len(voc_train), len(voc_val)) == (SPLIT_SIZES['train'], SPLIT_SIZES['val'])
    if not official and not (voc_root / 'SegmentationObject').is_dir():
      logging.warning('%s does not exist: the examples get no object instances (needed only by '
                      "DeconvNet's config.data.windows='objects'/'proposals').",
                      voc_root / 'SegmentationObject')
      examples = {split: [row if row[3].suffix == '.mat' else (*row[:3], None) for row in rows]
                  for split, rows in examples.items()}
    files = {p for rows in examples.values() for row in rows for p in row[1:] if p is not None}
    checks.require_files(
        sorted(files), 'source files listed in the split lists are',
        f'Re-extract {VOC_ARCHIVE}' + (f' and {SBD_ARCHIVE}' if sbd_root else '') +
        f' (expected layout: {_VOC_LAYOUT}' + (f', {_SBD_LAYOUT}' if sbd_root else '') + ').')
    return {split: self._generate_examples(rows) for split, rows in examples.items()}

  def _example_files(self, example_id, voc_root, sbd_root, use_voc_mask):
    """(id, image, label, instance) paths; label and instance come from the same source."""
    image = voc_root / 'JPEGImages' / f'{example_id}.jpg'
    if sbd_root is not None and not image.exists():
      sbd_image = sbd_root / 'img' / f'{example_id}.jpg'  # SBD ships the same VOC JPEGs.
      image = sbd_image if sbd_image.exists() else image
    if use_voc_mask:
      label = voc_root / 'SegmentationClass' / f'{example_id}.png'
      instance = voc_root / 'SegmentationObject' / f'{example_id}.png'
    else:
      label = sbd_root / 'cls' / f'{example_id}.mat'
      instance = sbd_root / 'inst' / f'{example_id}.mat'
    return example_id, image, label, instance

  def _generate_examples(self, rows):
    num_classes = len(VOC_CLASSES)
    for example_id, image_path, label_path, instance_path in rows:
      image, image_hw = checks.read_image(image_path)
      if label_path.suffix == '.mat':
        label = checks.read_sbd_mat(label_path)
        instance, categories = checks.read_sbd_inst_mat(instance_path)
      elif instance_path is None:  # A VOC-format dataset without SegmentationObject.
        label = checks.read_index_mask(label_path)
        instance, categories = np.zeros(label.shape, np.uint8), np.zeros(0, np.int64)
      else:
        label = checks.read_index_mask(label_path)
        instance, categories = checks.read_index_mask(instance_path, 'instance mask'), None
      checks.check_same_size(image_hw, label, image_path, label_path)
      checks.check_same_size(image_hw, instance, image_path, instance_path or label_path)
      try:
        checks.check_label_values(label, num_classes, label_path)
      except ValueError as e:
        raise ValueError(f"{e} voc2012_segmentation has VOC's 21 classes; for a VOC-format "
                         "dataset with other classes use config.data.dataset="
                         "'segmentation_folder' (README: Train on your own data).") from None
      if categories is None:  # VOC: the classes are those of SegmentationClass.
        categories = checks.categories_from_label(instance, label, instance_path, label_path)
      instance, objects = checks.objects_from_instances(instance, categories, num_classes,
                                                        instance_path)
      yield example_id, {'image': image, 'label': label.astype(np.uint8), 'id': example_id,
                         'instance': instance, 'objects': objects}

  # -------------------------------------------------------------- locating the sources

  def _sources(self, dl_manager) -> tuple[epath.Path, epath.Path | None]:
    with_sbd = self.builder_config.with_sbd
    manual_dir = checks.manual_dir_or_none(dl_manager, getattr(self, '_requested_manual_dir', None),
                                           self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    if manual_dir is None:
      urls = {'voc': VOC_URL, **({'sbd': SBD_URL} if with_sbd else {})}
      paths = checks.download_or_explain(dl_manager, urls, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
      voc_root = _find_voc_root(paths['voc'])
      sbd_root = _find_sbd_root(paths['sbd']) if with_sbd else None
      if voc_root is None or (with_sbd and sbd_root is None):
        raise FileNotFoundError(f'The downloaded archives do not have the expected layout '
                                f'({_VOC_LAYOUT}; {_SBD_LAYOUT}): {paths}')
      return voc_root, sbd_root
    voc_root = _find_voc_root(manual_dir) or _extract_from(
        dl_manager, manual_dir / VOC_ARCHIVE, _find_voc_root)
    if voc_root is None:
      raise FileNotFoundError(
          f'PASCAL VOC 2012 not found in manual_dir {manual_dir}. Download {VOC_URL} and put '
          f'{VOC_ARCHIVE} in {manual_dir}, or extract it there so that {manual_dir}/'
          f'{_VOC_LAYOUT} exist.')
    if not with_sbd:
      return voc_root, None
    sbd_root = _find_sbd_root(manual_dir) or _extract_from(
        dl_manager, manual_dir / SBD_ARCHIVE, _find_sbd_root)
    if sbd_root is None:
      raise FileNotFoundError(
          f'SBD not found in manual_dir {manual_dir} (needed for train_aug and sbd_train). '
          f'Download {SBD_URL} and put {SBD_ARCHIVE} in {manual_dir}, or extract it there so '
          f'that {manual_dir}/{_SBD_LAYOUT} exist. For VOC alone use the config '
          "'voc2012_segmentation/voc_only'.")
    return voc_root, sbd_root


_DERIVED_SPLITS = ('train', 'val', 'seg11valid', 'train_aug', 'sbd_train')


def extra_lists(seg: epath.Path, splits: dict[str, list[str]]) -> dict[str, list[str]]:
  """The other split lists of ImageSets/Segmentation (e.g. a custom test.txt), by file stem.

  trainval.txt is skipped (train + val). A list named like a split jaxseg derives is an error.
  """
  extra = {}
  for path in sorted(seg.glob('*.txt')):
    name = path.stem
    if name in ('train', 'val', 'trainval'):
      continue
    if name in _DERIVED_SPLITS or not name.isidentifier():
      raise ValueError(f'{path}: a split list named {name!r} would replace or clash with a split '
                       f'jaxseg derives ({", ".join(_DERIVED_SPLITS)}) or is no valid split name '
                       '(letters, digits, _); rename the file.')
    ids = checks.read_id_list(path)
    if ids:
      extra[name] = ids
  if extra:
    checks.check_disjoint({'VOC train.txt': splits['train']},
                          {f'{name}.txt': ids for name, ids in extra.items()})
  return extra


def _extract_from(dl_manager, archive: epath.Path, find_root):
  return find_root(dl_manager.extract(archive)) if archive.exists() else None


def _first_dir(candidates, marker: str) -> epath.Path | None:
  for path in candidates:
    if (path / marker).is_dir():
      return path
  return None


def _find_voc_root(base: epath.Path) -> epath.Path | None:
  base = epath.Path(base)
  return _first_dir([base / 'VOCdevkit' / 'VOC2012', base / 'VOC2012', base,
                     base / 'TrainVal' / 'VOCdevkit' / 'VOC2012'], 'ImageSets/Segmentation')


def _find_sbd_root(base: epath.Path) -> epath.Path | None:
  base = epath.Path(base)
  return _first_dir([base / 'benchmark_RELEASE' / 'dataset', base / 'dataset', base], 'cls')


_CITATION = """\
@article{everingham2010pascal,
  title={The Pascal Visual Object Classes ({VOC}) Challenge},
  author={Everingham, M. and Van Gool, L. and Williams, C. K. I. and Winn, J. and Zisserman, A.},
  journal={International Journal of Computer Vision}, volume={88}, number={2}, pages={303--338},
  year={2010}}
@inproceedings{hariharan2011semantic,
  title={Semantic Contours from Inverse Detectors},
  author={Hariharan, Bharath and Arbel{\\'a}ez, Pablo and Bourdev, Lubomir and Maji, Subhransu and
          Malik, Jitendra},
  booktitle={International Conference on Computer Vision (ICCV)}, year={2011}}
"""
