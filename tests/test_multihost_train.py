"""train_and_evaluate as two processes on loopback: process 0 prepares the dataset while the
other waits, both agree on the step to resume from, and a bad setting fails both at once."""
import json
import pathlib
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests'))
import test_parallel  # noqa: E402  pylint: disable=g-import-not-at-top

WORKER = textwrap.dedent('''
    import os, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
    os.environ['JAX_PLATFORMS'] = 'cpu'
    import torchvision  # Before tensorflow.
    sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
    import logging; logging.basicConfig(level=logging.INFO)
    import test_train as t
    from jaxseg import train
    config = t.tiny_config(sys.argv[2], num_steps=int(sys.argv[3]), checkpoint_every=2,
                           eval_every=int(sys.argv[5]), log_every=2)
    config.eval.batch_size = int(sys.argv[4])
    final = train.train_and_evaluate(config, sys.argv[1])
    print('FINAL', final['step'])
''')


def _launch(tmp_path, workdir, data_dir, num_steps, eval_batch=8, eval_every=-1):
  script = tmp_path / 'worker.py'
  script.write_text(WORKER.format(tests=str(ROOT / 'tests'), root=str(ROOT)))
  return test_parallel.wait_for(test_parallel.start_processes(
      script, [workdir, data_dir, num_steps, eval_batch, eval_every], tmp_path))


def test_two_processes_prepare_once_train_and_resume(tmp_path):
  data_dir, workdir = tmp_path / 'tfds', tmp_path / 'run'
  codes, logs = _launch(tmp_path, workdir, data_dir, num_steps=2)
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  assert all('FINAL 2' in log for log in logs)
  assert list(data_dir.glob('synthetic_shapes/tiny/*/dataset_info.json'))  # Prepared once, shared.
  assert not list(data_dir.rglob('*.incomplete*'))

  codes, logs = _launch(tmp_path, workdir, data_dir, num_steps=4)  # Resumes from step 2.
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  for log in logs:
    assert 'Resumed from step 2' in log and 'FINAL 4' in log, log[-3000:]
  steps = [json.loads(l)['step'] for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert steps == [2, 4]

  # A bad eval setting fails on both processes before any collective: none hangs.
  codes, logs = _launch(tmp_path, tmp_path / 'other', data_dir, num_steps=2, eval_batch=12,
                        eval_every=0)
  assert codes[0] != 0 and codes[1] != 0, codes
  for log in logs:
    assert 'config.eval.batch_size=12 must be a positive multiple' in log, log[-3000:]


def test_processes_resume_from_the_step_process_0_sees(monkeypatch):
  """On shared/object storage one process may list a save the others do not see yet."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from jaxseg import train  # pylint: disable=g-import-not-at-top
  seen_by_process_0 = 4
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'broadcast_one_to_all',
                      lambda x: seen_by_process_0 if x is not None else None)
  assert train._agreed(6) == 4  # This process saw step 6; process 0 only 4: resume from 4.
  seen_by_process_0 = -1  # Process 0 sees no checkpoint: start fresh everywhere.
  assert train._agreed(6) is None
