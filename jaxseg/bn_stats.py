"""`jaxseg bn-stats --workdir DIR --output OUT`: BatchNorm population statistics after training.

DeconvNet's third training step, "make BN layer testable" (HyeonwooNoh/DeconvNet,
training/003_make_bn_layer_testable/BN_make_INFERENCE_script.py with
DeconvNet_make_bn_layer_testable.prototxt): the trained net runs with BatchNorm on batch
statistics over 1 + 500 batches of its stage-2 training data (batch 28, 224 crops, mirrored;
no parameter update, Caffe's test phase so no dropout); each BN layer's per-batch mean and
per-batch (biased) variance are averaged over the batches, the averaged variance is multiplied by
m / (m - 1) with m = N * H * W the elements per channel of one batch, and the result replaces
the moving averages the training left behind. For any BatchNorm model of jaxseg (deconvnet,
pspnet50, pspnet101).

Differences from the script, on purpose:
  * The statistics are written into the checkpoint's batch_stats ('mean', 'var') of Flax's
    nn.BatchNorm, which keeps its own epsilon (1e-5) at inference. The script instead folds them
    into the BN layer's scale and shift (gamma / sqrt(var + 1e-9), beta - gamma * mean / ...);
    jaxseg keeps the parameters bitwise unchanged.
  * `--batches N` averages exactly N batches; the default 501 is the script's count
    (one forward pass, then `iteration = 500` more).
  * The batches are config.data's training batches from step 0 (`pipeline.train_iterator`:
    the same augmentation and windows as training, deterministic), of `--batch_size` images
    (default: the training micro-batch, config.train.batch_size / config.train.grad_accum_steps;
    the script used 28 where training used 8 per iter_size step).
  * Each batch's statistics are those a training step computes: over the whole global batch with
    config.model.sync_bn (m = global N * H * W), else per device and then averaged over the
    devices (m = per-device N * H * W, the count each biased variance was taken over).

How each batch's statistics are read: Flax's BatchNorm in train mode sets
running = momentum * running + (1 - momentum) * batch. The model is applied with every running
statistic set to zero, so the updated value is (1 - momentum) * batch, and dividing by
(1 - momentum) (each layer's own momentum, read from the module) gives the batch's mean and
biased variance as the layer computed them (to float32 rounding: the multiply and the divide).

The result is a new workdir OUT: config.json, one checkpoint at the source's step holding the
whole train state with params, opt_state and rng unchanged and batch_stats replaced (so
`jaxseg eval/predict --workdir OUT` use it, and training could resume from it), and bn_stats.json
(source, step, batches, batch size, devices, time). The source workdir is only read.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import time
from collections.abc import Iterable
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from jaxseg import parallel
from jaxseg import storage

RECORD_FILE = 'bn_stats.json'
# BN_make_INFERENCE_script.py: one forward pass, then `iteration = 500` more, all averaged.
DEFAULT_BATCHES = 501


class BatchNormLayer(NamedTuple):
  """One nn.BatchNorm of a model as called in train mode on one device's batch."""
  momentum: float
  elements: int  # Values per channel in one device's batch (N * H * W).


# ---------------------------------------------------------------- the statistics
def batch_norm_layers(model: nn.Module, variables: dict, local_shape: tuple[int, ...]
                      ) -> dict[tuple[str, ...], BatchNormLayer]:
  """The BatchNorm layers of `model` (train mode) on per-device images of `local_shape`.

  Keys are module paths, as in the batch_stats tree (('backbone', 'bn1_1'), ...).

  Raises:
    ValueError: a BatchNorm in train mode that uses its running averages (frozen: no batch
      statistics), one called twice, or batch_stats that no train-mode BatchNorm updates.
  """
  layers: dict[tuple[str, ...], BatchNormLayer] = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.BatchNorm) and context.method_name == '__call__':
      path = tuple(module.path)
      frozen = nn.merge_param('use_running_average', module.use_running_average,
                              kwargs.get('use_running_average', args[1] if len(args) > 1
                                         else None))
      if frozen:
        raise ValueError(f'BatchNorm {"/".join(path)} uses its running averages in train mode '
                         '(frozen): it has no batch statistics to recompute.')
      if path in layers:
        raise ValueError(f'BatchNorm {"/".join(path)} is called more than once per forward '
                         'pass; its statistics per batch are not defined.')
      shape = args[0].shape
      features = {a % len(shape) for a in (module.axis if isinstance(module.axis, tuple)
                                            else (module.axis,))}
      elements = math.prod(d for i, d in enumerate(shape) if i not in features)
      layers[path] = BatchNormLayer(float(module.momentum), int(elements))
    return next_fun(*args, **kwargs)

  # Shapes only, outside any mesh axis, without dropout (as the statistics are computed).
  local_model = model.clone(sync_bn_axis=None, dropout_rate=0.0)

  def apply(variables):
    with nn.intercept_methods(record):
      return local_model.apply(variables, jnp.zeros(local_shape, jnp.float32), train=True,
                               mutable=['batch_stats'])

  jax.eval_shape(apply, variables)
  stats_layers = {path[:-1] for path in flax.traverse_util.flatten_dict(
      variables.get('batch_stats', {}))}
  missing = sorted(stats_layers - set(layers))
  if missing:
    raise ValueError(f'batch_stats of {", ".join("/".join(p) for p in missing)} are not updated '
                     'by any BatchNorm in train mode.')
  return layers


