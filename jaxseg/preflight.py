"""Checks of a training config against the devices, the model and the data, before step 1.

Everything here is a pure function of the config, the device count and the dataset's metadata,
which every process sees alike: a bad setting fails on every host at once, before any collective
(a host that raised alone would leave the others waiting in an all-reduce), and before hours of
training are spent on a run whose first evaluation could never run.

  check_config   numbers: batch sizes vs devices and accumulation, steps, intervals
  check_model    the model traced (no compile) at the train crop and through the eval mode at
                 the eval size: too-small inputs, slide windows larger than the image, ...
  check_data     config.data.num_classes matches the dataset (`check_classes`); the train and
                 eval splits exist and hold enough examples
"""
import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections


def _multiple_hint(value: int, of: int) -> int:
  return max(1, -(-value // of)) * of


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Batch sizes, accumulation, step counts and intervals; raises ValueError naming the field."""
  train = config.train
  accum = int(train.grad_accum_steps)
  if accum < 1:
    raise ValueError(f'config.train.grad_accum_steps={accum} must be >= 1 (1 = no accumulation).')
  if train.batch_size < 1 or train.batch_size % (num_devices * accum):
    unit = num_devices * accum
    detail = (f'the number of devices ({num_devices})' if accum == 1 else
              f'the number of devices x config.train.grad_accum_steps ({num_devices} x {accum})')
    raise ValueError(
        f'config.train.batch_size={train.batch_size} must be a positive multiple of {detail}: '
        f'e.g. {_multiple_hint(train.batch_size, unit)}.')
  if train.num_steps < 1:
    raise ValueError(f'config.train.num_steps={train.num_steps} must be >= 1.')
  for field in ('log_every', 'checkpoint_every'):
    if train[field] < 0:
      raise ValueError(f'config.train.{field}={train[field]} must be >= 0 (0 = only at the end).')
  if train.eval_every < -1:
    raise ValueError(f'config.train.eval_every={train.eval_every} must be >= -1 (0 = only at the '
                     'end, -1 = never).')
  if evaluates(config):
    batch = int(config.eval.batch_size)
    if batch < 1 or batch % num_devices:
      raise ValueError(
          f'config.eval.batch_size={batch} must be a positive multiple of the number of devices '
          f'({num_devices}): e.g. {_multiple_hint(batch, num_devices)}. (Checked before training: '
          'the first evaluation would fail otherwise.)')
  for field in ('crop_size', 'eval_size'):
    size = tuple(config.data[field])
    if len(size) != 2 or min(int(v) for v in size) < 1:
      raise ValueError(f'config.data.{field}={size} must be two positive ints (H, W).')


def evaluates(config: ml_collections.ConfigDict) -> bool:
  """Whether training evaluates at all (config.train.eval_every = -1: never)."""
  return int(config.train.eval_every) >= 0


def check_model(config: ml_collections.ConfigDict, model: Any) -> None:
  """Traces the model at the train crop and the eval pipeline at the eval size (no compile).

  Raises ValueError naming the config fields when the model cannot take those inputs.
  """
  height, width = (int(v) for v in config.data.crop_size)
  init_model = model.clone(sync_bn_axis=None)
  rngs = {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}
  try:
    variables = jax.eval_shape(
        lambda: init_model.init(rngs, jnp.zeros((1, height, width, 3)), train=True))
  except ValueError as e:
    raise ValueError(f'config.data.crop_size={(height, width)} does not suit '
                     f'{config.model.name}: {e}') from e
  if not evaluates(config):
    return
  eval_hw = tuple(int(v) for v in config.data.eval_size)
  from jaxseg.inference import chain  # pylint: disable=g-import-not-at-top
  partner = chain.load_partner(config)  # The ensemble partner loads (a named, readable source).
  pipeline = chain.Chain.from_config(config, partner.config if partner else None)
  count = 1
  if pipeline.needs_windows:
    count = chain.WindowSource(config).count  # The proposals source exists.
  partner_model = partner.model.clone(sync_bn_axis=None) if partner else None
  try:
    def infer(variables, partner_variables, pixels, sizes, windows, valid):
      return pipeline(init_model, variables, pixels, sizes, windows, valid, partner_model,
                      partner_variables)
    jax.eval_shape(infer, variables, partner.variables if partner else {},
                   jax.ShapeDtypeStruct((1, *eval_hw, 3), jnp.uint8),
                   jax.ShapeDtypeStruct((1, 2), jnp.int32),
                   jax.ShapeDtypeStruct((1, count, 4), jnp.int32),
                   jax.ShapeDtypeStruct((1, count), jnp.bool_))
  except ValueError as e:
    raise ValueError(
        f'evaluation cannot run: {config.model.name} with config.eval.mode={config.eval.mode!r} '
        f'on images padded to config.data.eval_size={eval_hw} (config.eval.crop_size='
        f'{tuple(config.eval.crop_size)}, config.eval.stride={tuple(config.eval.stride)}, '
        f'config.eval.scales={tuple(config.eval.scales)}): {e}') from e


def check_data(config: ml_collections.ConfigDict, process_count: int) -> None:
  """The train split feeds every process; the eval split exists and holds eval.num_examples."""
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TF)
  builder = pipeline.load_builder(config)
  check_classes(config, builder)
  train_size = pipeline.split_size(builder, config.data.train_split, 'config.data.train_split')
  if train_size < process_count:
    raise ValueError(f'config.data.train_split={config.data.train_split!r} has {train_size} '
                     f'examples, fewer than the {process_count} processes that read it.')
  if not evaluates(config):
    return
  eval_size = pipeline.split_size(builder, config.data.eval_split, 'config.data.eval_split')
  wanted = int(config.eval.num_examples)
  if wanted > eval_size:
    raise ValueError(
        f'config.eval.num_examples={wanted} is more than the {eval_size} examples of '
        f'config.data.eval_split={config.data.eval_split!r}; use at most {eval_size}, or -1 for '
        'the whole split.')
  if wanted == 0:
    raise ValueError('config.eval.num_examples=0 would evaluate nothing; use -1 for the whole '
                     'split, or config.train.eval_every=-1 to train without evaluation.')


def check_classes(config: ml_collections.ConfigDict, builder: Any) -> None:
  """config.data.num_classes against the class count the dataset's metadata records.

  jaxseg's builders record `class_names` in their TFDS metadata. Fewer classes than the dataset
  has is an error: labels >= num_classes would count as valid pixels without loss and drop out of
  the confusion matrix, inflating every score. More is allowed with a warning: the extra outputs
  never appear in the labels, so they only cost compute and, when predicted, count as errors (a
  head for a superset of classes, e.g. before fine-tuning on another dataset). Datasets without
  `class_names` are checked example by example in the input pipeline alone.
  """
  metadata = getattr(builder.info, 'metadata', None) or {}
  names = metadata.get('class_names')
  if not names:
    return
  wanted, found = int(config.data.num_classes), len(names)
  if wanted < found:
    shown = ', '.join(names[:4]) + (', ...' if found > 4 else '')
    raise ValueError(
        f'config.data.num_classes={wanted} is less than the {found} classes of '
        f'config.data.dataset={config.data.dataset!r} ({shown}): labels '
        f'{wanted}..{found - 1} would count as pixels without loss and be left out of the scores. '
        f'Set config.data.num_classes={found}.')
  if wanted > found:
    logging.warning('config.data.num_classes=%d is more than the %d classes of %r: outputs '
                    '%d..%d never occur in the labels (allowed; set %d unless intended).', wanted,
                    found, config.data.dataset, found, wanted - 1, found)
