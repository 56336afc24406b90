"""Checkpoints of the whole train state plus the config, with orbax.

Layout: <workdir>/checkpoints/<step>/{state, config}; each save is atomic (orbax writes to a
temporary folder and renames). Retention keeps the last `keep` checkpoints plus the best one by
eval mean IoU (orbax preservation policies LatestN | BestN), so the best survives however long
training continues. Steps count completed updates: checkpoint N holds the state after N updates.

Each checkpoint holds the config it was trained with (<workdir>/config.json mirrors the latest run's
for people and tools); resuming with a config that changes the model or the data the state was
trained on is refused unless explicitly allowed.

A damaged checkpoint (a truncated array file, a missing metadata file, a truncated config: a disk
that filled up, a copy cut short) is skipped, never repaired or deleted: `latest_step()` (what
training resumes from) and `resolve_step` / `load_for_inference` with 'latest' or 'best' (what
eval, predict and restore read) warn, naming the damaged file or folder, and use the newest (best)
checkpoint that reads whole. An explicitly requested step that is damaged is an error naming it.
When every checkpoint is damaged the error lists each step and what is wrong with it. Training
that reaches a damaged step again saves its new checkpoint there and keeps the damaged one beside
it as <step>.damaged (orbax never lists that name). Retention (last N + best) counts intact
checkpoints only and never deletes one found damaged.

Reading needs no write access: eval, predict and restore open the folder with orbax's read-only
manager. Training checks that it can write into its workdir (`check_writable`) before any work.
"""
from collections.abc import Callable, Sequence
import json
import logging
import os
import socket
import sys
import types
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from orbax.checkpoint import checkpoint_managers
from orbax.checkpoint._src.metadata import array_metadata_store  # Pinned orbax 0.12.8.

from jaxseg import parallel
from jaxseg import storage

CHECKPOINT_DIR = 'checkpoints'
CONFIG_FILE = 'config.json'
BEST_METRIC = 'mean_iou'
DAMAGED_SUFFIX = '.damaged'
# The files orbax writes in a step folder that jaxseg names when they are missing or corrupt:
# PyTreeCheckpointHandler's tree metadata and JsonCheckpointHandler's default file name.
STATE_METADATA_FILE = '_METADATA'
CONFIG_ITEM_FILE = 'metadata'
# Fields that make a workdir's checkpoints meaningless for another config.
IDENTITY_FIELDS = ('model.name', 'model.width', 'data.num_classes', 'data.dataset',
                   'data.crop_size')


def config_to_dict(config: ml_collections.ConfigDict | dict) -> dict:
  """A JSON-ready dict (tuples become lists) of a ConfigDict."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config))


def _lookup(tree: dict, dotted: str) -> Any:
  for key in dotted.split('.'):
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_differences(stored: dict, config: ml_collections.ConfigDict | dict) -> dict[str, tuple]:
  """{field: (stored value, new value)} for every leaf that differs."""
  old, new = _flatten(config_to_dict(stored)), _flatten(config_to_dict(config))
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)}


def check_compatible(
    stored: dict,
    config: ml_collections.ConfigDict | dict,
    *,
    source: str = 'the workdir',
    allow_config_change: bool = False,
) -> dict[str, tuple]:
  """Refuses a config whose model/data identity differs from the stored one.

  Returns the differences (all of them) so the caller can log them. Raises ValueError naming
  each conflicting field unless `allow_config_change`.
  """
  differences = config_differences(stored, config)
  conflicts = {k: v for k, v in differences.items() if k in IDENTITY_FIELDS}
  if conflicts and not allow_config_change:
    listed = '; '.join(f'{k}: {old!r} there, {new!r} now' for k, (old, new) in conflicts.items())
    raise ValueError(
        f'{source} was made with a different model/data config ({listed}). Use a fresh '
        '--workdir, or allow the change explicitly (allow_config_change=True / '
        '--allow_config_change) to resume from it anyway.')
  return differences


def read_workdir_config(workdir: str | os.PathLike) -> dict | None:
  """The config.json a previous run wrote into `workdir`, or None."""
  path = storage.resolve(workdir) / CONFIG_FILE
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e}); delete it or use another workdir.') from e


def write_workdir_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
  """Writes the resolved config as <workdir>/config.json (process 0 only)."""
  if jax.process_index() != 0:
    return
  storage.write_text_atomic(storage.resolve(workdir) / CONFIG_FILE,
                            json.dumps(config_to_dict(config), indent=2, sort_keys=True) + '\n')


# Orbax writes a replicated array from all replicas in parallel, slicing it with one small jitted
# program per shape; below this many bytes per slice it is not worth the compiles.
_MIN_REPLICA_PARALLEL_BYTES = 4 << 20


def _type_handlers() -> Any:
  """Orbax's default type handlers, with replica-parallel saving only for large arrays."""
  th = ocp.type_handlers
  return th.create_type_handler_registry(
      (int, th.ScalarHandler()), (float, th.ScalarHandler()), (bytes, th.ScalarHandler()),
      (np.number, th.ScalarHandler()), (np.ndarray, th.NumpyHandler()),
      (jax.Array, th.ArrayHandler(
          array_metadata_store=array_metadata_store.Store(),
          min_slice_bytes_for_replica_parallel=_MIN_REPLICA_PARALLEL_BYTES)),
      (str, th.StringHandler()))


