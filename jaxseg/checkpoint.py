"""Checkpoints of the whole train state plus the config, with orbax.

Layout: <workdir>/checkpoints/<step>/{state, config}; each save is atomic (orbax writes to a
temporary folder and renames). Retention keeps the last `keep` checkpoints plus the best one by
eval mean IoU (orbax preservation policies LatestN | BestN), so the best survives however long
training continues. Steps count completed updates: checkpoint N holds the state after N updates.

Each checkpoint holds the config it was trained with (<workdir>/config.json mirrors the latest run's
for people and tools); resuming with a config that changes the model or the data the state was
trained on is refused unless explicitly allowed.
"""
import json
import logging
import os
from typing import Any

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
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else policy, best_fn=_best_metric,
        read_only=read_only, create=not read_only)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.PyTreeCheckpointHandler(
                           type_handler_registry=_type_handlers()),
                       'config': ocp.JsonCheckpointHandler()})

  # -- queries
  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def metrics(self, step: int) -> dict | None:
    return self._manager.metrics(step)

  def best_step(self) -> int | None:
    """The step with the highest eval mean IoU; None when no checkpoint has eval metrics."""
    scored = [(m[BEST_METRIC], s) for s in self.all_steps()
              if (m := self.metrics(s)) and BEST_METRIC in m]
    return max(scored)[1] if scored else None

  def resolve_step(self, which: str | int = 'best') -> int:
    """'best' (falling back to 'latest' when nothing was evaluated), 'latest' or a step."""
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f'No checkpoints in {self.directory}: train into this workdir first.')
    if which == 'best':
      best = self.best_step()
      return best if best is not None else self.latest_step()
    if which == 'latest':
      return self.latest_step()
    step = int(which)
    if step not in steps:
      raise ValueError(f'No checkpoint for step {step} in {self.directory}; saved steps: {steps}.')
    return step

  # -- save / restore
  def save(self, step: int, state: Any, config: ml_collections.ConfigDict,
           metrics: dict | None = None) -> None:
    """Saves `state` (a pytree of global arrays) and the config as checkpoint `step`.

    `metrics` with 'mean_iou' makes the checkpoint a candidate for 'best'.
    """
    metrics = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
    self._manager.save(
        int(step), metrics=metrics, force=True,
        args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                config=ocp.args.JsonSave(config_to_dict(config))))

  def restore(self, step: int, target: Any) -> Any:
    """Restores the state saved at `step` into the structure/shardings of `target`.

    `target` is a pytree of arrays or jax.ShapeDtypeStruct (with .sharding) like the state.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    try:
      restored = self._manager.restore(int(step), args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))))
    except (ValueError, KeyError) as e:
      raise ValueError(
          f'The checkpoint {self.directory / str(step)} does not fit the model/optimizer built '
          f'from the config: {e}. Use a fresh workdir.') from e
    return restored.state

  def restore_variables(self, step: int, mesh: Mesh) -> dict:
    """{'params', 'batch_stats'} of checkpoint `step`, replicated over `mesh` (for eval/predict).

    Needs no model or optimizer: shapes come from the checkpoint's metadata, and any device count
    works.
    """
    metadata = self._manager.item_metadata(int(step))['state'].tree
    sharding = parallel.replicated(mesh)
    subtree = {k: metadata.get(k) or {} for k in ('params', 'batch_stats')}
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          subtree)
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)))
    return {k: restored.state.get(k) or {} for k in ('params', 'batch_stats')}

  def config(self, step: int) -> dict:
    """The config dict saved with checkpoint `step`."""
    return self._manager.restore(int(step), args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config

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

  `which` is 'best' (highest eval mean IoU, else latest), 'latest' or a step number.
  """
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    step = checkpointer.resolve_step(which)
    config = _config_from_dict(checkpointer.config(step))
    variables = checkpointer.restore_variables(step, mesh)
  finally:
    checkpointer.close()
  logging.info('Restored step %d from %s', step, checkpointer.directory)
  return variables, config, step
