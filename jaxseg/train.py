"""The trainer: `train_and_evaluate(config, workdir)`.

Read top to bottom, the banners of `_train` tell the training story: checkpoint (what the workdir
already holds), mesh, model, shard (initial or restored state), update (the per-device step,
defined in `make_train_step`), evals, input, loop (log, guard, evaluate, save).

The step is written per device, as for `jax.pmap` (see jaxseg.parallel): each device computes
the loss and gradients of its slice of the batch, gradients are `pmean`ed over 'data', BatchNorm
statistics are cross-replica when config.model.sync_bn, and the loss is the global mean over the
valid pixels of the whole batch — so N devices give the same update as one device with the same
global batch. Dropout keys are folded from (seed, step, device index): deterministic.

Steps count completed updates: logs, checkpoints and errors name `step` = the state's update
count after the update (the first update is step 1, made on batch 0).
"""
import dataclasses
import importlib.util
import json
import logging
import math
import pathlib
import time
from typing import Any, Callable, Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax import lax
from jax.sharding import Mesh

from jaxseg import checkpoint as checkpoint_lib
from jaxseg import losses
from jaxseg import optim
from jaxseg import parallel

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tb'
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


class TrainState(flax.struct.PyTreeNode):
  """Everything a resumed run needs besides the config and the data position (= step)."""
  step: jax.Array  # int32 scalar: updates applied so far.
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # uint32[2] base key for dropout.

  @property
  def variables(self) -> dict:
    """The model variables ({'params', 'batch_stats'}) for `model.apply`."""
    variables = {'params': self.params}
    if self.batch_stats:
      variables['batch_stats'] = self.batch_stats
    return variables


