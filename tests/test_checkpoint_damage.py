"""Damaged checkpoints (jaxseg/checkpoint.py): skipped with a warning naming the damage, never
changed on disk; an explicitly requested damaged step is an error naming it.

The workdir holds checkpoints 1, 2, 3 of a width-1/16 FCN-8s train state with random parameters
(written with the trainer's own state structure and Checkpointer.save, as tests/test_bn_stats.py
does: nothing is compiled), then checkpoint 3 is damaged in the three ways a cut-short copy or a
full disk leaves it: an array file of orbax's OCDBT store truncated, the state's tree metadata
file deleted, the saved config truncated. Restored parameters are compared with the arrays this
file generated.
"""
import hashlib
import logging
import os
import pathlib
import shutil
import sys

import jax
import numpy as np
import pytest

from jaxseg import checkpoint, inference, optim, parallel, train

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_train import tiny_config  # noqa: E402  pylint: disable=g-import-not-at-top

STEPS = {1: 0.2, 2: 0.3, 3: 0.5}  # step: eval mean IoU; the damaged step 3 is the best.


def _hashes(folder):
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def _states(config):
  """{step: host TrainState} with random parameters, different at each step."""
  mesh = parallel.create_mesh()
  model = train.build_model(config)
  tx, _ = optim.create_optimizer(config, train.backbone_prefixes(config))
  shapes = train.create_train_state(config, model, tx, mesh, abstract=True)
  states = {}
  for step in STEPS:
    rng = np.random.default_rng(step)
    random = lambda leaf, rng=rng: rng.normal(0, 0.1, leaf.shape).astype(leaf.dtype)
    states[step] = train.TrainState(
        step=np.asarray(step, shapes.step.dtype), params=jax.tree.map(random, shapes.params),
        batch_stats=jax.tree.map(random, shapes.batch_stats),
        opt_state=jax.tree.map(random, shapes.opt_state),
        rng=np.zeros(shapes.rng.shape, shapes.rng.dtype))
  return states


@pytest.fixture(scope='module')
def template(tmp_path_factory):
  """(workdir with checkpoints 1-3 and config.json, config, {step: host state})."""
  root = tmp_path_factory.mktemp('damage')
  config = tiny_config(str(root / 'tfds'), num_steps=3, checkpoint_every=1, keep_checkpoints=3,
                       eval_every=-1)
  states = _states(config)
  workdir = root / 'work'
  mesh = parallel.create_mesh()
  writer = checkpoint.Checkpointer(workdir, config.train.keep_checkpoints)
  for step, miou in STEPS.items():
    writer.save(step, parallel.replicate(states[step], mesh), config, metrics={'mean_iou': miou})
  writer.wait()
  writer.close()
  checkpoint.write_workdir_config(workdir, config)
  return workdir, config, states


def _truncate(path, keep=0.5):
  with open(path, 'r+b') as f:
    f.truncate(int(os.path.getsize(path) * keep))


def damage(step_dir, how):
  """Damages checkpoint folder `step_dir`; returns the file named in the expected message."""
  if how == 'array':  # The OCDBT store's data files hold the arrays' bytes; every one cut short
    # (orbax may spread params and optimizer state over several files) loses params too, which
    # eval reads, as well as the optimizer state.
    for data in (step_dir / 'state').glob('ocdbt.process_*/d/*'):
      _truncate(data, keep=1 / 16)
    return str(step_dir / 'state')
  if how == 'metadata':
    path = step_dir / 'state' / checkpoint.STATE_METADATA_FILE
    path.unlink()
    return str(path)
  path = step_dir / 'config' / checkpoint.CONFIG_ITEM_FILE
  _truncate(path)
  return str(path)


@pytest.fixture
def damaged(template, tmp_path, request):
  """(workdir copy with checkpoint 3 damaged, the damaged file, hashes of folder 3, states)."""
  source, config, states = template
  workdir = tmp_path / 'work'
  shutil.copytree(source, workdir)
  step_dir = workdir / 'checkpoints' / '3'
  named = damage(step_dir, request.param)
  return workdir, named, _hashes(step_dir), config, states


