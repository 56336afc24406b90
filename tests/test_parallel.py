"""Mesh helpers, the shard_map step wrapper, and 2 processes x 4 devices == 1 x 8 devices
(the processes started by jaxseg.launch from jax.distributed variables)."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxseg import parallel
from jaxseg import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'experiments'))
import default  # noqa: E402  pylint: disable=g-import-not-at-top


def test_mesh_and_shardings():
  mesh = parallel.create_mesh()
  assert mesh.axis_names == ('data',) and mesh.size == 8
  assert parallel.create_mesh(jax.devices()[:1]).size == 1
  tree = parallel.replicate({'a': np.arange(6.0).reshape(2, 3)}, mesh)
  assert tree['a'].sharding.is_fully_replicated
  batch = parallel.shard_batch({'x': np.arange(16).reshape(8, 2)}, mesh)
  assert [s.data.shape for s in batch['x'].addressable_shards] == [(1, 2)] * 8
  np.testing.assert_array_equal(parallel.to_host(batch['x']), np.arange(16).reshape(8, 2))
  with pytest.raises(ValueError, match='at least one device'):
    parallel.create_mesh([])


def test_data_parallel_is_per_device_and_donates():
  mesh = parallel.create_mesh()

  def per_device(state, batch):
    local = jnp.sum(batch)  # This device's slice only.
    new_state = {'total': state['total'] + lax.psum(local, 'data')}
    return new_state, {'local_mean': lax.pmean(local, 'data')}

  step = parallel.data_parallel(per_device, mesh)
  state = parallel.replicate({'total': np.float32(1.0)}, mesh)
  batch = parallel.shard_batch(np.arange(16, dtype=np.float32).reshape(8, 2), mesh)
  new_state, metrics = step(state, batch)
  assert float(new_state['total']) == 1.0 + 120.0
  assert float(metrics['local_mean']) == 120.0 / 8
  assert state['total'].is_deleted()  # Donated.


# ---------------------------------------------------------------- multi-process
class TinySegNet(nn.Module):
  """Stand-in with the jaxseg model interface (BN, dropout, aux head) that compiles in seconds.

  Two processes compiling the real PSPNet at once take minutes on a shared 2-core machine; what
  this test checks is the runtime and the collectives, which do not depend on the network.
  (The real PSPNet's 8-vs-1-device equality is tests/test_train.py.)
  """
  num_classes: int
  width: float = 1.0
  dtype: object = jnp.float32
  sync_bn_axis: str | None = None
  dropout_rate: float | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, axis_name=self.sync_bn_axis, momentum=0.9,
                     epsilon=1e-5, dtype=self.dtype)(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout_rate or 0.0, deterministic=not train)(x)
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype)(x).astype(jnp.float32)
    if not train:
      return logits
    return logits, nn.Conv(self.num_classes, (3, 3), name='aux')(x).astype(jnp.float32)


def tiny_config():
  config = default.get_config()
  config.model.dropout_rate = 0.0
  config.model.sync_bn = True
  config.data.num_classes = 5
  config.data.crop_size = (8, 8)
  config.train.batch_size = 8
  config.train.num_steps = 10
  config.optim.head_lr_mult = 10.0
  return config


def tiny_batches(config, steps=2):
  rng = np.random.RandomState(0)
  b, (h, w), c = config.train.batch_size, config.data.crop_size, config.data.num_classes
  out = []
  for _ in range(steps):
    labels = rng.randint(0, c, (b, h, w))
    labels[rng.rand(b, h, w) < 0.2] = 255
    labels[:3, :, : w // 2] = 255  # Unequal valid pixels per device.
    out.append({'image': rng.randn(b, h, w, 3).astype(np.float32),
                'label': labels.astype(np.int32)})
  return out


def run_steps(config, mesh, rows):
  """Two train steps; `rows` selects this process's part of each global batch."""
  from jaxseg import optim  # pylint: disable=g-import-not-at-top
  model = TinySegNet(config.data.num_classes, sync_bn_axis='data', dropout_rate=0.3)
  tx, schedule = optim.create_optimizer(config, ('Conv_0', 'BatchNorm_0'))
  state = train.create_train_state(config, model, tx, mesh)
  step = train.make_train_step(config, model, tx, schedule, mesh)
  losses = []
  for batch in tiny_batches(config):
    local = {k: v[rows] for k, v in batch.items()}
    state, metrics = step(state, parallel.shard_batch(local, mesh))
    losses.append(float(parallel.to_host(metrics['loss'])))
  host = parallel.to_host({'params': state.params, 'batch_stats': state.batch_stats})
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(host)}
  return flat, np.asarray(losses)


