"""One trainer per workdir: a second `jaxseg train` is refused, a killed holder's lock is taken
over, a holder elsewhere goes stale only after its heartbeat timeout."""
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from jaxseg import workdir_lock

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = str(ROOT / 'experiments' / 'demo.py')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """One prepared synthetic_shapes/tiny for the subprocess tests of this session."""
  return tmp_path_factory.getbasetemp() / 'tfds_tiny_shared'


def _claims(workdir):
  folder = pathlib.Path(workdir) / workdir_lock.LOCK_DIR
  return sorted(folder.glob('*.json')) if folder.is_dir() else []


# ---------------------------------------------------------------- two real `jaxseg train`
GATED_TRAIN = textwrap.dedent('''
    import os, sys, time
    os.environ.setdefault('NO_GCE_CHECK', 'true')
    import torchvision  # Before tensorflow.
    sys.path.insert(0, {root!r})
    from jaxseg import cli
    from jaxseg.data import pipeline
    real = pipeline.train_iterator

    def gated(config, mesh, start_step=0):  # Holds the run at step 2 until the test says go.
      for index, batch in enumerate(real(config, mesh, start_step), start_step):
        if index == 1:
          open({ready!r}, 'w').close()
          while not os.path.exists({go!r}):
            time.sleep(0.05)
        yield batch

    pipeline.train_iterator = gated
    sys.exit(cli.main(sys.argv[1:]))
''')


def _train_args(workdir, data_dir):
  return ['train', '--config', DEMO, '--workdir', str(workdir),
          f'--config.data.data_dir={data_dir}', '--config.data.dataset=synthetic_shapes/tiny',
          '--config.model.width=0.0625', '--config.data.crop_size=32,32',
          '--config.data.eval_size=64,64', '--config.train.batch_size=8',
          '--config.eval.batch_size=8', '--config.train.num_steps=3',
          '--config.train.checkpoint_every=2', '--config.train.log_every=1',
          '--config.train.eval_every=-1', '--config.optim.warmup_steps=0']