def _assert_params(variables, state):
  expected = jax.tree_util.tree_leaves_with_path(state.params)
  got = dict(jax.tree_util.tree_leaves_with_path(jax.tree.map(np.asarray, variables['params'])))
  assert len(got) == len(expected)
  for path, leaf in expected:
    np.testing.assert_array_equal(got[path], leaf, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('damaged', ['array', 'metadata', 'config'], indirect=True)
def test_damaged_latest_is_skipped_for_resume_and_eval(damaged, caplog):
  workdir, named, before, _, states = damaged
  caplog.set_level(logging.WARNING)
  reader = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    assert reader.all_steps() == [1, 2, 3]  # Still listed: nothing was moved or deleted.
    assert reader.latest_step() == 2  # What training resumes from.
    assert reader.damage(3).startswith(named) and reader.damage(2) is None
    with pytest.raises(checkpoint.CheckpointDamagedError, match=r'step 3 is damaged: ' + named):
      reader.resolve_step(3)  # Asked for by number: no fallback.
  finally:
    reader.close()
  warnings = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith('Checkpoint step')]
  assert warnings and all('step 3' in w and named in w and 'Using step 2' in w for w in warnings)

  mesh = parallel.create_mesh()
  for which in ('best', 'latest'):  # What eval, predict and restore read.
    variables, config, step = checkpoint.load_for_inference(workdir, mesh, which)
    assert step == 2 and config.model.name == 'fcn8s'
    _assert_params(variables, states[2])
  restored = inference.restore(workdir, 'best')
  assert restored.step == 2
  _assert_params(restored.variables, states[2])
  with pytest.raises(checkpoint.CheckpointDamagedError, match=r'step 3 is damaged: ' + named):
    inference.restore(workdir, 3)
  assert _hashes(workdir / 'checkpoints' / '3') == before  # Byte-identical.


@pytest.mark.parametrize('damaged', ['array'], indirect=True)
def test_training_resumes_from_the_newest_good_checkpoint(damaged, caplog, monkeypatch):
  """`train` resumes from step 2 with a warning, trains step 3 again and saves it; the damaged
  checkpoint is kept beside it as 3.damaged, byte-identical."""
  workdir, named, before, config, _ = damaged
  monkeypatch.setattr(train, '_make_evaluator', lambda *args: None)
  caplog.set_level(logging.INFO)
  final = train.train_and_evaluate(config, workdir)
  assert final['step'] == 3
  messages = [r.getMessage() for r in caplog.records]
  assert any('step 3 is damaged' in m and named in m and 'Using step 2' in m for m in messages)
  assert any(m.startswith('Resumed from step 2') for m in messages)
  assert _hashes(workdir / 'checkpoints' / ('3' + checkpoint.DAMAGED_SUFFIX)) == before
  reader = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    assert reader.all_steps() == [1, 2, 3] and reader.damage(3) is None
    assert reader.latest_step() == 3
  finally:
    reader.close()


def test_no_readable_checkpoint_lists_each_damage(template, tmp_path):
  source, _, _ = template
  workdir = tmp_path / 'work'
  shutil.copytree(source, workdir)
  named = {step: damage(workdir / 'checkpoints' / str(step), how)
           for step, how in ((1, 'config'), (2, 'metadata'), (3, 'array'))}
  reader = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    with pytest.raises(checkpoint.CheckpointDamagedError, match='all 3 are damaged') as e:
      reader.latest_step()
  finally:
    reader.close()
  lines = str(e.value).splitlines()
  for step, path in named.items():
    assert any(line.strip().startswith(f'step {step}: {path}') for line in lines), str(e.value)
  assert set(e.value.damages) == {1, 2, 3}
  with pytest.raises(checkpoint.CheckpointDamagedError, match='all 3 are damaged'):
    checkpoint.load_for_inference(workdir, parallel.create_mesh(), 'best')


@pytest.mark.parametrize('damaged', ['config'], indirect=True)
def test_retention_keeps_the_damaged_and_the_best_intact_checkpoint(damaged):
  """keep_checkpoints=1 after resuming past the damaged best (step 3, mean IoU 0.5): the best
  intact checkpoint (step 2, 0.3) survives two worse saves, and so does the damaged one."""
  workdir, _, before, config, states = damaged
  mesh = parallel.create_mesh()
  writer = checkpoint.Checkpointer(workdir, keep=1)
  try:
    assert writer.latest_step() == 2
    for step in (4, 5):
      writer.save(step, parallel.replicate(states[1], mesh), config, metrics={'mean_iou': 0.1})
    writer.wait()
    assert writer.all_steps() == [2, 3, 5]
    assert writer.candidates('best')[:2] == [3, 2] and writer.resolve_step('best') == 2
  finally:
    writer.close()
  assert _hashes(workdir / 'checkpoints' / '3') == before
