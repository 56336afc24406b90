"""`jaxseg doctor`: the reduced form end to end on the CPU, and checks that can fail do fail."""
import argparse
import json

import jax
import numpy as np
import pytest

from jaxseg import checkpoint, ops
from jaxseg.doctor import command, environment, forms, parity

QUICK_CHECKS = ['environment', 'op_parity', 'train_step_b2', 'train_loop', 'checkpoint',
                'multiscale_eval']


def _run(tmp_path, *flags):
  path = tmp_path / 'doctor.json'
  code = command.main(['--quick', '--json', str(path), *flags])
  report = json.loads(path.read_text())
  return code, report, {r['name']: r for r in report['records']}


def test_quick_form_runs_every_check_and_passes(tmp_path, capsys):
  code, report, records = _run(tmp_path)
  out = capsys.readouterr().out
  failed = {n: r['message'] for n, r in records.items() if not r['ok']}
  assert code == 0, failed
  assert list(records) == QUICK_CHECKS and report['ok'] and report['form'] == 'quick'
  for name in QUICK_CHECKS:
    assert records[name]['seconds'] > 0 and records[name]['message']
    assert f'] {name}: ok' in out
  assert '6 of 6 checks passed' in out

  assert records['environment']['details']['backend'] == 'cpu'
  worst = records['op_parity']['details']['worst_error']
  assert 0 < worst['float32'] <= parity.TOLERANCE['float32']
  assert 0 < worst['bfloat16'] <= parity.TOLERANCE['bfloat16']
  step = records['train_step_b2']['details']
  assert step['batch'] == 2 and step['step_s'] > 0 and np.isfinite(step['loss'])
  assert step['flops_per_step'] > 1e8 and step['mfu'] is None  # No published CPU peak.
  assert step['program_bytes']['total'] > step['program_bytes']['temp'] > 0
  loop = records['train_loop']['details']
  assert loop['batch'] == jax.device_count() and loop['devices'] == jax.device_count()
  assert loop['ratio'] > 0 and len(loop['loop_intervals_images_per_sec']) == 2
  assert records['checkpoint']['details']['leaves'] > 100
  assert records['checkpoint']['details']['problems'] == []
  evaluation = records['multiscale_eval']['details']
  assert evaluation['compile_s'] > 0 and evaluation['memory_bytes']['total'] > 0


def test_a_check_that_raises_fails_alone_and_exits_1(tmp_path, monkeypatch):
  def broken(ctx):
    raise RuntimeError('the environment is on fire\nsecond line')
  monkeypatch.setattr(environment, 'check_environment', broken)
  code, report, records = _run(tmp_path, '--only', 'environment,checkpoint')
  assert code == 1 and not report['ok']
  assert list(records) == ['environment', 'checkpoint']
  env = records['environment']
  assert not env['ok'] and env['message'] == 'RuntimeError: the environment is on fire'
  assert 'second line' in env['details']['error'] and 'broken' in env['details']['traceback']
  assert records['checkpoint']['ok']  # The failure did not stop the next check.


def test_parity_catches_an_op_off_by_1e_3(tmp_path, monkeypatch):
  original = ops.atrous_conv
  monkeypatch.setattr(ops, 'atrous_conv', lambda *a, **k: original(*a, **k) + 1e-3)
  # Two atrous cases and the max pool: the pool must still pass (cases are compared apart).
  monkeypatch.setattr(parity, 'CASES', parity.CASES[:2] + parity.CASES[3:4])
  code, _, records = _run(tmp_path, '--only', 'op_parity')
  assert code == 1 and not records['op_parity']['ok']
  assert 'atrous_conv' in records['op_parity']['message']
  cases = records['op_parity']['details']['cases']
  for name, outputs in cases.items():
    if name.startswith('atrous_conv') and name.endswith('[float32]'):
      assert not outputs['out']['ok'] and outputs['out']['error'] > 1e-4
      assert outputs['d_x']['ok']  # A constant shift leaves the gradients alone.
    elif not name.startswith('atrous_conv'):
      assert all(o['ok'] for o in outputs.values()), name