def _best_metric(metrics: dict) -> float:
  return float(metrics.get(BEST_METRIC, float('-inf')))


T = TypeVar('T')


class _SparingDamaged(checkpoint_managers.PreservationPolicy):
  """Retention that never deletes a checkpoint found damaged: `inner` (keep the last N + the best)
  decides over the intact checkpoints only, so a damaged one neither holds a 'latest' place nor
  ranks as the best, and the damaged ones are all kept for inspection."""

  def __init__(self, inner: Any, damaged: set[int]):
    self._inner = inner
    self._damaged = damaged  # Shared with the Checkpointer, which adds what it finds.

  def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
    intact = [i for i, info in enumerate(checkpoints) if info.step not in self._damaged]
    flags = [True] * len(checkpoints)
    decided = self._inner.should_preserve([checkpoints[i] for i in intact], context=context)
    for i, keep in zip(intact, decided):
      flags[i] = keep
    return flags


class CheckpointDamagedError(ValueError):
  """Checkpoints whose files cannot be read; `damages` is {step: what is wrong, naming the file}."""

  def __init__(self, message: str, damages: dict[int, str]):
    super().__init__(message)
    self.damages = damages


def _root_cause(error: BaseException) -> str:
  """The innermost error's message, first line: tensorstore's names the array and the byte range;
  the outer ones repeat a whole TensorStore spec."""
  seen = set()
  while id(error) not in seen and (error.__cause__ or error.__context__) is not None:
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  text = str(error).strip().splitlines()
  line = text[0] if text else type(error).__name__
  return line if len(line) <= 400 else line[:400] + '...'


def _is_read_aftermath(unraisable: Any) -> bool:
  """Orbax's leftovers of a failed array read: the other arrays' reads, finalized unawaited, and
  tensorstore callbacks into the closed event loop (each printed as a traceback)."""
  target = unraisable.object
  if isinstance(target, types.CoroutineType):
    return target.__qualname__.startswith('_read_array_index')
  return (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == 'Event loop is closed')


