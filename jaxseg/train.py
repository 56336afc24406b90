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

Nothing lost, whatever happens to the process:
  - the workdir is locked (jaxseg.workdir_lock) before anything is written to it: a second
    trainer on it is refused; a failed run leaves nothing in a new workdir (config.json is written
    after the first step, TensorBoard's tb/ at the first log, empty folders it made are removed);
  - an evaluation that fails saves the state it was evaluating before the error propagates;
  - SIGTERM (preemption of cloud GPUs and TPU VMs) finishes the current step, saves it and exits
    with code 143 (`Preempted`) saying how to resume: the same command. Several processes agree on
    the step through JAX's preemption service (see `_Preemption`);
  - a non-finite loss stops before anything from that step is saved, naming the kept checkpoints
    with their logged train loss and eval mean IoU, and the best one.
"""
import json
import logging
import math
import os
import shlex
import signal
import sys
import threading
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
from etils import epath
from jax import lax
from jax.sharding import Mesh

from jaxseg import accelerators
from jaxseg import checkpoint as checkpoint_lib
from jaxseg import launch
from jaxseg import losses
from jaxseg import optim
from jaxseg import parallel
from jaxseg import preflight
from jaxseg import storage
from jaxseg import workdir_lock

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tb'
# float16 is not offered: without loss scaling its gradients underflow; bfloat16 has float32's range.
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


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


PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: what a shell reports for a process SIGTERM ended.


class Preempted(SystemExit):
  """Training stopped on SIGTERM after saving its state; rerun the same command to resume.

  A SystemExit with code PREEMPTED_EXIT_CODE: the process ends as SIGTERM asked (exit status
  143, which schedulers read as "terminated"), after `finally` blocks released the workdir. Callers
  of `train_and_evaluate` that want to go on may catch it.
  """

  def __init__(self, message: str):
    super().__init__(PREEMPTED_EXIT_CODE)
    self.message = message

  def __str__(self) -> str:
    return self.message


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
  """The model's compute dtype from config.model.dtype."""
  name = config.model.dtype
  if name not in _DTYPES:
    hint = (' float16 would need loss scaling (its small gradients underflow); bfloat16 has '
            "float32's range and the same tensor-core/MXU speed." if name == 'float16' else '')
    raise ValueError(f'config.model.dtype={name!r} is not offered; use one of {tuple(_DTYPES)} '
                     f'(float32 on the CPU, bfloat16 on GPU/TPU).{hint}')
  return _DTYPES[name]


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The model of config.model for config.data.num_classes classes (see jaxseg.models)."""
  from jaxseg import models  # pylint: disable=g-import-not-at-top
  kwargs = dict(width=config.model.width, dtype=compute_dtype(config),
                sync_bn_axis=parallel.DATA_AXIS if config.model.sync_bn else None,
                remat=config.model.remat)
  if config.model.dropout_rate >= 0:
    kwargs['dropout_rate'] = config.model.dropout_rate
  if config.model.name.startswith('fcn'):
    kwargs['geometry'] = config.model.geometry
    kwargs['skip_scales'] = tuple(float(v) for v in config.model.skip_scales)
  if config.model.name.startswith('pspnet'):
    kwargs['backbone'] = config.model.backbone
  return models.create_model(config.model.name, num_classes=config.data.num_classes, **kwargs)


def backbone_prefixes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  from jaxseg import models  # pylint: disable=g-import-not-at-top
  return tuple(models.BACKBONE_PREFIXES.get(config.model.name, ()))


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

  The batch is {'image': (B, h, w, 3) float32 normalised or uint8 RGB pixels (normalised on the
  device), 'label': int32 (B, h, w)} split over 'data'; the state's buffers are donated.

  With config.train.grad_accum_steps = k > 1 each device's share is cut into k micro-batches
  whose gradients are summed, each weighted by its share of the batch's valid pixels, so the update
  equals one step on the whole batch (the loss's normaliser is the batch's). BatchNorm statistics
  are then those of each micro-batch, as Caffe's iter_size (DeconvNet: BN over 8 images, gradients
  over 64); dropout draws per micro-batch.
  """
  axis = parallel.DATA_AXIS
  loss_kwargs = dict(normalize=bool(config.loss.normalize),
                     aux_weight=float(config.loss.aux_weight),
                     ignore_label=int(config.data.ignore_label),
                     class_weights=tuple(config.loss.class_weights) or None)
  sync_bn = bool(config.model.sync_bn)
  accum = int(config.train.grad_accum_steps)
  normalization = config.data.normalization

  def grads_of(params, batch_stats, images, labels, rng):
    def loss_fn(params):
      outputs, mutated = model.apply(
          {'params': params, 'batch_stats': batch_stats}, images, train=True,
          rngs={'dropout': rng}, mutable=['batch_stats'])
      loss, metrics = losses.segmentation_loss(outputs, labels, axis_name=axis, **loss_kwargs)
      return loss, (metrics, mutated.get('batch_stats', {}))
    grads, (metrics, new_stats) = jax.grad(loss_fn, has_aux=True)(params)
    return grads, metrics, new_stats

  def accumulated_grads(state, images, labels, rng):
    images = images.reshape(accum, -1, *images.shape[1:])
    labels = labels.reshape(accum, -1, *labels.shape[1:])
    if loss_kwargs['normalize']:  # Weight micro-batch i by its share of the batch's pixels.
      weights = jax.vmap(lambda y: lax.psum(losses.pixel_weight_sum(
          y, config.data.num_classes, loss_kwargs['ignore_label'],
          loss_kwargs['class_weights']), axis))(labels)
      scales = weights / jnp.maximum(weights.sum(), 1e-12)
    else:  # Unnormalised (FCN): the batch's loss is the sum of the micro-batches'.
      scales = jnp.ones((accum,), jnp.float32)

    def scaled(tree, scale):
      return jax.tree.map(lambda x: x * scale, tree)

    grads, metrics, batch_stats = grads_of(state.params, state.batch_stats, images[0], labels[0],
                                           jax.random.fold_in(rng, 0))
    carry = (scaled(grads, scales[0]), scaled(metrics, scales[0]), batch_stats)

    def micro_step(carry, xs):
      grads_sum, metrics_sum, batch_stats = carry
      images_i, labels_i, scale, i = xs
      grads, metrics, batch_stats = grads_of(state.params, batch_stats, images_i, labels_i,
                                             jax.random.fold_in(rng, i))
      add = lambda total, x: jax.tree.map(lambda a, b: a + b * scale, total, x)
      return (add(grads_sum, grads), add(metrics_sum, metrics), batch_stats), None

    (grads, metrics, batch_stats), _ = lax.scan(
        micro_step, carry, (images[1:], labels[1:], scales[1:], jnp.arange(1, accum)))
    return grads, metrics, batch_stats

  def per_device_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(axis))
    images = batch['image']
    if images.dtype == jnp.uint8:  # Raw pixels from the input pipeline: normalise here.
      from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TF)
      images = pipeline.normalize(images, normalization)
    if accum == 1:
      grads, metrics, batch_stats = grads_of(state.params, state.batch_stats, images,
                                             batch['label'], rng)
    else:
      grads, metrics, batch_stats = accumulated_grads(state, images, batch['label'], rng)
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
                    workdir: epath.Path) -> Callable[[TrainState, int], dict]:
  """state, step -> eval results on config.data.eval_split."""
  from jaxseg import inference  # pylint: disable=g-import-not-at-top

  def run(state: TrainState, step: int) -> dict:
    results = inference.evaluate(config, model, state.variables, mesh, config.data.eval_split,
                                 workdir=workdir, step=step)
    if 'results_file_error' in results:  # Scores are logged and checkpointed all the same.
      logging.warning('%s', results['results_file_error'])
    return results
  return run