def test_compare_exact_outputs_need_every_bit():
  ref = {'switches': np.array([0, 5, 9]), 'out': np.array([1.0, 2.0, 4.0], np.float32)}
  same = parity.compare(ref, ref, frozenset({'switches'}), 1e-5)
  assert all(r['ok'] for r in same.values())
  off = parity.compare({'switches': np.array([0, 5, 8]),
                        'out': np.array([1.0, 2.0, 4.0001], np.float32)}, ref,
                       frozenset({'switches'}), 1e-5)
  assert not off['switches']['ok'] and off['switches']['differing'] == 1
  assert not off['out']['ok'] and off['out']['error'] == pytest.approx(2.5e-5, rel=1e-2)


def test_checkpoint_check_sees_a_flipped_bit(tmp_path, monkeypatch):
  restore = checkpoint.Checkpointer.restore

  def corrupt(self, step, target):
    state = restore(self, step, target)
    kernel = np.array(state.params['cls']['classifier']['kernel'])
    kernel.view(np.uint32).flat[3] ^= 1
    params = jax.tree.map(lambda x: x, state.params)
    params['cls']['classifier']['kernel'] = jax.device_put(
        kernel, state.params['cls']['classifier']['kernel'].sharding)
    return state.replace(params=params)
  monkeypatch.setattr(checkpoint.Checkpointer, 'restore', corrupt)
  code, _, records = _run(tmp_path, '--only', 'checkpoint')
  assert code == 1
  problems = records['checkpoint']['details']['problems']
  assert len(problems) == 1 and 'classifier' in problems[0] and '1 bytes differ' in problems[0]


@pytest.mark.parametrize('backend,platforms,plugins,gpus,problem', [
    ('cpu', '', {}, 0, None),
    ('cpu', 'cpu', {'jax-cuda12-plugin': ('0.10.2', 'gpu')}, 8, None),  # The CPU on request.
    ('cpu', '', {'jax-cuda12-plugin': ('0.10.2', 'gpu')}, 8, 'fell back to the CPU'),
    ('cpu', '', {'libtpu': ('0.0.30', 'tpu')}, 0, 'JAX_PLATFORMS=tpu'),
    ('cpu', '', {}, 4, 'no JAX CUDA plugin'),
    ('cpu', 'cuda,cpu', {}, 1, 'asks for gpu'),
    ('gpu', '', {'jax-cuda12-plugin': ('0.10.2', 'gpu')}, 1, None),
])
def test_platform_problems(backend, platforms, plugins, gpus, problem):
  problems = environment.platform_problems(backend, platforms, plugins, gpus)
  if problem is None:
    assert problems == []
  else:
    assert len(problems) == 1 and problem in problems[0]


def test_bad_flags_exit_2(tmp_path):
  with pytest.raises(SystemExit) as raised:
    command.main(['--quick', '--only', 'train_step_b8'])  # A full-form check.
  assert raised.value.code == 2
  with pytest.raises(SystemExit) as raised:
    command.main(['--quick', '--json', str(tmp_path / 'missing' / 'out.json')])
  assert raised.value.code == 2


def test_full_form_configs_build_and_the_loop_is_the_batch_8_step():
  """The full form's loop check reuses the batch-8 step (and, on a GPU, its compiled program):
  that needs the two configs to be the same."""
  step = forms.step_config(forms.FULL, 8, '/data')
  assert (step.model.name, step.model.dtype, tuple(step.data.crop_size)) == (
      'pspnet50', 'bfloat16', (473, 473))
  assert forms.loop_config(forms.FULL, '/data', 1).to_json() == step.to_json()
  assert forms.loop_config(forms.FULL, '/data', 3).train.batch_size == 9
  assert forms.step_model(forms.FULL, step).stage_sizes is None
  assert forms.step_config(forms.FULL, 2).train.batch_size == 2


def test_register_adds_the_subcommand():
  parser = argparse.ArgumentParser()
  command.register(parser.add_subparsers(dest='command'))
  args = parser.parse_args(['doctor', '--quick', '--only', 'environment'])
  assert args.func is command.cmd_doctor and args.quick and args.only == 'environment'