WORKER = textwrap.dedent('''
    import os, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
    sys.path.insert(0, {tests!r})
    sys.path.insert(0, {root!r})
    from jaxseg import launch, parallel
    plan = launch.initialize_from_environment()
    assert plan.launcher == 'jax' and plan.num_processes == 2, plan
    assert launch.initialize_from_environment() is plan  # A second call is a no-op.
    import jax, numpy as np
    import test_parallel as t
    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    pid = jax.process_index()
    config = t.tiny_config()
    flat, losses = t.run_steps(config, parallel.create_mesh(), slice(4 * pid, 4 * pid + 4))
    if pid == 0:
      np.savez(sys.argv[1], losses=losses, **flat)
    print('worker', pid, 'done', losses)
''')


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start_processes(script, args, cwd, count=2):
  """`script args` as processes 0..count-1 of a jax.distributed job on loopback.

  Each process writes its output to a file (cwd/process_<pid>_<port>.log), not a pipe: with pipes, a
  process whose undrained pipe fills (64 KiB of logs and progress bars) blocks in write() while
  its peer waits for it in a collective, and both hang until the time-out.
  """
  port = _free_port()
  procs = []
  for pid in range(count):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
               JAX_NUM_PROCESSES=str(count), JAX_PROCESS_ID=str(pid), JAX_PLATFORMS='cpu')
    log = pathlib.Path(cwd) / f'process_{pid}_{port}.log'
    with open(log, 'w') as out:
      proc = subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, cwd=cwd,
                              stdout=out, stderr=subprocess.STDOUT, text=True)
    proc.log_path = log
    procs.append(proc)
  return procs


def wait_for(procs, timeout=600):
  """(return codes, logs) of processes from start_processes; kills them all on a time-out."""
  deadline = time.monotonic() + timeout
  for proc in procs:
    try:
      proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      for p in procs:
        p.wait()
      tails = ''.join(f'\n--- process {i} ---\n{p.log_path.read_text()[-3000:]}'
                      for i, p in enumerate(procs))
      raise AssertionError(f'processes still running after {timeout} s:{tails}') from None
  return [p.returncode for p in procs], [p.log_path.read_text() for p in procs]


def run_two_processes(tmp_path, worker_source, out, reference):
  """Runs `worker_source` as processes 0 and 1 of a jax.distributed job (4 CPU devices each,
  argv[1] = out) while `reference()` runs here (1 process, 8 devices); returns its result."""
  script = tmp_path / 'worker.py'
  script.write_text(worker_source.format(tests=str(ROOT / 'tests'), root=str(ROOT)))
  procs = start_processes(script, [out], tmp_path)
  expected = reference()
  codes, logs = wait_for(procs)
  for code, log in zip(codes, logs):
    assert code == 0, log[-3000:]
  return expected


