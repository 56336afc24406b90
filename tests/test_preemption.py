"""SIGTERM (preemption) mid-run: the step finishes, is saved, the process exits 143 saying how to
resume, and the resumed run ends bitwise where an uninterrupted one does."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from jaxseg import checkpoint
from jaxseg import train
from jaxseg import workdir_lock

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests'))
import test_train  # noqa: E402  pylint: disable=g-import-not-at-top

NUM_STEPS = 10


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """One prepared synthetic_shapes/tiny for the subprocess tests of this session."""
  return str(tmp_path_factory.getbasetemp() / 'tfds_tiny_shared')


def _config(data_dir):
  return test_train.tiny_config(data_dir, num_steps=NUM_STEPS, log_every=1, checkpoint_every=100)


def _logged_steps(metrics):
  """Steps of the complete lines of metrics.jsonl so far."""
  steps = []
  for line in metrics.read_text().splitlines() if metrics.exists() else []:
    try:
      steps.append(json.loads(line)['step'])
    except ValueError:
      pass  # A line being written.
  return steps


PREEMPTED_RUN = textwrap.dedent('''
    import os, sys, time
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
    os.environ.setdefault('NO_GCE_CHECK', 'true')
    import torchvision  # Before tensorflow.
    sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
    import test_preemption as t
    from jaxseg import train
    from jaxseg.data import pipeline
    real = pipeline.train_iterator

    def slow(config, mesh, start_step=0):  # Steps slow enough to be signalled in between.
      for batch in real(config, mesh, start_step):
        time.sleep(0.3)
        yield batch

    pipeline.train_iterator = slow
    train._make_evaluator = lambda *args: None
    train.train_and_evaluate(t._config({data_dir!r}), sys.argv[1])
''')


def test_sigterm_saves_the_step_and_resume_equals_uninterrupted(tmp_path, data_dir,
                                                                 monkeypatch):
  monkeypatch.setattr(train, '_make_evaluator', lambda *args: None)
  whole, resumed = tmp_path / 'whole', tmp_path / 'resumed'
  script = tmp_path / 'preempted.py'
  script.write_text(PREEMPTED_RUN.format(tests=str(ROOT / 'tests'), root=str(ROOT),
                                         data_dir=data_dir))
  proc = subprocess.Popen([sys.executable, str(script), str(resumed)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
  metrics = resumed / 'metrics.jsonl'

  def signal_after_step_3():
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
      if max(_logged_steps(metrics), default=0) >= 3:
        proc.send_signal(signal.SIGTERM)
        return
      time.sleep(0.05)

  watcher = threading.Thread(target=signal_after_step_3)
  watcher.start()
  train.train_and_evaluate(_config(data_dir), whole)  # Meanwhile, the uninterrupted run.
  watcher.join()
  log = proc.communicate(timeout=300)[0]
  assert proc.returncode == train.PREEMPTED_EXIT_CODE == 143, log[-3000:]
  ckpt = checkpoint.Checkpointer(resumed, read_only=True)
  stopped_at = ckpt.latest_step()
  saved = ckpt.all_steps()
  ckpt.close()
  assert saved == [stopped_at] and 3 <= stopped_at < NUM_STEPS, log[-3000:]
  message = [line for line in log.splitlines() if 'stopped by SIGTERM' in line]
  print(message)
  assert message == [
      f'jaxseg train: stopped by SIGTERM (preemption) after step {stopped_at} of {NUM_STEPS}; its '
      f'state is saved in {resumed / "checkpoints" / str(stopped_at)}. To resume, run the same '
      'command (train_and_evaluate with this config and workdir)']
  assert not (resumed / workdir_lock.LOCK_DIR).exists()  # Released on SIGTERM.

  train.train_and_evaluate(_config(data_dir), resumed)
  a, b = test_train._read_state(whole, NUM_STEPS), test_train._read_state(resumed, NUM_STEPS)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # Bitwise.
  assert _logged_steps(metrics) == list(range(1, NUM_STEPS + 1))


def test_resume_message_names_the_command_that_was_run(monkeypatch):
  monkeypatch.setattr(sys, 'argv', ['/venv/bin/jaxseg', 'train', '--config', 'my recipe.py',
                                    '--workdir', 'gs://b/run', '--config.train.batch_size=8'])
  assert train._command_line() == ("jaxseg train --config 'my recipe.py' --workdir gs://b/run "
                                   '--config.train.batch_size=8')
  monkeypatch.setattr(sys, 'argv', [str(ROOT / 'jaxseg' / 'cli.py'), 'train', '--workdir', 'w'])
  assert train._command_line() == 'python -m jaxseg.cli train --workdir w'


TWO_PROCESSES = textwrap.dedent('''
    import os, signal, sys, time
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
    sys.path.insert(0, {root!r})
    import jax
    from jaxseg import launch, train
    launch.initialize_from_environment()
    with train._Preemption() as preemption:
      for step in range(1, 5000):
        time.sleep(0.01)
        if jax.process_index() == 1 and step == 20:
          os.kill(os.getpid(), signal.SIGTERM)  # A notice to one host only.
        if preemption.reached(step):
          print('STOP AT', step, flush=True)
          break
''')


def test_processes_agree_on_the_step_to_stop_at(tmp_path):
  """Multi-host: JAX's preemption service, not a local flag: both processes stop at one step."""
  import test_parallel  # pylint: disable=g-import-not-at-top
  script = tmp_path / 'two.py'
  script.write_text(TWO_PROCESSES.format(root=str(ROOT)))
  codes, logs = test_parallel.wait_for(test_parallel.start_processes(script, [], tmp_path),
                                       timeout=300)
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  stops = [[line for line in log.splitlines() if line.startswith('STOP AT')] for log in logs]
  print(stops)
  assert stops[0] == stops[1] and len(stops[0]) == 1, logs[0][-3000:] + logs[1][-3000:]
  assert int(stops[0][0].split()[-1]) > 20