class NonFiniteLossError(FloatingPointError):
  """Training stopped: the loss (or gradient norm) became NaN or infinite."""


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
  """The model's compute dtype from config.model.dtype."""
  name = config.model.dtype
  if name not in _DTYPES:
    raise ValueError(f'config.model.dtype={name!r} is unknown; use one of {tuple(_DTYPES)} '
                     '(float32 on the CPU, bfloat16 on GPU/TPU).')
  return _DTYPES[name]


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The model of config.model for config.data.num_classes classes (see jaxseg.models)."""
  from jaxseg import models  # pylint: disable=g-import-not-at-top
  kwargs = dict(width=config.model.width, dtype=compute_dtype(config),
                sync_bn_axis=parallel.DATA_AXIS if config.model.sync_bn else None)
  if config.model.dropout_rate >= 0:
    kwargs['dropout_rate'] = config.model.dropout_rate
  if config.model.name.startswith('fcn'):
    kwargs['geometry'] = config.model.geometry
  return models.create_model(config.model.name, num_classes=config.data.num_classes, **kwargs)


def backbone_prefixes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  from jaxseg import models  # pylint: disable=g-import-not-at-top
  return tuple(models.BACKBONE_PREFIXES.get(config.model.name, ()))


def _check_config(config: ml_collections.ConfigDict) -> None:
  train = config.train
  devices = jax.device_count()
  if train.batch_size < 1 or train.batch_size % devices:
    raise ValueError(f'config.train.batch_size={train.batch_size} must be a positive multiple of '
                     f'the number of devices ({devices}).')
  if train.num_steps < 1:
    raise ValueError(f'config.train.num_steps={train.num_steps} must be >= 1.')
  for field in ('log_every', 'eval_every', 'checkpoint_every'):
    if train[field] < 0:
      raise ValueError(f'config.train.{field}={train[field]} must be >= 0 (0 = only at the end).')


# ---------------------------------------------------------------- shard: the initial state
def create_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                       tx: optax.GradientTransformation, mesh: Mesh, *,
                       abstract: bool = False) -> TrainState:
  """The initial state replicated over `mesh` (pretrained backbone from config.model.init_from).

  With `abstract=True` only shapes/dtypes/shardings are computed (the target of a restore).
  """
  init_rng, dropout_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  height, width = config.data.crop_size
  # Local BN and train=True: every layer (e.g. PSPNet's aux head) exists, outside any mesh axis.
  init_model = model.clone(sync_bn_axis=None)

  def init_variables():
    images = jnp.zeros((1, height, width, 3), jnp.float32)
    variables = init_model.init({'params': init_rng, 'dropout': dropout_rng}, images, train=True)
    return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}

  def make_state(variables):
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                      batch_stats=variables['batch_stats'],
                      opt_state=tx.init(variables['params']), rng=train_rng)

  sharding = parallel.replicated(mesh)
  if abstract:
    shapes = jax.eval_shape(lambda: make_state(init_variables()))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        shapes)
  variables = jax.jit(init_variables)()
  if config.model.init_from:
    from jaxseg import weights  # pylint: disable=g-import-not-at-top
    variables, _ = weights.init_from_config(variables, config, log=logging.info)
  variables = jax.device_get(variables)
  return jax.jit(make_state, out_shardings=sharding)(variables)


# ---------------------------------------------------------------- update: the per-device step
def make_train_step(config: ml_collections.ConfigDict, model: nn.Module,
                    tx: optax.GradientTransformation, schedule: optax.Schedule,
                    mesh: Mesh) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """jit(shard_map(per-device step)): (state, batch) -> (new state, replicated metrics).

  The batch is {'image': float32 (B, h, w, 3), 'label': int32 (B, h, w)} split over 'data';
  the state's buffers are donated.
  """
  axis = parallel.DATA_AXIS
  loss_kwargs = dict(normalize=bool(config.loss.normalize),
                     aux_weight=float(config.loss.aux_weight),
                     ignore_label=int(config.data.ignore_label),
                     class_weights=tuple(config.loss.class_weights) or None)
  sync_bn = bool(config.model.sync_bn)

  def per_device_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(axis))

    def loss_fn(params):
      outputs, mutated = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
          rngs={'dropout': rng}, mutable=['batch_stats'])
      loss, metrics = losses.segmentation_loss(outputs, batch['label'], axis_name=axis,
                                               **loss_kwargs)
      return loss, (metrics, mutated.get('batch_stats', {}))

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, axis)
    if not sync_bn:  # Per-device statistics differ; keep the replicated state replicated.
      batch_stats = lax.pmean(batch_stats, axis)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   learning_rate=schedule(state.step))
    return new_state, metrics

  step_fn = parallel.data_parallel(per_device_step, mesh)
  return lambda state, batch: step_fn(state, {'image': batch['image'], 'label': batch['label']})


# ---------------------------------------------------------------- evals
def _make_evaluator(config: ml_collections.ConfigDict, model: nn.Module, mesh: Mesh,
                    workdir: pathlib.Path) -> Callable[[TrainState, int], dict] | None:
  """state, step -> eval results on config.data.eval_split (None without jaxseg.evaluate)."""
  if importlib.util.find_spec('jaxseg.evaluate') is None:
    logging.warning('jaxseg.evaluate is missing: training without evaluation.')
    return None
  from jaxseg import evaluate  # pylint: disable=g-import-not-at-top

  def run(state: TrainState, step: int) -> dict:
    return evaluate.evaluate(config, model, state.variables, mesh, config.data.eval_split,
                             workdir=workdir, step=step)
  return run


# ---------------------------------------------------------------- logging
class MetricWriter:
  """metrics.jsonl plus TensorBoard scalars in tb/; only process 0 writes."""

  def __init__(self, workdir: pathlib.Path, resume_step: int):
    self.enabled = jax.process_index() == 0
    self.path = workdir / METRICS_FILE
    self._tb = None
    if not self.enabled:
      return
    if self.path.exists():  # Drop lines a killed run logged after its last checkpoint.
      kept = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line).get('step', 0) <= resume_step]
      self.path.write_text(''.join(line + '\n' for line in kept))
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      try:
        tf.config.set_visible_devices([], 'GPU')  # TF writes files only; GPUs belong to JAX.
      except RuntimeError:
        pass  # TF's devices were initialised already (by the input pipeline, which hides them).
      self._tf = tf
      self._tb = tf.summary.create_file_writer(str(workdir / TENSORBOARD_DIR))
      self._scalar_metadata = tf.compat.v1.SummaryMetadata()
      self._scalar_metadata.plugin_data.plugin_name = 'scalars'
    except ImportError:
      logging.warning('tensorflow is not installed: no TensorBoard events.')

  def write(self, step: int, split: str, values: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split}
    for key, value in values.items():
      if isinstance(value, (np.ndarray, list, tuple)):
        value = [None if v is None or not math.isfinite(float(v)) else float(v)
                 for v in np.asarray(value, np.float64).ravel()]
      else:
        value = float(value) if math.isfinite(float(value)) else None
      record[key] = value
    with self.path.open('a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      # tf.summary.write with scalar metadata: works without the tensorboard package.
      with self._tb.as_default():
        for key, value in record.items():
          if key not in ('step', 'split') and isinstance(value, float):
            self._tf.summary.write(f'{split}/{key}', self._tf.constant(value, self._tf.float32),
                                   step=int(step), metadata=self._scalar_metadata)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


_EVAL_LOG_KEYS = ('pixel_accuracy', 'mean_accuracy', 'mean_iou', 'fw_iou', 'per_class_iou')


@dataclasses.dataclass
class _Pending:
  """Metrics of a dispatched step, checked on the host one step later (no pipeline stall)."""
  step: int
  metrics: dict


# ---------------------------------------------------------------- train_and_evaluate
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Trains config's model data-parallel over every device, evaluating and checkpointing.

  Resumes automatically from the latest checkpoint in `workdir`. Refuses a workdir made with a
  different model/data config (see jaxseg.checkpoint.IDENTITY_FIELDS) unless
  `allow_config_change`.

  Returns:
    {'step', 'loss' (mean train loss of the last logging interval), and the final eval's
    'pixel_accuracy', 'mean_accuracy', 'mean_iou', 'fw_iou', 'per_class_iou' when evaluated}.

  Raises:
    NonFiniteLossError: the loss or gradients became NaN/Inf (the message names the step; no
      state from that step on is saved).
  """
  parallel.maybe_initialize_distributed()
  workdir = pathlib.Path(workdir)
  _check_config(config)
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.train.keep_checkpoints)
  try:
    return _train(config, workdir, checkpointer, allow_config_change)
  finally:
    checkpointer.wait()  # A save in flight (the last good state) completes even on errors.
    checkpointer.close()


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path,
           checkpointer: checkpoint_lib.Checkpointer, allow_config_change: bool) -> dict:
  """train_and_evaluate's body, given the workdir's checkpointer."""
  is_main = jax.process_index() == 0
  train_cfg = config.train

  # ------------------------------------------------------------ checkpoint: the workdir's past
  latest = checkpointer.latest_step()
  if latest is not None:  # The config saved with the state is what the state belongs to.
    changed = checkpoint_lib.check_compatible(
        checkpointer.config(latest), config, source=f'workdir {workdir}',
        allow_config_change=allow_config_change)
    if changed:
      logging.warning('Config differs from the checkpoint\'s: %s', changed)

  # ------------------------------------------------------------ mesh
  mesh = parallel.create_mesh()
  logging.info('Mesh: %d devices over %d processes', mesh.size, jax.process_count())

  # ------------------------------------------------------------ model
  model = build_model(config)
  tx, schedule = optim.create_optimizer(config, backbone_prefixes(config))

  # ------------------------------------------------------------ shard: initial or restored state
  if latest is not None:
    target = create_train_state(config, model, tx, mesh, abstract=True)
    state = checkpointer.restore(latest, target)
    logging.info('Resumed from step %d in %s', latest, checkpointer.directory)
  else:
    state = create_train_state(config, model, tx, mesh)
  start_step = int(parallel.to_host(state.step))
  num_steps = int(train_cfg.num_steps)
  # Written once the config proved buildable (a typo must not claim the workdir).
  checkpoint_lib.write_workdir_config(workdir, config)

  # ------------------------------------------------------------ update
  train_step = make_train_step(config, model, tx, schedule, mesh)

  # ------------------------------------------------------------ evals
  evaluator = _make_evaluator(config, model, mesh, workdir)
  writer = MetricWriter(workdir, start_step)
  final: dict[str, Any] = {'step': start_step}

  def every(n: int, step: int) -> bool:
    return step == num_steps or (n > 0 and step % n == 0)

  def run_eval(step: int) -> dict | None:
    if evaluator is None:
      return None
    results = evaluator(state, step)
    scores = {k: results[k] for k in _EVAL_LOG_KEYS if k in results}
    writer.write(step, results.get('split', config.data.eval_split), scores)
    final.update(scores)
    if is_main:
      tqdm.tqdm.write(f'step {step}: {config.data.eval_split} mean IoU '
                      f'{scores.get("mean_iou", float("nan")):.4f}')
    return scores

  # ------------------------------------------------------------ input
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TF)
  batches: Iterator[dict] = pipeline.train_iterator(config, mesh, start_step)

  # ------------------------------------------------------------ loop
  last_saved = latest
  pending: list[_Pending] = []
  interval_losses: list[float] = []
  last_values: dict[str, Any] = {}  # Host metrics of the latest checked step.
  interval_start, interval_steps, paused = time.perf_counter(), 0, 0.0

  def check(upto: int) -> None:
    """Fetches metrics of steps <= upto; raises on a non-finite loss or gradient."""
    while pending and pending[0].step <= upto:
      item = pending.pop(0)
      values = parallel.to_host(item.metrics)
      loss, grad_norm = float(values['loss']), float(values['grad_norm'])
      if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        where = (f'step {last_saved} in {checkpointer.directory}' if last_saved is not None
                 else 'none saved yet')
        raise NonFiniteLossError(
            f'Non-finite training loss {loss} (gradient norm {grad_norm}) at step {item.step}. '
            f'Training stopped; nothing from this step on was saved (last good checkpoint: '
            f'{where}). Try a lower config.optim.learning_rate, warmup '
            '(config.optim.warmup_steps), gradient clipping (config.optim.grad_clip_norm) or '
            'float32 (config.model.dtype), and check the data.')
      interval_losses.append(loss)
      last_values.update(values)

  progress = tqdm.tqdm(total=num_steps, initial=start_step, disable=not is_main, desc='train',
                       unit='step', dynamic_ncols=True)
  try:
    for step in range(start_step + 1, num_steps + 1):
      batch = next(batches, None)
      if batch is None:
        raise RuntimeError(f'pipeline.train_iterator ended before step {step}; it must be endless.')
      state, metrics = train_step(state, batch)
      pending.append(_Pending(step, metrics))
      check(step - 1)  # The previous step: ready by now, while this one runs.
      interval_steps += 1
      progress.update(1)

      if every(train_cfg.log_every, step):
        check(step)
        elapsed = time.perf_counter() - interval_start - paused  # Without evals and saves.
        values = last_values
        record = {'loss': float(np.mean(interval_losses)),
                  'lr': float(values['learning_rate']),
                  'images_per_sec': interval_steps * train_cfg.batch_size / max(elapsed, 1e-9),
                  'grad_norm': float(values['grad_norm'])}
        if 'aux_loss' in values:
          record['main_loss'] = float(values['main_loss'])
          record['aux_loss'] = float(values['aux_loss'])
        writer.write(step, 'train', record)
        progress.set_postfix(loss=f'{record["loss"]:.4f}', lr=f'{record["lr"]:.3g}',
                             img_s=f'{record["images_per_sec"]:.1f}')
        final['loss'] = record['loss']
        interval_losses.clear()
        interval_start, interval_steps, paused = time.perf_counter(), 0, 0.0

      eval_now = every(train_cfg.eval_every, step)
      if eval_now or every(train_cfg.checkpoint_every, step):
        check(step)  # Never evaluate or save a state made from a non-finite step.
        pause_start = time.perf_counter()
        scores = run_eval(step) if eval_now else None
        checkpointer.save(step, state, config, metrics=scores)
        last_saved = step
        paused += time.perf_counter() - pause_start
    if start_step >= num_steps and evaluator is not None:
      run_eval(start_step)  # Already trained: report the final scores again.
    final['step'] = max(start_step, num_steps)
  finally:
    progress.close()
    writer.close()
  return final