def test_two_processes_match_one_process(tmp_path):
  out = tmp_path / 'two_process.npz'
  expected, expected_losses = run_two_processes(
      tmp_path, WORKER, out,
      lambda: run_steps(tiny_config(), parallel.create_mesh(), slice(None)))
  got = np.load(out)
  np.testing.assert_allclose(got['losses'], expected_losses, rtol=1e-5)
  assert set(got.files) == set(expected) | {'losses'}
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def run_eval(mesh, rows):
  """evaluate() over 16 images (the last 3 padding) in global batches of 8; `rows` selects this
  process's rows of each global batch, and its ids, as the eval pipeline hands them out."""
  from jaxseg import inference  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.data.dataset = 'synthetic_shapes'
  config.eval.mode = 'whole'
  model = TinySegNet(config.data.num_classes)
  rng = np.random.RandomState(1)
  images = rng.randn(16, 8, 10, 3).astype(np.float32)
  labels = rng.randint(0, config.data.num_classes, (16, 8, 10)).astype(np.int32)
  labels[:, 6:] = 255
  valid = np.arange(16) < 13
  ids = np.array([f'img{i}'.encode() for i in range(16)])
  variables = model.init(jax.random.key(3), images[:1])

  def batches():
    for s in range(0, 16, 8):
      local = {k: v[s:s + 8][rows] for k, v in
               (('image', images), ('label', labels), ('valid', valid))}
      yield {**parallel.shard_batch(local, mesh), 'id': ids[s:s + 8][rows]}

  results = inference.evaluate(config, model, variables, mesh, 'val', batches=batches())
  return {'confusion_matrix': np.asarray(results['confusion_matrix']).tolist(),
          'mean_iou': results['mean_iou'], 'num_images': results['num_images'],
          'per_image': results['per_image']}


EVAL_WORKER = textwrap.dedent('''
    import json, os, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
    sys.path.insert(0, {tests!r})
    sys.path.insert(0, {root!r})
    from jaxseg import launch, parallel
    plan = launch.initialize_from_environment()
    assert plan.launcher == 'jax' and plan.num_processes == 2, plan
    assert launch.initialize_from_environment() is plan  # A second call is a no-op.
    import jax
    import test_parallel as t
    pid = jax.process_index()
    got = t.run_eval(parallel.create_mesh(), slice(4 * pid, 4 * pid + 4))
    with open(sys.argv[1] + str(pid), 'w') as f:
      json.dump(got, f)
''')


def test_two_process_evaluation_matches_one_process(tmp_path):
  """Confusion matrix (psum across hosts) and per-image ids/scores (all-gathered) agree."""
  out = tmp_path / 'eval.json'
  expected = run_two_processes(tmp_path, EVAL_WORKER, out,
                               lambda: run_eval(parallel.create_mesh(), slice(None)))
  assert expected['num_images'] == 13
  assert [p['id'] for p in expected['per_image']] == [f'img{i}' for i in range(13)]
  for pid in range(2):  # Every process holds the full result.
    got = json.loads((tmp_path / f'eval.json{pid}').read_text())
    assert got['confusion_matrix'] == expected['confusion_matrix']
    assert got['mean_iou'] == pytest.approx(expected['mean_iou'])
    assert [p['id'] for p in got['per_image']] == [p['id'] for p in expected['per_image']]
    for a, b in zip(got['per_image'], expected['per_image']):
      assert a['iou'] == pytest.approx(b['iou'], nan_ok=True)


def test_bfloat16_compute_keeps_float32_params_and_loss():
  config = tiny_config()
  mesh = parallel.create_mesh()
  from jaxseg import optim  # pylint: disable=g-import-not-at-top
  tx, schedule = optim.create_optimizer(config)
  results = {}
  for name in ('float32', 'bfloat16'):
    config.model.dtype = name
    model = TinySegNet(config.data.num_classes, dtype=train.compute_dtype(config),
                       sync_bn_axis='data')
    state = train.create_train_state(config, model, tx, mesh)
    state, metrics = train.make_train_step(config, model, tx, schedule, mesh)(
        state, parallel.shard_batch(tiny_batches(config, steps=1)[0], mesh))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    assert metrics['loss'].dtype == jnp.float32
    results[name] = float(metrics['loss'])
  assert results['bfloat16'] == pytest.approx(results['float32'], rel=2e-2)
  config.model.dtype = 'fp8'
  with pytest.raises(ValueError, match="config.model.dtype='fp8'"):
    train.compute_dtype(config)
