"""The trainer: 8 devices == 1 device, learning, kill -> resume == uninterrupted, NaN guard,
checkpoint retention and workdir identity."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxseg import checkpoint
from jaxseg import models
from jaxseg import optim
from jaxseg import parallel
from jaxseg import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'experiments'))
import default  # noqa: E402  pylint: disable=g-import-not-at-top


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(parallel.to_host(tree))}


def _max_diff(a, b):
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


# ---------------------------------------------------------------- 8 devices == 1 device
def _pspnet(sync_bn):
  """A tiny real PSPNet (BN + aux head) and a config for one plain-SGD step with lr 1, so that
  the parameter change is exactly minus the gradient."""
  config = default.get_config()
  config.model.name, config.model.width, config.model.sync_bn = 'pspnet50', 1 / 16, sync_bn
  config.data.num_classes, config.data.crop_size = 5, (32, 32)
  config.train.batch_size, config.train.num_steps = 8, 10
  config.optim.update(dict(learning_rate=1.0, momentum=0.0, weight_decay=0.0,
                           schedule='constant'))
  model = models.create_model('pspnet50', num_classes=5, width=1 / 16, stage_sizes=(1, 1, 1, 1),
                              dropout_rate=0.0, sync_bn_axis='data' if sync_bn else None)
  return config, model


def _pspnet_step(initial, num_devices, sync_bn):
  """One step on `num_devices` from the host state `initial`."""
  config, model = _pspnet(sync_bn)
  mesh = parallel.create_mesh(jax.devices()[:num_devices])
  tx, schedule = optim.create_optimizer(config, models.BACKBONE_PREFIXES['pspnet50'])
  state = parallel.replicate(initial, mesh)
  rng = np.random.RandomState(0)
  labels = rng.randint(0, 5, (8, 32, 32))
  labels[rng.rand(8, 32, 32) < 0.2] = 255
  labels[:3, :, :20] = 255  # Devices hold different numbers of valid pixels.
  batch = parallel.shard_batch({'image': rng.randn(8, 32, 32, 3).astype(np.float32),
                                'label': labels.astype(np.int32)}, mesh)
  state, metrics = train.make_train_step(config, model, tx, schedule, mesh)(state, batch)
  before, after = _flat(initial.params), _flat(state.params)
  return {'loss': float(metrics['loss']), 'aux_loss': float(metrics['aux_loss']),
          'grads': {k: before[k] - after[k] for k in before}, 'params': after,
          'batch_stats': _flat(state.batch_stats)}


def test_eight_devices_equal_one_device_with_sync_bn():
  config, model = _pspnet(sync_bn=True)
  tx, _ = optim.create_optimizer(config)
  mesh = parallel.create_mesh(jax.devices()[:1])
  initial = parallel.to_host(train.create_train_state(config, model, tx, mesh))  # Shared.
  one = _pspnet_step(initial, 1, sync_bn=True)
  eight = _pspnet_step(initial, 8, sync_bn=True)
  diffs = {'loss': abs(one['loss'] - eight['loss']),
           'grads': _max_diff(one['grads'], eight['grads']),
           'params': _max_diff(one['params'], eight['params']),
           'batch_stats': _max_diff(one['batch_stats'], eight['batch_stats'])}
  print('8-vs-1 device max abs differences:', diffs)
  assert diffs['loss'] < 1e-5 and abs(one['aux_loss'] - eight['aux_loss']) < 1e-5
  assert diffs['grads'] < 1e-5 and diffs['params'] < 1e-5 and diffs['batch_stats'] < 1e-5
  assert max(float(np.abs(g).max()) for g in one['grads'].values()) > 1e-3  # Not all zero.

  local = _pspnet_step(initial, 8, sync_bn=False)  # Per-device BN: statistics of 1 example each.
  assert abs(local['loss'] - one['loss']) > 1e-3
  assert _max_diff(local['batch_stats'], one['batch_stats']) > 1e-3


# ---------------------------------------------------------------- train_and_evaluate
@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def tiny_config(data_dir, **train_fields):
  """FCN-8s at width 1/16 on 32x32 crops of the tiny synthetic dataset (dropout on)."""
  config = default.get_config()
  config.model.name, config.model.width = 'fcn8s', 1 / 16
  config.data.update(dict(dataset='synthetic_shapes/tiny', data_dir=data_dir, train_split='train',
                          eval_split='val', num_classes=7, crop_size=(32, 32), eval_size=(64, 64),
                          shuffle_buffer=64, prefetch=1))
  config.eval.batch_size = 8
  config.optim.update(dict(name='sgd', learning_rate=0.01, momentum=0.9, weight_decay=1e-4,
                           head_lr_mult=2.0))
  config.train.update(dict(batch_size=8, num_steps=6, log_every=2, eval_every=0,
                           checkpoint_every=2, keep_checkpoints=2))
  config.train.update(train_fields)
  return config


@pytest.fixture
def no_eval(monkeypatch):
  monkeypatch.setattr(train, '_make_evaluator', lambda *args: None)


def _read_state(workdir, step):
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    variables = ckpt.restore_variables(step, parallel.create_mesh())
  finally:
    ckpt.close()
  return _flat(variables)


def test_short_run_learns_and_writes_the_workdir(tmp_path, data_dir, monkeypatch):
  """A tiny real PSPNet (BN learns fast from scratch; FCN's plain VGG trunk needs far longer)."""
  build_model = train.build_model
  monkeypatch.setattr(train, 'build_model',
                      lambda config: build_model(config).clone(stage_sizes=(1, 1, 1, 1)))
  config = tiny_config(data_dir, num_steps=300, log_every=50, checkpoint_every=100,
                       eval_every=30)
  config.model.name = 'pspnet50'
  config.optim.update(dict(name='adam', learning_rate=3e-3, weight_decay=0.0, head_lr_mult=1.0))
  final = train.train_and_evaluate(config, tmp_path)

  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  train_records = [r for r in records if r['split'] == 'train']
  assert [r['step'] for r in train_records] == list(range(50, 301, 50))
  assert {'loss', 'lr', 'images_per_sec', 'main_loss', 'aux_loss'} <= set(train_records[0])
  assert train_records[-1]['loss'] < 0.75 * train_records[0]['loss']
  evals = [r for r in records if r['split'] == 'val']
  assert [r['step'] for r in evals] == list(range(30, 301, 30))
  assert len(evals[0]['per_class_iou']) == 7
  assert final['step'] == 300 and final['mean_iou'] == pytest.approx(evals[-1]['mean_iou'])
  # Better than early on, and than predicting background everywhere (~0.12 here).
  print('mean IoU by step:', {r['step']: round(r['mean_iou'], 4) for r in evals})
  assert final['mean_iou'] > evals[0]['mean_iou'] + 0.02 and final['mean_iou'] > 0.15
  assert sum(iou > 0.05 for iou in final['per_class_iou'][1:]) >= 2
  assert json.loads((tmp_path / 'config.json').read_text())['model']['name'] == 'pspnet50'
  assert list((tmp_path / 'tb').glob('events.out.tfevents.*'))
  assert (tmp_path / 'eval' / 'val_step300.json').is_file()
  # Every eval step was saved with its scores; kept: the last 2 and the best.
  best = max(evals, key=lambda r: r['mean_iou'])['step']
  ckpt = checkpoint.Checkpointer(tmp_path, read_only=True)
  assert ckpt.all_steps() == sorted({270, 300, best}) and ckpt.best_step() == best
  assert ckpt.metrics(300)['mean_iou'] == pytest.approx(final['mean_iou'])
  ckpt.close()


KILLED_RUN = textwrap.dedent('''
    import os, signal, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
    os.environ.setdefault('NO_GCE_CHECK', 'true')
    import torchvision  # Before tensorflow.
    sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
    import test_train as t
    from jaxseg import train
    from jaxseg.data import pipeline
    real = pipeline.train_iterator

    def dying(config, mesh, start_step=0):
      for index, batch in enumerate(real(config, mesh, start_step), start_step):
        if index == {kill_at}:
          os.kill(os.getpid(), signal.SIGKILL)  # No cleanup, no waiting for async saves.
        yield batch

    pipeline.train_iterator = dying
    train._make_evaluator = lambda *args: None
    train.train_and_evaluate(t.tiny_config({data_dir!r}), sys.argv[1])
''')


def test_kill_and_resume_equals_uninterrupted(tmp_path, data_dir, no_eval):
  config = tiny_config(data_dir)
  whole, resumed = tmp_path / 'whole', tmp_path / 'resumed'
  # SIGKILL while fetching the batch of step 6, i.e. after step 5 was dispatched.
  script = tmp_path / 'killed.py'
  script.write_text(KILLED_RUN.format(tests=str(ROOT / 'tests'), root=str(ROOT),
                                      data_dir=data_dir, kill_at=5))
  proc = subprocess.Popen([sys.executable, str(script), str(resumed)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
  train.train_and_evaluate(config, whole)  # Meanwhile, the uninterrupted run.
  log = proc.communicate(timeout=600)[0]
  assert proc.returncode == -signal.SIGKILL, log[-3000:]
  ckpt = checkpoint.Checkpointer(resumed, read_only=True)
  killed_at = ckpt.latest_step()
  ckpt.close()
  assert killed_at in (2, 4), log[-3000:]  # Step 4's async save may or may not have finished.

  train.train_and_evaluate(config, resumed)
  a, b = _read_state(whole, 6), _read_state(resumed, 6)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # Bitwise.
  steps = [json.loads(r)['step'] for r in (resumed / 'metrics.jsonl').read_text().splitlines()]
  assert steps == [2, 4, 6]  # Lines the killed run logged past its checkpoint are dropped.

  # The workdir remembers its model: another width is refused, naming the field.
  other = tiny_config(data_dir)
  other.model.width = 1 / 8
  with pytest.raises(ValueError, match=r'model\.width: 0\.0625 there, 0\.125 now'):
    train.train_and_evaluate(other, whole)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir, no_eval,
                                                              monkeypatch):
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top
  real = pipeline.train_iterator

  def poisoned(config, mesh, start_step=0):
    for index, batch in enumerate(real(config, mesh, start_step), start_step):
      if index == 4:  # The batch of step 5.
        batch = dict(batch, image=batch['image'] * np.float32(np.nan))
      yield batch

  monkeypatch.setattr(pipeline, 'train_iterator', poisoned)
  config = tiny_config(data_dir, num_steps=8, checkpoint_every=1, keep_checkpoints=10)
  with pytest.raises(train.NonFiniteLossError, match=r'nan .* at step 5\b.*last good checkpoint: '
                     r'step 4'):
    train.train_and_evaluate(config, tmp_path)
  ckpt = checkpoint.Checkpointer(tmp_path, read_only=True)
  assert ckpt.all_steps() == [1, 2, 3, 4]
  ckpt.close()
  assert all(np.isfinite(v).all() for v in _read_state(tmp_path, 4).values())


# ---------------------------------------------------------------- config and checkpoint units
def test_bad_batch_size_is_named(tmp_path, data_dir):
  with pytest.raises(ValueError, match='config.train.batch_size=12 must be a positive multiple'):
    train.train_and_evaluate(tiny_config(data_dir, batch_size=12), tmp_path)


def test_unbuildable_config_does_not_claim_the_workdir(tmp_path, data_dir):
  config = tiny_config(data_dir)
  config.model.name = 'fcn8'
  with pytest.raises(ValueError, match="Unknown model 'fcn8'"):
    train.train_and_evaluate(config, tmp_path)
  assert not (tmp_path / 'config.json').exists()


def test_config_identity_check():
  stored = checkpoint.config_to_dict(default.get_config())
  config = default.get_config()
  config.train.num_steps = 5
  assert checkpoint.check_compatible(stored, config) == {'train.num_steps': (30000, 5)}
  config.data.crop_size = (64, 64)
  with pytest.raises(ValueError, match='data.crop_size'):
    checkpoint.check_compatible(stored, config)
  assert 'data.crop_size' in checkpoint.check_compatible(stored, config, allow_config_change=True)


def test_checkpoints_keep_last_n_plus_best(tmp_path):
  mesh = parallel.create_mesh()
  ckpt = checkpoint.Checkpointer(tmp_path, keep=2)
  config = default.get_config()
  scores = {2: 0.3, 4: 0.6, 6: 0.4, 8: None, 10: 0.5}
  for step, miou in scores.items():
    state = parallel.replicate({'params': {'w': np.full((3,), step, np.float32)},
                                'batch_stats': {}, 'step': np.int32(step)}, mesh)
    ckpt.save(step, state, config, metrics=None if miou is None else
              {'mean_iou': miou, 'per_class_iou': [0.1]})
  ckpt.wait()
  assert ckpt.all_steps() == [4, 8, 10] and ckpt.best_step() == 4
  target = parallel.replicate({'params': {'w': np.zeros(3, np.float32)}, 'batch_stats': {},
                               'step': np.int32(0)}, mesh)
  restored = ckpt.restore(8, target)
  np.testing.assert_array_equal(parallel.to_host(restored['params']['w']), [8, 8, 8])
  ckpt.close()
  one_device = parallel.create_mesh(jax.devices()[:1])
  variables, loaded_config, step = checkpoint.load_for_inference(tmp_path, one_device)
  assert step == 4 and loaded_config.model.name == config.model.name
  np.testing.assert_array_equal(np.asarray(variables['params']['w']), [4, 4, 4])
  with pytest.raises(FileNotFoundError, match='No checkpoints'):
    checkpoint.load_for_inference(tmp_path / 'missing', one_device)


# ---------------------------------------------------------------- nothing lost (issue 17)
def _scripted_evaluator(scores_by_step, calls=None):
  """An evaluator returning the given mean IoU per step (None: the evaluation raises)."""

  def make(*args):
    def run(state, step):
      if calls is not None:
        calls.append(step)
      miou = scores_by_step.get(step, 0.1)
      if miou is None:
        raise RuntimeError(f'the evaluation broke at step {step}')
      return {'split': 'val', 'mean_iou': miou, 'pixel_accuracy': 0.5, 'mean_accuracy': 0.4,
              'fw_iou': 0.3, 'per_class_iou': [miou] * 7}
    return run
  return make


def test_failing_evaluation_keeps_the_state_it_evaluated(tmp_path, data_dir, monkeypatch):
  monkeypatch.setattr(train, '_make_evaluator', _scripted_evaluator({2: None}))
  config = tiny_config(data_dir, num_steps=4, eval_every=2, checkpoint_every=2)
  with pytest.raises(RuntimeError, match='the evaluation broke at step 2'):
    train.train_and_evaluate(config, tmp_path)
  ckpt = checkpoint.Checkpointer(tmp_path, read_only=True)
  assert ckpt.all_steps() == [2] and not ckpt.metrics(2)  # Saved, with no score it never got.
  ckpt.close()
  assert all(np.isfinite(v).all() for v in _read_state(tmp_path, 2).values())


def test_failed_run_leaves_nothing_in_a_new_workdir(tmp_path, data_dir, no_eval, monkeypatch):
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top

  def broken(config, mesh, start_step=0):
    raise ValueError('example 3 of train: label 9 >= num_classes 7')

  monkeypatch.setattr(pipeline, 'train_iterator', broken)
  workdir = tmp_path / 'new'
  with pytest.raises(ValueError, match='label 9'):
    train.train_and_evaluate(tiny_config(data_dir), workdir)
  assert not workdir.exists(), sorted(p.name for p in workdir.rglob('*'))


def test_rerun_of_a_finished_run_logs_each_split_and_step_once(tmp_path, data_dir, monkeypatch):
  calls = []
  monkeypatch.setattr(train, '_make_evaluator', _scripted_evaluator({}, calls))
  config = tiny_config(data_dir, num_steps=2, eval_every=0, log_every=1)
  train.train_and_evaluate(config, tmp_path)
  first = (tmp_path / 'metrics.jsonl').read_text()
  final = train.train_and_evaluate(config, tmp_path)  # Finished: evaluates again, logs nothing new.
  assert calls == [2, 2] and final['mean_iou'] == 0.1
  keys = [(r['split'], r['step']) for r in map(json.loads, first.splitlines())]
  assert keys == [('train', 1), ('train', 2), ('val', 2)]
  assert (tmp_path / 'metrics.jsonl').read_text() == first


def test_divergence_names_the_best_checkpoint_and_those_before_it(tmp_path, data_dir,
                                                                  monkeypatch):
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top
  real = pipeline.train_iterator

  def poisoned(config, mesh, start_step=0):
    for index, batch in enumerate(real(config, mesh, start_step), start_step):
      if index == 4:  # The batch of step 5.
        batch = dict(batch, image=batch['image'] * np.float32(np.nan))
      yield batch

  monkeypatch.setattr(pipeline, 'train_iterator', poisoned)
  monkeypatch.setattr(train, '_make_evaluator', _scripted_evaluator({2: 0.5, 4: 0.25}))
  config = tiny_config(data_dir, num_steps=8, log_every=1, eval_every=2, checkpoint_every=2,
                       keep_checkpoints=1)
  with pytest.raises(train.NonFiniteLossError) as error:
    train.train_and_evaluate(config, tmp_path)
  message = str(error.value)
  print(message)
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  loss = {r['step']: r['loss'] for r in records if r['split'] == 'train'}
  assert sorted(loss) == [1, 2, 3, 4]
  assert (f'Kept checkpoints, all from before step 5: step 2 (train loss {loss[2]:.4g}, eval mean '
          f'IoU 0.5000); step 4 (train loss {loss[4]:.4g}, eval mean IoU 0.2500).') in message
  assert (f'Best by eval mean IoU: step 2 (`jaxseg eval --workdir {tmp_path} --checkpoint 2`)'
          in message)
  ckpt = checkpoint.Checkpointer(tmp_path, read_only=True)
  assert ckpt.all_steps() == [2, 4]  # keep 1 (the latest) + the best.
  ckpt.close()