def _from_updated(updated: dict, layers: dict[tuple[str, ...], BatchNormLayer]) -> dict:
  """Batch statistics from running averages updated from zero: each divided by (1 - momentum)."""
  flat = flax.traverse_util.flatten_dict(updated)
  return flax.traverse_util.unflatten_dict(
      {key: value / (1.0 - layers[key[:-1]].momentum) for key, value in flat.items()})


def make_statistics_step(model: nn.Module, layers: dict[tuple[str, ...], BatchNormLayer],
                         mesh: Mesh, normalization: str | None = None
                         ) -> Callable[[Any, dict, jax.Array], dict]:
  """jit(shard_map): (params, sums, images) -> sums + this batch's {'mean', 'var'} per layer.

  `images` is the global batch split over 'data' (float32 normalised, or uint8 pixels
  normalised here with `normalization`); `sums` (replicated, donated) has batch_stats' structure.
  With `model.sync_bn_axis` the layers' statistics are the global batch's; without, each
  device's are averaged over the devices.
  """
  axis = parallel.DATA_AXIS
  sync = model.sync_bn_axis is not None
  if sync and model.sync_bn_axis != axis:
    raise ValueError(f'model.sync_bn_axis={model.sync_bn_axis!r}; the mesh axis is {axis!r}.')
  model = model.clone(dropout_rate=0.0)  # Inference statistics: Caffe's test phase, no dropout.

  def per_device(params, sums, images):
    if images.dtype == jnp.uint8:
      if normalization is None:
        raise ValueError('uint8 images need a normalization (config.data.normalization).')
      from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TF)
      images = pipeline.normalize(images, normalization)
    zeros = jax.tree.map(jnp.zeros_like, sums)
    _, updated = model.apply({'params': params, 'batch_stats': zeros}, images, train=True,
                             mutable=['batch_stats'])
    stats = _from_updated(updated['batch_stats'], layers)
    if not sync:  # Per-device statistics, as a training step without sync BN computes them.
      stats = lax.pmean(stats, axis)
    return jax.tree.map(lambda total, x: total + x.astype(total.dtype), sums, stats)

  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(axis)), out_specs=P(),
                         check_vma=False)
  return jax.jit(mapped, donate_argnums=(1,))


