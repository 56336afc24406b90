"""What `jaxseg doctor` measures at which size: the full form and the reduced (CPU smoke) form.

Full form (a GPU or TPU; about 6-8 minutes, most of it compiling PSPNet-50 four times):
  train steps   PSPNet-50, 473x473 crops, bfloat16, batch 2 and batch 8 (experiments/pspnet50_voc)
  train loop    the same step at batch 8 inside `train_and_evaluate` on synthetic_shapes
  checkpoint    a PSPNet-50 train state (~0.4 GB)
  eval          multi-scale (0.5-1.75) + flip of a 512x512 image, 473 windows at stride 316
Reduced form (`--quick`, and whenever JAX's backend is the CPU; well under a minute of work):
  train steps   PSPNet with one bottleneck per stage, width 1/8, 65x65, float32, batch 2
  train loop    FCN-8s of experiments/demo.py at width 1/16 on 32x32 crops of synthetic_shapes/tiny
                (the loop builds its model from the config alone, and this is the cheapest
                network whose XLA:CPU compile fits the budget)
  checkpoint    the reduced PSPNet's train state
  eval          scale 1.25 + flip of a 65x65 image, 49 windows at stride 33: resizing, sliding
                windows and flips, as the full form's larger scales
The reduced PSPNet keeps every kind of layer of PSPNet-50 (deep stem, dilated bottlenecks,
pyramid pooling, auxiliary head) and drops the repeats: ResNet-50's 3-4-6-3 blocks take XLA:CPU
over a minute to compile at any width.

Every config comes from an experiment file plus dotted overrides (a locked ConfigDict: a
misspelt field fails here), so the numbers are those of the recipe a user would train.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import ml_collections

from jaxseg import config_loading
from jaxseg import train

Fields = tuple[tuple[str, Any], ...]

# Training-loop runs: no evaluation, one save at the end, a log every `log_every` steps. The
# first logged interval includes the compilation; the later ones are the steady state.
_LOOP_FIELDS: Fields = (('train.eval_every', -1), ('train.checkpoint_every', 0),
                        ('train.keep_checkpoints', 1), ('data.train_split', 'train'),
                        ('data.eval_split', 'val'))


@dataclasses.dataclass(frozen=True)
class Form:
  """The sizes of one form of the doctor.

  Attributes:
    name: 'full' or 'quick'.
    step_recipe: experiment file (in experiments/) of the train-step, checkpoint and eval model.
    step_fields: dotted config overrides of that recipe.
    stage_sizes: ResNet blocks per stage of the step model (None: the recipe's depth).
    step_batches: batch sizes of the train-step checks.
    warmup, timed_steps: untimed steps after the first, then timed steps (median reported).
    loop_recipe, loop_fields, loop_batch: the training-loop check's recipe, overrides and batch
      (rounded up to a multiple of the device count: `train_and_evaluate` uses every device).
    eval_size, eval_crop, eval_stride, eval_scales: the multi-scale + flip eval.
  """
  name: str
  step_recipe: str
  step_fields: Fields
  stage_sizes: tuple[int, ...] | None
  step_batches: tuple[int, ...]
  warmup: int
  timed_steps: int
  loop_recipe: str
  loop_fields: Fields
  loop_batch: int
  eval_size: tuple[int, int]
  eval_crop: tuple[int, int]
  eval_stride: tuple[int, int]
  eval_scales: tuple[float, ...]

  @property
  def quick(self) -> bool:
    return self.name == 'quick'


# The full form's step config is the loop's (dataset fields and step count included), so the
# batch-8 step check compiles the very program the loop check's trainer compiles: with the
# persistent compilation cache on (jaxseg's default) the trainer's compile is then a cache hit.
_FULL_TRAIN: Fields = (('model.width', 1.0), ('model.dtype', 'bfloat16'),
                       ('data.crop_size', (473, 473)), ('data.dataset', 'synthetic_shapes'),
                       ('train.num_steps', 40), ('train.log_every', 10)) + _LOOP_FIELDS

FULL = Form(
    name='full', step_recipe='pspnet50_voc.py', step_fields=_FULL_TRAIN, stage_sizes=None,
    step_batches=(2, 8), warmup=2, timed_steps=10,
    loop_recipe='pspnet50_voc.py', loop_fields=_FULL_TRAIN, loop_batch=8,
    eval_size=(512, 512), eval_crop=(473, 473), eval_stride=(316, 316),
    eval_scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75))

QUICK = Form(
    name='quick', step_recipe='pspnet50_voc.py',
    step_fields=(('model.width', 0.125), ('model.dtype', 'float32'), ('data.crop_size', (65, 65))),
    stage_sizes=(1, 1, 1, 1), step_batches=(2,), warmup=1, timed_steps=3,
    loop_recipe='demo.py',
    loop_fields=(('model.width', 0.0625), ('data.crop_size', (32, 32)),
                 ('data.dataset', 'synthetic_shapes/tiny'), ('data.shuffle_buffer', 64),
                 ('data.prefetch', 1), ('optim.warmup_steps', 0), ('train.num_steps', 9),
                 ('train.log_every', 3)) + _LOOP_FIELDS,
    loop_batch=2,
    eval_size=(65, 65), eval_crop=(49, 49), eval_stride=(33, 33), eval_scales=(1.25,))


def _config(recipe: str, fields: Fields, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  config = config_loading.load_config(config_loading.experiments_dir() / recipe)
  config.update_from_flattened_dict(dict(fields) | overrides)
  return config


def step_config(form: Form, batch: int, data_dir: str = '') -> ml_collections.ConfigDict:
  """The train-step (and checkpoint, eval) config at global batch `batch`."""
  return _config(form.step_recipe, form.step_fields,
                 {'train.batch_size': batch, 'data.data_dir': data_dir})


def loop_batch(form: Form, num_devices: int) -> int:
  """The loop's batch: form.loop_batch rounded up to a multiple of the devices."""
  return -(-form.loop_batch // num_devices) * num_devices


def loop_config(form: Form, data_dir: str, num_devices: int) -> ml_collections.ConfigDict:
  """The training-loop check's config (every device of the process trains)."""
  return _config(form.loop_recipe, form.loop_fields,
                 {'train.batch_size': loop_batch(form, num_devices), 'data.data_dir': data_dir})


def step_model(form: Form, config: ml_collections.ConfigDict) -> nn.Module:
  """`train.build_model(config)`, with the form's ResNet stage sizes."""
  model = train.build_model(config)
  return model if form.stage_sizes is None else model.clone(stage_sizes=form.stage_sizes)


def model_name(config: ml_collections.ConfigDict, stage_sizes: tuple[int, ...] | None = None
               ) -> str:
  """'pspnet50 width 0.125 (1-1-1-1 blocks)', for messages."""
  blocks = '' if stage_sizes is None else f' ({"-".join(map(str, stage_sizes))} blocks)'
  scale = '' if config.model.width == 1.0 else f' width {config.model.width:g}'
  return f'{config.model.name}{scale}{blocks}'


def describe(config: ml_collections.ConfigDict, stage_sizes: tuple[int, ...] | None = None
             ) -> str:
  """'pspnet50 width 0.125 (1-1-1-1 blocks) 65x65 float32', for messages."""
  height, width = config.data.crop_size
  return f'{model_name(config, stage_sizes)} {height}x{width} {config.model.dtype}'