def _silence_read_aftermath() -> None:
  """After a damaged read, drops orbax's leftover tracebacks (the error already named the file);
  every other unraisable exception goes to the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, 'jaxseg_read_aftermath', False):
    return

  def hook(unraisable: Any) -> None:
    if _is_read_aftermath(unraisable):
      logging.debug('After a damaged checkpoint read: %s', unraisable.exc_value)
      return
    previous(unraisable)
  hook.jaxseg_read_aftermath = True
  sys.unraisablehook = hook


def check_writable(workdir: str | os.PathLike) -> None:
  """Raises PermissionError, naming the folder, when training could not write into `workdir`.

  Writes and removes a probe file in the workdir and its checkpoints/, eval/ and tb/ folders that
  exist (in the nearest existing parent folder for a new workdir, where it will be created):
  permission bits do not tell (root, ACLs, read-only mounts, object storage).
  """
  path = storage.resolve(workdir)
  if path.exists() and not path.is_dir():
    raise NotADirectoryError(f'--workdir {path} is a file, not a folder.')
  folder = path
  while not folder.exists() and folder.parent != folder:
    folder = folder.parent
  folders = [folder] + [path / name for name in (CHECKPOINT_DIR, 'eval', 'tb')
                        if folder == path and (path / name).is_dir()]
  probe_name = f'.jaxseg-write-check-{socket.gethostname()}-{os.getpid()}'
  for folder in folders:
    probe = folder / probe_name
    try:
      probe.write_text('')
      probe.unlink()
    except OSError as e:
      reason = e.strerror or str(e)
      raise PermissionError(
          f'Cannot write into {folder} ({reason}): training writes checkpoints, metrics and '
          f'config.json into its workdir {path}. Make it writable or pass another --workdir. '
          '(Evaluating its checkpoints needs read access only: jaxseg eval --workdir '
          f'{path}.)') from e


class Checkpointer:
  """Saves and restores train states in <workdir>/checkpoints (an orbax CheckpointManager)."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 3, *, read_only: bool = False):
    if keep < 1:
      raise ValueError(f'config.train.keep_checkpoints={keep} must be >= 1.')
    self.directory = storage.resolve(workdir) / CHECKPOINT_DIR
    if read_only and not self.directory.is_dir():
      raise FileNotFoundError(f'No checkpoints in {self.directory}: train into this workdir first.')
    # Every save carries a metrics dict (empty without an eval), which orbax stores only when a
    # best_fn is set; unevaluated checkpoints rank lowest for BestN.
    self._damaged_steps: set[int] = set()  # Found damaged by this instance: never deleted.
    policy = _SparingDamaged(checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1),
    ]), self._damaged_steps)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else policy, best_fn=_best_metric,
        read_only=read_only, create=not read_only)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.PyTreeCheckpointHandler(
                           type_handler_registry=_type_handlers()),
                       'config': ocp.JsonCheckpointHandler()})
    self._intact: set[int] = set()  # Steps read whole or saved by this instance.

  # -- queries
  def all_steps(self) -> list[int]:
    """Every saved step, damaged ones included."""
    return list(self._manager.all_steps())

  def step_path(self, step: int) -> Any:
    """The folder of checkpoint `step`."""
    return self.directory / str(int(step))

  def latest_step(self) -> int | None:
    """The newest step whose checkpoint reads whole (what training resumes from); None if none.

    Newer damaged checkpoints are skipped with a warning naming the damage and left as they are.
    Raises CheckpointDamagedError, listing each step and its damage, when every one is damaged.
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      return None
    return self.first_readable(steps, self.check)[0]

  def metrics(self, step: int) -> dict | None:
    try:
      return self._manager.metrics(step)
    except Exception:  # pylint: disable=broad-except  A damaged metrics file: unscored.
      return None

  def best_step(self) -> int | None:
    """The step with the highest eval mean IoU; None when no checkpoint has eval metrics."""
    scored = [(m[BEST_METRIC], s) for s in self.all_steps()
              if (m := self.metrics(s)) and BEST_METRIC in m]
    return max(scored)[1] if scored else None

  def candidates(self, which: str | int = 'best') -> list[int]:
    """Steps to try for `which`, in order of preference.

    'best': the evaluated steps from the highest mean IoU down, then the others newest first;
    'latest': newest first; a step number: just it (ValueError when it was not saved).
    """
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f'No checkpoints in {self.directory}: train into this workdir first.')
    newest_first = sorted(steps, reverse=True)
    if which == 'best':
      scored = sorted(((m[BEST_METRIC], s) for s in steps
                       if (m := self.metrics(s)) and BEST_METRIC in m), reverse=True)
      best = [s for _, s in scored]
      return best + [s for s in newest_first if s not in best]
    if which == 'latest':
      return newest_first
    step = int(which)
    if step not in steps:
      raise ValueError(f'No checkpoint for step {step} in {self.directory}; saved steps: {steps}.')
    return [step]

  def resolve_step(self, which: str | int = 'best') -> int:
    """'best' (falling back to 'latest' when nothing was evaluated), 'latest' or a step.

    'best' and 'latest' skip damaged checkpoints (with a warning); a damaged step asked for by
    number raises CheckpointDamagedError naming it.
    """
    return self.first_readable(self.candidates(which), self.check)[0]

  def first_readable(self, steps: Sequence[int],
                     read: Callable[[int], T]) -> tuple[int, T]:
    """(step, read(step)) of the first of `steps` whose read raises no CheckpointDamagedError.

    Each skipped step is logged as a warning naming its damage; nothing on disk changes. Raises
    CheckpointDamagedError listing every step and its damage when none reads.
    """
    damages = {}
    for step in steps:
      try:
        value = read(step)
      except CheckpointDamagedError as e:
        damages[step] = e.damages.get(step, str(e))
        continue
      for bad, damage in damages.items():
        logging.warning('Checkpoint step %d is damaged, skipped: %s. Using step %d instead; the '
                        'damaged folder %s is left as it is.', bad, damage, step,
                        self.step_path(bad))
      return step, value
    if len(damages) == 1:
      (step, damage), = damages.items()
      raise CheckpointDamagedError(f'Checkpoint step {step} is damaged: {damage}.', damages)
    listed = ''.join(f'\n  step {s}: {d}' for s, d in damages.items())
    raise CheckpointDamagedError(
        f'No readable checkpoint in {self.directory}: all {len(damages)} are damaged, none can '
        f'be resumed or evaluated. To train from scratch, move them out of {self.directory} or '
        f'use a fresh --workdir.{listed}', damages)

  # -- damage
  def _damaged(self, step: int, damage: str) -> CheckpointDamagedError:
    self._intact.discard(int(step))
    self._damaged_steps.add(int(step))
    return CheckpointDamagedError(f'Checkpoint step {step} is damaged: {damage}.',
                                  {int(step): damage})

  def _file_damage(self, path: Any, error: BaseException, what: str) -> str:
    if not path.exists():
      return f'{path} is missing'
    return f'{path} is not valid {what} ({_root_cause(error)})'

  def _state_tree(self, step: int) -> dict:
    """The state's tree metadata (shapes, dtypes) of checkpoint `step`."""
    path = self.step_path(step) / 'state' / STATE_METADATA_FILE
    try:
      metadata = self._manager.item_metadata(int(step))['state']
    except Exception as e:  # pylint: disable=broad-except
      raise self._damaged(step, self._file_damage(path, e, 'metadata')) from e
    if metadata is None or not path.exists():  # Orbax returns None for a missing file.
      raise self._damaged(step, f'{path} is missing')
    return metadata.tree

  def _read_damage(self, step: int, error: BaseException) -> str:
    _silence_read_aftermath()
    return f'{self.step_path(step) / "state"} cannot be read ({_root_cause(error)})'

  def check(self, step: int) -> None:
    """Reads checkpoint `step` whole (config, metadata, every array, to host memory).

    Raises CheckpointDamagedError naming the damaged file or folder.
    """
    step = int(step)
    if step in self._intact:
      return
    self.config(step)
    tree = self._state_tree(step)
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    try:
      self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(restore_args=as_numpy)))
    except Exception as e:  # pylint: disable=broad-except  Tensorstore raises plain Exceptions.
      raise self._damaged(step, self._read_damage(step, e)) from e
    self._intact.add(step)

  def damage(self, step: int) -> str | None:
    """What is wrong with checkpoint `step` (naming the file), or None when it reads whole."""
    try:
      self.check(step)
    except CheckpointDamagedError as e:
      return e.damages[int(step)]
    return None

  # -- save / restore
  def save(self, step: int, state: Any, config: ml_collections.ConfigDict,
           metrics: dict | None = None) -> None:
    """Saves `state` (a pytree of global arrays) and the config as checkpoint `step`.

    `metrics` with 'mean_iou' makes the checkpoint a candidate for 'best'. A damaged checkpoint
    already at `step` (one that resuming skipped) is kept beside it as <step>.damaged.
    """
    metrics = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
    if int(step) in self.all_steps():
      self._keep_damaged_aside(int(step))
    self._manager.save(
        int(step), metrics=metrics, force=True,
        args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                config=ocp.args.JsonSave(config_to_dict(config))))
    self._intact.add(int(step))
    self._damaged_steps.discard(int(step))

  def _keep_damaged_aside(self, step: int) -> None:
    """Renames the damaged checkpoint `step` to <step>.damaged[.N] (process 0; all wait)."""
    damage = self.damage(step)
    if damage is None:
      return  # Orbax refuses to save over an intact checkpoint, naming the step.
    if jax.process_index() == 0:
      source, count = self.step_path(step), 1
      target = self.directory / f'{step}{DAMAGED_SUFFIX}'
      while target.exists():
        count += 1
        target = self.directory / f'{step}{DAMAGED_SUFFIX}.{count}'
      source.rename(target)
      logging.warning('Step %d is saved again where a damaged checkpoint was; the damaged one '
                      'is kept as %s (%s).', step, target, damage)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'jaxseg_keep_damaged_{step}')
    self._damaged_steps.discard(step)
    self._manager.reload()

  def restore(self, step: int, target: Any) -> Any:
    """Restores the state saved at `step` into the structure/shardings of `target`.

    `target` is a pytree of arrays or jax.ShapeDtypeStruct (with .sharding) like the state.
    Raises CheckpointDamagedError when the checkpoint's files cannot be read, ValueError when
    they read but do not fit `target`.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    try:
      restored = self._manager.restore(int(step), args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))))
    except Exception as e:  # pylint: disable=broad-except  Tensorstore raises plain Exceptions.
      self._intact.discard(int(step))
      self.check(step)  # Raises CheckpointDamagedError when the files are the problem.
      raise ValueError(
          f'The checkpoint {self.step_path(step)} does not fit the model/optimizer built '
          f'from the config: {_root_cause(e)}. Use a fresh workdir.') from e
    return restored.state

  def restore_variables(self, step: int, mesh: Mesh) -> dict:
    """{'params', 'batch_stats'} of checkpoint `step`, replicated over `mesh` (for eval/predict).

    Needs no model or optimizer: shapes come from the checkpoint's metadata, and any device count
    works. Raises CheckpointDamagedError naming the damaged file or folder.
    """
    metadata = self._state_tree(step)
    sharding = parallel.replicated(mesh)
    subtree = {k: metadata.get(k) or {} for k in ('params', 'batch_stats')}
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          subtree)
    try:
      restored = self._manager.restore(int(step), args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True)))
    except Exception as e:  # pylint: disable=broad-except  Tensorstore raises plain Exceptions.
      raise self._damaged(step, self._read_damage(step, e)) from e
    return {k: restored.state.get(k) or {} for k in ('params', 'batch_stats')}

  def config(self, step: int) -> dict:
    """The config dict saved with checkpoint `step` (CheckpointDamagedError when unreadable)."""
    path = self.step_path(step) / 'config' / CONFIG_ITEM_FILE
    try:
      config = self._manager.restore(int(step), args=ocp.args.Composite(
          config=ocp.args.JsonRestore())).config
    except Exception as e:  # pylint: disable=broad-except
      raise self._damaged(step, self._file_damage(path, e, 'JSON')) from e
    if not isinstance(config, dict):
      raise self._damaged(step, f'{path} holds no config')
    return config

  def wait(self) -> None:
    """Blocks until pending (asynchronous) saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _config_from_dict(values: dict) -> ml_collections.ConfigDict:
  """A locked ConfigDict (sequences as tuples, missing fields from experiments/default.py)."""
  from jaxseg import config_loading  # pylint: disable=g-import-not-at-top
  return config_loading.from_dict(values)


def load_for_inference(workdir: str | os.PathLike, mesh: Mesh,
                       which: str | int = 'best') -> tuple[dict, ml_collections.ConfigDict, int]:
  """(variables, config, step) of a trained workdir: what `jaxseg eval/predict` need.

  `which` is 'best' (highest eval mean IoU, else latest), 'latest' or a step number. 'best' and
  'latest' skip damaged checkpoints with a warning (the next best / newest that reads is used); a
  damaged step asked for by number raises CheckpointDamagedError naming it. Opens the folder
  read-only: no write access is needed.
  """
  checkpointer = Checkpointer(workdir, read_only=True)

  def read(step: int) -> tuple[dict, ml_collections.ConfigDict]:
    config = checkpointer.config(step)
    return checkpointer.restore_variables(step, mesh), _config_from_dict(config)

  try:
    step, (variables, config) = checkpointer.first_readable(checkpointer.candidates(which), read)
  finally:
    checkpointer.close()
  logging.info('Restored step %d from %s', step, checkpointer.directory)
  return variables, config, step
