"""The checkpoint check: an orbax save and restore gives back the train state bit for bit.

A train state of the step model (every leaf random: parameters, BatchNorm statistics, momentum
traces, the dropout key) is saved with `jaxseg.checkpoint.Checkpointer` into a scratch workdir,
restored into `train.create_train_state(..., abstract=True)` (the target a resumed run restores
into) and compared leaf by leaf: tree structure, dtype, shape, sharding and every byte.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from jaxseg import checkpoint
from jaxseg import optim
from jaxseg import parallel
from jaxseg import train
from jaxseg.doctor import forms
from jaxseg.doctor import inputs
from jaxseg.doctor.runner import Context, Outcome

STEP = 7  # Any step number: the checkpoint's folder name.


def _leaf_problem(saved: jax.Array, restored: jax.Array) -> str | None:
  if saved.dtype != restored.dtype or saved.shape != restored.shape:
    return f'{restored.dtype}{list(restored.shape)} restored for {saved.dtype}{list(saved.shape)}'
  if not saved.sharding.is_equivalent_to(restored.sharding, saved.ndim):
    return f'sharding {restored.sharding} restored for {saved.sharding}'
  a, b = (np.ascontiguousarray(x).reshape(-1).view(np.uint8) for x in (saved, restored))
  differ = int(np.sum(a != b))
  return f'{differ} bytes differ' if differ else None


def check_checkpoint(ctx: Context) -> Outcome:
  """Saves a random train state, restores it into the abstract target, compares bitwise."""
  config = forms.step_config(ctx.form, ctx.form.step_batches[0], ctx.data_dir)
  model = forms.step_model(ctx.form, config)
  tx, _ = optim.create_optimizer(config, train.backbone_prefixes(config))
  mesh = parallel.create_mesh([ctx.device])
  target = train.create_train_state(config, model, tx, mesh, abstract=True)
  state = inputs.random_tree(target, seed=1)
  size = inputs.tree_bytes(target)
  checkpointer = checkpoint.Checkpointer(ctx.tmp / 'checkpoint', keep=1)
  try:
    start = time.perf_counter()
    checkpointer.save(STEP, state, config)
    checkpointer.wait()
    save_s = time.perf_counter() - start
    start = time.perf_counter()
    restored = checkpointer.restore(STEP, target)
    jax.block_until_ready(restored)
    restore_s = time.perf_counter() - start
  finally:
    checkpointer.close()
  saved_leaves, saved_tree = jax.tree_util.tree_flatten_with_path(state)
  restored_leaves, restored_tree = jax.tree_util.tree_flatten_with_path(restored)
  problems = []
  if saved_tree != restored_tree:
    problems.append(f'tree structure differs: {restored_tree} restored for {saved_tree}')
  else:
    for (path, saved), (_, back) in zip(saved_leaves, restored_leaves):
      problem = _leaf_problem(saved, back)
      if problem:
        problems.append(f'{jax.tree_util.keystr(path)}: {problem}')
  details = {'model': forms.describe(config, ctx.form.stage_sizes), 'leaves': len(saved_leaves),
             'bytes': size, 'save_s': save_s, 'restore_s': restore_s, 'problems': problems}
  if problems:
    return Outcome(False, f'{len(problems)} of {len(saved_leaves)} leaves differ after restore: '
                   + '; '.join(problems[:3]), details)
  return Outcome(True, f'{len(saved_leaves)} leaves, {size / 2**20:.1f} MiB: bitwise equal after '
                 f'save {save_s:.1f} s + restore {restore_s:.1f} s', details)
