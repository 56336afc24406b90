"""Examples to look at: a dataset's config, examples by position or id, class pixel counts, the
training augmentation of one pair, a sample image.

TensorFlow and the input pipeline are imported inside the functions that use them.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
import pathlib
from typing import Any

import numpy as np

from jaxseg.data import classes
from jaxseg.visualize.colour import IGNORE_LABEL
from jaxseg.visualize.workdir import resolve_path


def dataset_config(dataset: str = 'synthetic_shapes/tiny', data_dir: str = '',
                   manual_dir: str = '', **data_fields: Any) -> Any:
  """experiments/default.py's config pointed at a dataset (its class count and splits).

  Relative data_dir / manual_dir are resolved with `resolve_path`; '' keeps TFDS's defaults.
  """
  from jaxseg import config_loading  # pylint: disable=g-import-not-at-top
  data_dir = str(resolve_path(data_dir)) if data_dir else ''
  manual_dir = str(resolve_path(manual_dir)) if manual_dir else ''
  config = config_loading.load_config(config_loading.experiments_dir() / 'default.py')
  base = dataset.split('/')[0].split(':')[0]
  splits = {'voc2012_segmentation': ('train_aug', 'val'), 'camvid': ('train', 'val'),
            'synthetic_shapes': ('train', 'val')}
  train_split, eval_split = splits.get(base, ('train', 'val'))
  config.data.update(dict(dataset=dataset, data_dir=data_dir, manual_dir=manual_dir,
                          train_split=train_split, eval_split=eval_split))
  config.data.update(data_fields)
  if 'num_classes' not in data_fields:
    config.data.num_classes = classes.spec_for_data(config.data).num_classes
  return config


def load_examples(config: Any, split: str | None = None, count: int | None = None,
                  ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Examples {'id', 'image' uint8 (H, W, 3), 'label' uint8 (H, W)} of a split, in split order.

  The first `count` examples, or those whose id is in `ids` (returned in the order of `ids`;
  ids that are not in the split are left out). Prepares the dataset on first use.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top
  split = split or config.data.eval_split
  builder = pipeline.load_builder(config)
  if split.split('[')[0] not in builder.info.splits:
    raise ValueError(f'{split!r} is not a split of {builder.name} (splits: '
                     f'{sorted(builder.info.splits)})')
  if ids is None:
    ds = builder.as_dataset(split=split if count is None else f'{split}[:{count}]',
                            shuffle_files=False)
  else:
    skip = {k: tfds.decode.SkipDecoding() for k in ('image', 'label')}
    wanted = tf.constant([str(i) for i in ids] or [''])
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=skip)
    ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex['id'], wanted)))
    features = builder.info.features
    ds = ds.map(lambda ex: dict(ex, image=features['image'].decode_example(ex['image']),
                                label=features['label'].decode_example(ex['label'])))
  examples = []
  for ex in ds.as_numpy_iterator():
    label = np.asarray(ex['label'])
    examples.append({'id': ex['id'].decode() if 'id' in ex else str(len(examples)),
                     'image': np.asarray(ex['image']),
                     'label': label[..., 0] if label.ndim == 3 else label})
  if ids is not None:
    order = {str(i): k for k, i in enumerate(ids)}
    examples.sort(key=lambda e: order[e['id']])
  return examples


def class_pixel_counts(labels: Iterable[Any], num_classes: int,
                       ignore_label: int = IGNORE_LABEL) -> tuple[np.ndarray, int]:
  """(pixels per class (num_classes,), ignored pixels) over label maps."""
  counts = np.zeros(num_classes, np.int64)
  ignored = 0
  for label in labels:
    label = np.asarray(label).ravel()
    ignored += int((label == ignore_label).sum())
    valid = label[(label >= 0) & (label < num_classes)]
    counts += np.bincount(valid.astype(np.int64), minlength=num_classes)
  return counts, ignored


def augment_pair(config: Any, image: Any, label: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The training pipeline's joint augmentation of one pair (config.data's settings), for display.

  Returns the uint8 RGB crop (the mean pixel where the pipeline padded) and its int32 mask
  (255 where padded or rotated in).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top
  transform = pipeline.TrainAugment.from_config(config)
  out_image, out_label = transform(tf.constant(np.asarray(image), tf.float32),
                                   tf.constant(np.asarray(label), tf.int32),
                                   tf.constant([int(config.seed), int(seed)], tf.int64))
  return out_image.numpy(), out_label.numpy()


def sample_image(path: str | pathlib.Path | None = None, size: int = 224) -> tuple[np.ndarray, str]:
  """(uint8 (size, size, 3) image, description): the file at `path` centre-cropped and resized,
  or, when there is none, a scene of the embedded synthetic dataset."""
  import PIL.Image  # pylint: disable=g-import-not-at-top
  if path is not None and pathlib.Path(path).is_file():
    with PIL.Image.open(path) as image:
      image = image.convert('RGB')
      side = min(image.size)
      left, top = (image.width - side) // 2, (image.height - side) // 2
      image = image.crop((left, top, left + side, top + side)).resize(
          (size, size), PIL.Image.BILINEAR)
      return np.asarray(image, np.uint8), pathlib.Path(path).name
  from jaxseg.data import synthetic  # pylint: disable=g-import-not-at-top
  image, _ = synthetic.render_scene(synthetic.scene_rng(0, 'val', 0), size, size)
  return image, 'synthetic_shapes scene (no image file found)'