def population_statistics(model: nn.Module, variables: dict, batches: Iterable[dict], mesh: Mesh,
                          num_batches: int, *, normalization: str | None = None,
                          progress: bool = False) -> tuple[dict, dict[str, int]]:
  """BatchNorm population statistics of `model` over `num_batches` of `batches`.

  Per layer: the mean over the batches of the batch means, and the mean of the batch (biased)
  variances times m / (m - 1), m = elements per channel of one batch (global with sync BN, else
  per device), as BN_make_INFERENCE_script.py.

  Args:
    model: the Flax module (built as jaxseg.train.build_model: sync BN through
      `sync_bn_axis='data'` or per device with None); dropout is switched off.
    variables: {'params', 'batch_stats'}; batch_stats give the structure (values are unused).
    batches: global batches {'image': (B, H, W, 3)} split over the mesh axis 'data'.
    mesh: the mesh of the batches.
    num_batches: how many batches are averaged (exactly).
    normalization: config.data.normalization, for uint8 images.
    progress: show a progress bar (process 0).

  Returns:
    (batch_stats as float32 NumPy arrays in the structure of variables['batch_stats'],
     {'/'-joined layer path: m}).

  Raises:
    ValueError: no BatchNorm, num_batches < 1, batches that end early or change shape, or a
      layer with one value per channel (m = 1: no variance).
  """
  if num_batches < 1:
    raise ValueError(f'--batches={num_batches} must be >= 1.')
  template = variables.get('batch_stats') or {}
  if not template:
    raise ValueError('The model has no BatchNorm layers: there are no statistics to recompute.')
  batches = iter(batches)
  first = next(batches, None)
  if first is None:
    raise ValueError('The batches ended before the first one.')
  shape = tuple(first['image'].shape)
  if shape[0] % mesh.size:
    raise ValueError(f'A batch of {shape[0]} images does not split over {mesh.size} devices.')
  local_shape = (shape[0] // mesh.size,) + shape[1:]
  layers = batch_norm_layers(model, variables, local_shape)
  scale = mesh.size if model.sync_bn_axis is not None else 1
  elements = {path: layer.elements * scale for path, layer in layers.items()}
  single = [('/'.join(p), m) for p, m in elements.items() if m < 2]
  if single:
    raise ValueError(f'BatchNorm {single[0][0]} sees {single[0][1]} value per channel in a batch: '
                     'its variance is undefined. Use a larger --batch_size (or '
                     'config.model.sync_bn=true to pool the devices\' batches).')

  step = make_statistics_step(model, layers, mesh, normalization)
  sums = parallel.replicate(jax.tree.map(lambda x: np.zeros(x.shape, np.float32), template), mesh)
  bar = tqdm.tqdm(total=num_batches, desc='bn-stats', unit='batch', dynamic_ncols=True,
                  disable=not progress or jax.process_index() != 0)
  try:
    batch = first
    for i in range(num_batches):
      if i:
        batch = next(batches, None)
        if batch is None:
          raise ValueError(f'The batches ended after {i} of {num_batches}.')
        if tuple(batch['image'].shape) != shape:
          raise ValueError(f'Batch {i} has images of shape {tuple(batch["image"].shape)}, the '
                           f'first {shape}: every batch must have the same shape.')
      sums = step(variables['params'], sums, batch['image'])
      bar.update(1)
  finally:
    bar.close()

  flat = flax.traverse_util.flatten_dict(parallel.to_host(sums))
  out = {}
  for key, total in flat.items():
    value = np.asarray(total, np.float64) / num_batches
    if key[-1] == 'var':
      m = elements[key[:-1]]
      value = value * (m / (m - 1))
    out[key] = value.astype(np.float32)
  return (flax.traverse_util.unflatten_dict(out),
          {'/'.join(path): m for path, m in elements.items()})


# ---------------------------------------------------------------- the workdir command
def _real(path: Any) -> str:
  text = os.fspath(path)
  return text.rstrip('/') if storage.is_remote(text) else os.path.realpath(text)


def _check_output(source: Any, output: Any) -> None:
  """OUT must be new (or an empty folder) and outside the source workdir."""
  src, out = _real(source), _real(output)
  if out == src or out.startswith(src + '/'):
    raise ValueError(f'--output {output} is inside the source workdir {source}: bn-stats never '
                     'writes there; pass a new folder.')
  if output.exists():
    if not output.is_dir():
      raise ValueError(f'--output {output} exists and is not a folder; pass a new folder.')
    if any(True for _ in output.iterdir()):
      raise ValueError(f'--output {output} exists and is not empty: bn-stats writes a new '
                       'workdir there; pass a new (or empty) folder.')


def recompute(workdir: str | os.PathLike, output: str | os.PathLike, *,
              checkpoint: str | int = 'best', num_batches: int = DEFAULT_BATCHES,
              batch_size: int | None = None, progress: bool = False,
              log: Callable[[str], Any] = logging.info) -> dict[str, Any]:
  """Writes `output`: `workdir`'s checkpoint with population BatchNorm statistics.

  Args:
    workdir: a trained workdir (only read).
    output: the new workdir (must not exist, or be empty).
    checkpoint: 'best' (highest eval mean IoU, else latest), 'latest' or a step.
    num_batches: training batches averaged (exactly; default the script's 1 + 500).
    batch_size: global images per batch; default the training micro-batch
      (config.train.batch_size / config.train.grad_accum_steps).
    progress: show a progress bar.
    log: where progress lines go.

  Returns:
    The record written to OUT/bn_stats.json.

  Raises:
    FileNotFoundError: the workdir or its checkpoints are missing.
    ValueError: an existing non-empty or nested output, a model without BatchNorm (FCN), a
      batch size that does not split over the devices, or the errors of population_statistics.
  """
  from jaxseg import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from jaxseg import config_loading, optim, train  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  source, out = storage.resolve(workdir), storage.resolve(output)
  if not source.is_dir():
    raise FileNotFoundError(f'workdir {workdir} does not exist')
  # Every process checks before its first collective; process 0 writes only after the last one.
  _check_output(source, out)
  if num_batches < 1:
    raise ValueError(f'--batches={num_batches} must be >= 1.')

  reader = checkpoint_lib.Checkpointer(source, read_only=True)
  try:
    step = reader.resolve_step(checkpoint)
    config = config_loading.from_dict(reader.config(step))
    model = train.build_model(config)
    mesh = parallel.create_mesh()
    tx, _ = optim.create_optimizer(config, train.backbone_prefixes(config))
    target = train.create_train_state(config, model, tx, mesh, abstract=True)
    if not target.batch_stats:
      raise ValueError(f'{source} holds a {config.model.name} model, which has no BatchNorm '
                       'layers: bn-stats is for BatchNorm models (deconvnet, pspnet50, '
                       'pspnet101).')
    if batch_size is None:
      batch_size = int(config.train.batch_size) // int(config.train.grad_accum_steps)
    if batch_size < 1 or batch_size % mesh.size:
      raise ValueError(f'--batch_size={batch_size} must be a positive multiple of the number of '
                       f'devices ({mesh.size}).')
    state = reader.restore(step, target)
  finally:
    reader.close()
  log(f'bn-stats: {config.model.name} step {step} of {source}: {num_batches} batches of '
      f'{batch_size} from {config.data.dataset} {config.data.train_split} on {mesh.size} devices '
      f'(sync_bn={bool(config.model.sync_bn)})')

  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TF)
  data_config = config_loading.from_dict(config.to_dict())
  data_config.train.batch_size = batch_size
  batches = pipeline.train_iterator(data_config, mesh, start_step=0)
  try:
    stats, elements = population_statistics(
        model, state.variables, batches, mesh, num_batches,
        normalization=config.data.normalization, progress=progress)
  finally:
    batches.close()  # Stops the input thread.
  stats = jax.tree.map(lambda x, old: x.astype(old.dtype), stats, state.batch_stats)
  state = state.replace(batch_stats=parallel.replicate(stats, mesh))

  writer = checkpoint_lib.Checkpointer(out, int(config.train.keep_checkpoints))
  try:
    writer.save(step, state, config)
    writer.wait()
  finally:
    writer.close()
  checkpoint_lib.write_workdir_config(out, config)
  record = {
      'source_workdir': os.fspath(source), 'source_checkpoint': str(checkpoint), 'step': step,
      'batches': num_batches, 'batch_size': batch_size, 'devices': mesh.size,
      'sync_bn': bool(config.model.sync_bn), 'train_split': config.data.train_split,
      'variance_correction': 'm / (m - 1)', 'elements_per_channel': elements,
      'seconds': round(time.perf_counter() - start, 3),
      'time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
  if jax.process_index() == 0:
    storage.write_text_atomic(out / RECORD_FILE, json.dumps(record, indent=2) + '\n')
  log(f'bn-stats: wrote {out} ({len(elements)} BatchNorm layers, {record["seconds"]:.1f} s)')
  return record


# ---------------------------------------------------------------- CLI
def cmd_bn_stats(args: argparse.Namespace) -> int:
  from jaxseg import launch  # pylint: disable=g-import-not-at-top
  launch.initialize_from_environment()  # One process per host, as `jaxseg train`.
  recompute(args.workdir, args.output, checkpoint=args.checkpoint, num_batches=args.batches,
            batch_size=args.batch_size, progress=True, log=print)
  return 0


def register(subparsers: Any) -> None:
  """Adds `jaxseg bn-stats` to the CLI (jaxseg.cli calls this for its plug-ins)."""
  from jaxseg import cli  # pylint: disable=g-import-not-at-top  (cli imports this module)
  p = subparsers.add_parser(
      'bn-stats', help='recompute BatchNorm statistics over training batches into a new workdir '
      "(DeconvNet's make-BN-testable step)")
  p.add_argument('--workdir', required=True, help='a trained workdir (only read)')
  p.add_argument('--output', required=True, help='the new workdir (must not exist or be empty)')
  p.add_argument('--checkpoint', type=cli.checkpoint_arg, default='best',
                 help='best (by eval mean IoU; latest if none evaluated), latest or a step')
  p.add_argument('--batches', type=int, default=DEFAULT_BATCHES,
                 help=f'training batches averaged (default {DEFAULT_BATCHES}: the original '
                 "script's 1 + 500)")
  p.add_argument('--batch_size', '--batch-size', type=int, default=None,
                 help='global images per batch (default: the training micro-batch, '
                 'config.train.batch_size / config.train.grad_accum_steps)')
  p.set_defaults(func=cmd_bn_stats)