# ---------------------------------------------------------------- logging
class MetricWriter:
  """metrics.jsonl plus TensorBoard scalars in tb/; only process 0 writes.

  One line per (split, step): a line for a pair already logged (a finished run evaluated again)
  replaces it. Lines a killed run logged after its last checkpoint are dropped. Locally new lines
  are appended; object storage cannot append, so there the file is rewritten whole at each write
  (a few hundred lines per run). tb/ is created at the first write, so a run that fails before
  logging anything leaves none.
  """

  def __init__(self, workdir: epath.Path, resume_step: int, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = workdir / METRICS_FILE
    self._tb_dir = workdir / TENSORBOARD_DIR if tensorboard else None
    self._tb = None
    self._remote = storage.is_remote(self.path)
    self.records: list[dict[str, Any]] = []  # Everything metrics.jsonl holds, in order.
    if not self.enabled or not self.path.exists():
      return
    lines = [line for line in self.path.read_text().splitlines() if line.strip()]
    by_key: dict[tuple, dict] = {}
    for line in lines:  # Keeps the last line of each (split, step), at its first position.
      record = json.loads(line)
      if record.get('step', 0) <= resume_step:
        by_key[record.get('split'), record.get('step')] = record
    self.records = list(by_key.values())
    if len(self.records) != len(lines):
      self._rewrite()

  def _rewrite(self) -> None:
    text = ''.join(json.dumps(r) + '\n' for r in self.records)
    if self._remote:  # An object is replaced whole anyway.
      self.path.write_text(text)
    else:
      storage.write_text_atomic(self.path, text)

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
    same = [i for i, r in enumerate(self.records) if (r['split'], r['step']) == (split, step)]
    if same:  # Logged before (an evaluation repeated): replace, never duplicate.
      self.records[same[0]] = record
      self._rewrite()
      return  # TensorBoard holds this step's scalars already.
    self.records.append(record)
    if self._remote:
      self._rewrite()
    else:
      with self.path.open('a') as f:
        f.write(json.dumps(record) + '\n')
    self._write_tensorboard(step, split, record)

  def _write_tensorboard(self, step: int, split: str, record: dict[str, Any]) -> None:
    if self._tb_dir is None:
      return
    if self._tb is None:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top  (a dependency, slow to import)
      try:
        tf.config.set_visible_devices([], 'GPU')  # TF writes files only; GPUs belong to JAX.
      except RuntimeError:
        pass  # TF's devices were initialised already (by the input pipeline, which hides them).
      self._tf = tf
      self._tb = tf.summary.create_file_writer(str(self._tb_dir))
      self._scalar_metadata = tf.compat.v1.SummaryMetadata()
      self._scalar_metadata.plugin_data.plugin_name = 'scalars'
    # tf.summary.write with scalar metadata: works without the tensorboard package.
    with self._tb.as_default():
      for key, value in record.items():
        if key not in ('step', 'split') and isinstance(value, float):
          self._tf.summary.write(f'{split}/{key}', self._tf.constant(value, self._tf.float32),
                                 step=int(step), metadata=self._scalar_metadata)
    self._tb.flush()

  def train_loss_at(self, step: int) -> float | None:
    """The train loss logged at `step` or, failing that, the latest logged before it."""
    losses = [r for r in self.records if r['split'] == 'train' and r['step'] <= step
              and r.get('loss') is not None]
    return max(losses, key=lambda r: r['step'])['loss'] if losses else None

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


_EVAL_LOG_KEYS = ('pixel_accuracy', 'mean_accuracy', 'mean_iou', 'fw_iou', 'per_class_iou')


# ---------------------------------------------------------------- metrics kept on the devices
def _accumulate(totals: dict, metrics: dict) -> dict:
  """Adds one step's metrics to the interval's running totals, on the devices (no host sync).

  Records the first step (as its 1-based position in the interval) whose loss or gradient norm
  is not finite, with those values, so the host can name it when it next looks (before any save
  or eval, and at every log).
  """
  finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
  first_bad = (totals['bad_step'] == 0) & ~finite
  count = totals['count'] + 1
  out = {k: totals['sums'][k] + metrics[k] for k in totals['sums']}
  return {
      'sums': out, 'count': count,
      'bad_step': jnp.where(first_bad, count, totals['bad_step']),
      'bad_loss': jnp.where(first_bad, metrics['loss'], totals['bad_loss']),
      'bad_grad_norm': jnp.where(first_bad, metrics['grad_norm'], totals['bad_grad_norm']),
      'last': {k: metrics[k] for k in ('grad_norm', 'learning_rate')}}


class _DeviceMetrics:
  """Sums of the train metrics over a logging interval, accumulated on the devices.

  The host fetches them once per `log_every` (and before each save or eval): a device-to-host
  copy every step would stall the dispatch of the next one.
  """

  def __init__(self, mesh: Mesh):
    self._sharding = parallel.replicated(mesh)
    self._add = jax.jit(_accumulate, donate_argnums=(0,), out_shardings=self._sharding)
    self._totals = None
    self._first_step = 0
    self._keys: tuple[str, ...] = ()

  def add(self, metrics: dict, step: int) -> None:
    """Adds the metrics of `step` (steps are added in order)."""
    if self._totals is None:
      self._first_step = step
      self._keys = tuple(k for k in ('loss', 'main_loss', 'aux_loss') if k in metrics)
      zero = np.float32(0)
      self._totals = parallel.replicate(
          {'sums': {k: zero for k in self._keys}, 'count': np.int32(0),
           'bad_step': np.int32(0), 'bad_loss': zero, 'bad_grad_norm': zero,
           'last': {'grad_norm': zero, 'learning_rate': zero}}, self._sharding.mesh)
    self._totals = self._add(self._totals, {k: metrics[k] for k in
                                            self._keys + ('grad_norm', 'learning_rate')})

  def fetch(self) -> dict | None:
    """Host values of the interval so far and a fresh interval; None when nothing was added."""
    if self._totals is None:
      return None
    values = parallel.to_host(self._totals)
    self._totals = None
    count = int(values['count'])
    out = {k: float(v) / count for k, v in values['sums'].items()}
    bad = int(values['bad_step'])
    out.update(count=count, bad_step=self._first_step + bad - 1 if bad else 0,
               bad_loss=float(values['bad_loss']), bad_grad_norm=float(values['bad_grad_norm']),
               grad_norm=float(values['last']['grad_norm']),
               learning_rate=float(values['last']['learning_rate']))
    return out


# ---------------------------------------------------------------- train_and_evaluate
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Trains config's model data-parallel over every device, evaluating and checkpointing.

  Resumes automatically from the latest checkpoint in `workdir`. Refuses a workdir made with a
  different model/data config (see jaxseg.checkpoint.IDENTITY_FIELDS) unless
  `allow_config_change`. The workdir is locked first (jaxseg.workdir_lock), then every setting is
  checked (jaxseg.preflight) before anything else is written and the first step runs.

  Returns:
    {'step', 'loss' (mean train loss of the last logging interval), and the final eval's
    'pixel_accuracy', 'mean_accuracy', 'mean_iou', 'fw_iou', 'per_class_iou' when evaluated}.

  Raises:
    NonFiniteLossError: the loss or gradients became NaN/Inf (the message names the step, the
      kept checkpoints and the best one; no state from that step on is saved).
    jaxseg.workdir_lock.WorkdirLockedError: another `jaxseg train` holds the workdir.
    Preempted: SIGTERM; the state of the step it finished is saved (a SystemExit, code 143).
  """
  launch.initialize_from_environment()
  workdir = storage.resolve(workdir)
  logging.info('%s', accelerators.startup_report(config.model.dtype))
  new_workdir = not storage.is_remote(workdir) and not workdir.exists()
  lock = _lock_workdir(workdir)  # First: a second trainer is refused at once.
  try:
    with _Preemption() as preemption:  # From here SIGTERM ends the run cleanly.
      # Every check before anything else is written: a bad setting leaves nothing in the workdir.
      preflight.check_config(config, jax.device_count())
      model = build_model(config)
      preflight.check_model(config, model)
      preflight.check_data(config, jax.process_count())
      if not _has_checkpoints(workdir):  # A resumed run restores its state, not init_from.
        from jaxseg import weights  # pylint: disable=g-import-not-at-top
        weights.check_init_from(config)
      checkpointer = checkpoint_lib.Checkpointer(workdir, config.train.keep_checkpoints)
      try:
        return _train(config, model, workdir, checkpointer, allow_config_change, preemption,
                      lock)
      finally:
        checkpointer.wait()  # A save in flight (the last good state) completes even on errors.
        checkpointer.close()
  finally:
    if lock is not None:
      lock.release()
    if new_workdir and jax.process_index() == 0:
      _remove_if_empty(workdir / checkpoint_lib.CHECKPOINT_DIR)
      _remove_if_empty(workdir)  # A run that failed before its first step leaves nothing.


def _has_checkpoints(workdir: epath.Path) -> bool:
  folder = workdir / checkpoint_lib.CHECKPOINT_DIR
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def _remove_if_empty(folder: epath.Path) -> None:
  try:
    folder.rmdir()  # Only ever removes an empty folder (else raises).
  except (OSError, ValueError):
    pass


def _command_line() -> str:
  """The command that started this process, to rerun it (as a shell would read it)."""
  argv = list(sys.argv)
  if argv and os.path.basename(argv[0]) == 'jaxseg':
    return shlex.join(['jaxseg', *argv[1:]])
  if argv and argv[0].endswith(os.path.join('jaxseg', 'cli.py')):
    return 'python -m jaxseg.cli ' + shlex.join(argv[1:])
  return ''


def _lock_workdir(workdir: epath.Path) -> workdir_lock.WorkdirLock | None:
  """Process 0 locks the workdir (the others trust it); every process fails if it cannot."""
  lock, error = None, None
  if jax.process_index() == 0:
    lock = workdir_lock.WorkdirLock(workdir, command=_command_line())
    try:
      checkpoint_lib.check_writable(workdir)  # Also its checkpoints/, eval/, tb/ folders.
      lock.acquire()
    except (workdir_lock.WorkdirLockedError, PermissionError) as e:
      error = e
    except OSError as e:  # Read-only folder, missing bucket, no credentials, ...
      error = PermissionError(
          f'cannot write into workdir {workdir} ({type(e).__name__}: {e}); training needs a '
          'writable workdir (`jaxseg eval` reads a read-only one).')
  if jax.process_count() > 1:  # Agree before anyone writes; a lone failure would hang the rest.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    locked = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not locked and error is None:
      error = workdir_lock.WorkdirLockedError(
          f'process 0 could not lock workdir {workdir}; its log says why.')
  if error is not None:
    raise error
  return lock


class _Preemption:
  """SIGTERM: finish the current step, then stop at a step every process agrees on.

  One process: a Python SIGTERM handler sets a flag the loop reads after each step (no cost).
  Several processes (jax.distributed is initialised): JAX's preemption service (on unless
  jax_enable_preemption_service=False) catches SIGTERM on any of them and the coordination service
  agrees in the background on the step to stop at (one past the largest step any process had
  reached); `multihost_utils.reached_preemption_sync_point(step)`, called at every step, is a local
  check with no collective, so it costs nothing until a notice arrives. SIGTERM before the first
  step of the run (restoring, building the input) stops at once: nothing is trained to save.
  """

  def __init__(self):
    self.distributed = jax.distributed.is_initialized()
    self.requested = False
    self.training = False  # True once the loop runs: from then on SIGTERM waits for a step.
    self._previous = None
    self._service = True

  def __enter__(self) -> '_Preemption':
    if not self.distributed and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.requested = True
    if not self.training:
      raise Preempted('jaxseg train: stopped by SIGTERM before its first step; nothing new was '
                      'trained, nothing to save. Run the same command again to continue.')

  def reached(self, step: int) -> bool:
    """Whether to stop after `step` (the same answer on every process)."""
    if not self.distributed:
      return self.requested
    if not self._service:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError as e:  # jax_enable_preemption_service=False.
      logging.warning('SIGTERM will not save a checkpoint: %s', e)
      self._service = False
      return False


def _divergence_message(values: dict, checkpointer: checkpoint_lib.Checkpointer,
                        writer: MetricWriter) -> str:
  """What a non-finite loss leaves: the kept checkpoints (all before it) and the best one."""
  bad = values['bad_step']
  checkpointer.wait()  # A save in flight is one of the kept.
  steps = checkpointer.all_steps()
  message = (f'Non-finite training loss {values["bad_loss"]} (gradient norm '
             f'{values["bad_grad_norm"]}) at step {bad}. Training stopped; nothing from this '
             'step on was saved ')
  if not steps:
    return message + '(last good checkpoint: none saved yet). '
  described = []
  for step in steps:
    facts = []
    loss = writer.train_loss_at(step)
    if loss is not None:
      facts.append(f'train loss {loss:.4g}')
    metrics = checkpointer.metrics(step) or {}
    if checkpoint_lib.BEST_METRIC in metrics:
      facts.append(f'eval mean IoU {metrics[checkpoint_lib.BEST_METRIC]:.4f}')
    described.append(f'step {step}' + (f' ({", ".join(facts)})' if facts else ''))
  message += (f'(last good checkpoint: step {steps[-1]} in {checkpointer.directory}, the last '
              f'saved with a finite loss). Kept checkpoints, all from before step {bad}: '
              f'{"; ".join(described)}. ')
  best = checkpointer.best_step()
  if best is not None:
    message += (f'Best by eval mean IoU: step {best} '
                f'(`jaxseg eval --workdir {checkpointer.directory.parent} --checkpoint {best}`). ')
  else:
    message += 'None was evaluated (config.train.eval_every), so none is known to be best. '
  logged = [r for r in writer.records if r['split'] == 'train' and r.get('loss') is not None]
  if logged:
    lowest = min(logged, key=lambda r: r['loss'])
    later = [s for s in steps if s > lowest['step']]
    if later:
      message += (f'The logged train loss was lowest ({lowest["loss"]:.4g}) at step '
                  f'{lowest["step"]}: the checkpoints after it ({", ".join(map(str, later))}) may '
                  'already be diverging; to resume from an earlier one, move the later step '
                  'folders out of the checkpoints folder. ')
  return message


def _train(config: ml_collections.ConfigDict, model: nn.Module, workdir: epath.Path,
           checkpointer: checkpoint_lib.Checkpointer, allow_config_change: bool,
           preemption: _Preemption, lock: workdir_lock.WorkdirLock | None) -> dict:
  """train_and_evaluate's body, given the workdir's checkpointer, preemption flag and lock."""
  is_main = jax.process_index() == 0
  train_cfg = config.train

  # ------------------------------------------------------------ checkpoint: the workdir's past
  latest = _agreed(checkpointer.latest_step())
  if latest is not None:  # The config saved with the state is what the state belongs to.
    changed = checkpoint_lib.check_compatible(
        checkpointer.config(latest), config, source=f'workdir {workdir}',
        allow_config_change=allow_config_change)
    if changed:
      logging.warning('Config differs from the checkpoint\'s: %s', changed)

  # ------------------------------------------------------------ mesh
  mesh = parallel.create_mesh()
  logging.info('Mesh: %d devices over %d processes', mesh.size, jax.process_count())

  # ------------------------------------------------------------ model (built and checked above)
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

  # ------------------------------------------------------------ update
  train_step = make_train_step(config, model, tx, schedule, mesh)

  # ------------------------------------------------------------ evals
  evaluator = _make_evaluator(config, model, mesh, workdir) if preflight.evaluates(config) else None
  writer = MetricWriter(workdir, start_step)
  final: dict[str, Any] = {'step': start_step}

  def every(n: int, step: int) -> bool:
    return step == num_steps or (n > 0 and step % n == 0)

  def run_eval(step: int) -> dict:
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
  device_metrics = _DeviceMetrics(mesh)
  interval: dict[str, Any] = {}  # Host metrics of the steps since the last log.
  interval_start, interval_steps, paused = time.perf_counter(), 0, 0.0

  def check() -> None:
    """Fetches the metrics so far; raises on a non-finite loss or gradient, naming the step."""
    values = device_metrics.fetch()
    if values is None:
      return
    if values['bad_step']:
      raise NonFiniteLossError(
          _divergence_message(values, checkpointer, writer)
          + 'Try a lower config.optim.learning_rate, warmup (config.optim.warmup_steps), gradient '
          'clipping (config.optim.grad_clip_norm) or float32 (config.model.dtype), and check the '
          'data.')
    count = interval.get('count', 0) + values['count']
    for key in ('loss', 'main_loss', 'aux_loss'):  # Means over the whole interval.
      if key in values:
        interval[key] = (interval.get(key, 0.0) * interval.get('count', 0)
                         + values[key] * values['count']) / count
    interval.update(count=count, grad_norm=values['grad_norm'],
                    learning_rate=values['learning_rate'])

  progress = tqdm.tqdm(total=num_steps, initial=start_step, disable=not is_main, desc='train',
                       unit='step', dynamic_ncols=True)
  preemption.training = True
  try:
    for step in range(start_step + 1, num_steps + 1):
      batch = next(batches, None)
      if batch is None:
        raise RuntimeError(f'pipeline.train_iterator ended before step {step}; it must be endless.')
      state, metrics = train_step(state, batch)
      device_metrics.add(metrics, step)
      interval_steps += 1
      progress.update(1)
      if lock is not None and lock.lost:
        raise workdir_lock.WorkdirLockedError(
            f'the lock of workdir {workdir} was taken over by another process (it thought this '
            f'one dead); stopped at step {step} without saving, so that only one writes there.')
      if step == start_step + 1:  # The config built and trained: it now describes the workdir.
        checkpoint_lib.write_workdir_config(workdir, config)

      if every(train_cfg.log_every, step):
        check()
        elapsed = time.perf_counter() - interval_start - paused  # Without evals and saves.
        record = {'loss': interval['loss'], 'lr': interval['learning_rate'],
                  'images_per_sec': interval_steps * train_cfg.batch_size / max(elapsed, 1e-9),
                  'grad_norm': interval['grad_norm']}
        if 'aux_loss' in interval:
          record['main_loss'] = interval['main_loss']
          record['aux_loss'] = interval['aux_loss']
        writer.write(step, 'train', record)
        progress.set_postfix(loss=f'{record["loss"]:.4f}', lr=f'{record["lr"]:.3g}',
                             img_s=f'{record["images_per_sec"]:.1f}')
        final['loss'] = record['loss']
        interval.clear()
        interval_start, interval_steps, paused = time.perf_counter(), 0, 0.0

      stop = step < num_steps and preemption.reached(step)  # The last step ends the run anyway.
      eval_now = evaluator is not None and every(train_cfg.eval_every, step) and not stop
      if eval_now or stop or every(train_cfg.checkpoint_every, step):
        check()  # Never evaluate or save a state made from a non-finite step.
        pause_start = time.perf_counter()
        scores = None
        if eval_now:
          try:
            scores = run_eval(step)
          except BaseException:  # The trained state outlives a failing evaluation.
            checkpointer.save(step, state, config)
            logging.error('The evaluation at step %d failed; the state of step %d is saved in %s '
                          '(a rerun resumes from it).', step, step, checkpointer.directory)
            raise
        checkpointer.save(step, state, config, metrics=scores)
        paused += time.perf_counter() - pause_start
      if stop:
        checkpointer.wait()
        command = _command_line()
        again = (f'the same command: {command}' if command else
                 'the same command (train_and_evaluate with this config and workdir)')
        message = (f'jaxseg train: stopped by SIGTERM (preemption) after step {step} of '
                   f'{num_steps}; its state is saved in {checkpointer.directory / str(step)}. '
                   f'To resume, run {again}')
        if is_main:
          progress.close()
          print(message, file=sys.stderr, flush=True)
        raise Preempted(message)
    if start_step >= num_steps and evaluator is not None:
      checkpoint_lib.write_workdir_config(workdir, config)
      run_eval(start_step)  # Already trained: report the final scores again.
    final['step'] = max(start_step, num_steps)
  finally:
    progress.close()
    writer.close()
  return final


def _agreed(step: int | None) -> int | None:
  """Process 0's latest checkpoint step, on every process.

  Processes list the checkpoint folder independently; on shared or object storage one may see a
  save another does not yet, and restoring different steps would hang the first collective.
  """
  if jax.process_count() == 1:
    return step
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  agreed = int(multihost_utils.broadcast_one_to_all(np.int32(-1 if step is None else step)))
  return None if agreed < 0 else agreed