def test_second_train_on_a_workdir_is_refused_and_the_first_finishes(tmp_path, data_dir):
  workdir, ready, go = tmp_path / 'run', tmp_path / 'ready', tmp_path / 'go'
  script = tmp_path / 'gated.py'
  script.write_text(GATED_TRAIN.format(root=str(ROOT), ready=str(ready), go=str(go)))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  first = subprocess.Popen([sys.executable, str(script), *_train_args(workdir, data_dir)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                           cwd=ROOT)
  try:
    deadline = time.time() + 300
    while not ready.exists():  # The first run holds the lock and has trained step 1.
      assert first.poll() is None and time.time() < deadline, first.communicate()[0][-3000:]
      time.sleep(0.1)
    assert len(_claims(workdir)) == 1
    second = subprocess.run(
        [sys.executable, '-m', 'jaxseg.cli', *_train_args(workdir, data_dir)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    error = [line for line in second.stderr.splitlines() if line.startswith('jaxseg: error')]
    assert len(error) == 1, second.stderr[-3000:]
    print(error[0])
    assert f'workdir {workdir} is locked: another `jaxseg train` is running on it' in error[0]
    assert f'host {socket.gethostname()}, pid {first.pid}, started ' in error[0]
    assert 'train into another --workdir' in error[0] and f'kill {first.pid}' in error[0]
    assert 'Traceback' not in second.stderr
  finally:
    go.touch()
  log = first.communicate(timeout=300)[0]
  assert first.returncode == 0, log[-3000:]
  assert 'trained to step 3' in log
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [1, 2, 3]  # The first run's alone.
  assert (workdir / 'checkpoints' / '3').is_dir()
  assert not (workdir / workdir_lock.LOCK_DIR).exists()  # Released at exit.


# ---------------------------------------------------------------- stale locks
HOLDER = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {root!r})
    from jaxseg import workdir_lock
    workdir_lock.WorkdirLock(sys.argv[1], command='holder').acquire()
    print('locked', flush=True)
    time.sleep(600)
''')


def test_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
  workdir = tmp_path / 'run'
  script = tmp_path / 'holder.py'
  script.write_text(HOLDER.format(root=str(ROOT)))
  holder = subprocess.Popen([sys.executable, str(script), str(workdir)], stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(workdir_lock.WorkdirLockedError, match=rf'pid {holder.pid}, started '):
      workdir_lock.WorkdirLock(workdir).acquire()  # Alive: refused, its claim untouched.
    [claim] = _claims(workdir)
    assert json.loads(claim.read_text())['pid'] == holder.pid
  finally:
    os.kill(holder.pid, signal.SIGKILL)  # No cleanup: the claim stays behind.
    holder.wait()
  assert _claims(workdir) == [claim]
  lock = workdir_lock.WorkdirLock(workdir)
  with caplog.at_level(logging.WARNING):
    lock.acquire()
  try:
    message = caplog.text
    print(message)
    assert f'Taking over the lock of workdir {workdir}' in message
    assert f'pid {holder.pid}' in message and 'is no longer running' in message
    assert _claims(workdir) == [lock.path]
    assert json.loads(lock.path.read_text())['pid'] == os.getpid()
  finally:
    lock.release()
  assert not (workdir / workdir_lock.LOCK_DIR).exists()


def _foreign_claim(workdir, heartbeat_age):
  """A claim by a process on another host (its pid cannot be checked from here)."""
  folder = pathlib.Path(workdir) / workdir_lock.LOCK_DIR
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / 'elsewhere.json'
  path.write_text(json.dumps({'host': 'tpu-vm-7', 'pid': 4242, 'pid_namespace': '1',
                              'started': '2030-01-02 03:04:05 UTC',
                              'heartbeat': time.time() - heartbeat_age, 'token': 'elsewhere'}))
  return path


def test_claim_from_another_host_goes_stale_after_its_heartbeat_timeout(tmp_path, caplog):
  path = _foreign_claim(tmp_path, heartbeat_age=workdir_lock.STALE_AFTER_SECONDS - 60)
  with pytest.raises(workdir_lock.WorkdirLockedError) as error:
    workdir_lock.WorkdirLock(tmp_path).acquire()
  assert ('host tpu-vm-7, pid 4242, started 2030-01-02 03:04:05 UTC, last heartbeat 240 s ago'
          in str(error.value))
  assert f'after {workdir_lock.STALE_AFTER_SECONDS:.0f} s without a heartbeat' in str(error.value)
  assert path.exists()

  path = _foreign_claim(tmp_path, heartbeat_age=workdir_lock.STALE_AFTER_SECONDS + 60)
  with caplog.at_level(logging.WARNING):
    with workdir_lock.WorkdirLock(tmp_path) as lock:
      assert not path.exists() and _claims(tmp_path) == [lock.path]
  assert 'host tpu-vm-7, pid 4242' in caplog.text and 'sent no heartbeat for 360 s' in caplog.text


def test_heartbeat_refreshes_and_a_removed_claim_is_reported_lost(tmp_path):
  lock = workdir_lock.WorkdirLock(tmp_path, heartbeat_seconds=0.05)
  lock.acquire()
  try:
    first = json.loads(lock.path.read_text())['heartbeat']
    deadline = time.time() + 20
    while json.loads(lock.path.read_text())['heartbeat'] == first:
      assert time.time() < deadline
      time.sleep(0.02)
    assert not lock.lost
    lock.path.unlink()  # Taken over by someone who thought this process dead.
    while not lock.lost:
      assert time.time() < deadline
      time.sleep(0.02)
    assert not lock.path.exists()  # Not written back.
  finally:
    lock.release()


def test_two_claims_at_the_same_moment_admit_none_twice(tmp_path, monkeypatch):
  """A contender's claim appears between our check and our listing: we withdraw ours."""
  lock = workdir_lock.WorkdirLock(tmp_path)
  write = lock._write  # pylint: disable=protected-access

  def write_then_rival_claims():
    write()
    _foreign_claim(tmp_path, heartbeat_age=0)

  monkeypatch.setattr(lock, '_write', write_then_rival_claims)
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match='another `jaxseg train` is starting on it at the same moment'):
    lock.acquire()
  assert [p.name for p in _claims(tmp_path)] == ['elsewhere.json']  # Ours withdrawn.
