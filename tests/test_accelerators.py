"""Start-up settings: XLA_FLAGS defaults, the compilation cache, NO_GCE_CHECK, the report."""
import logging
import os
import subprocess
import sys

import pytest

from jaxseg import accelerators

LHS = '--xla_gpu_enable_latency_hiding_scheduler=true'
COMBINE = f'--xla_gpu_all_reduce_combine_threshold_bytes={128 * 2**20}'


def spec_of(*installed):
  return lambda name: object() if name in installed else None


# ---------------------------------------------------------------- XLA flags
def test_gpu_will_be_used():
  no_plugin, cuda12 = spec_of(), spec_of('jax_cuda12_plugin')
  assert accelerators.gpu_will_be_used({}, no_plugin) is False
  assert accelerators.gpu_will_be_used({}, cuda12) is True
  assert accelerators.gpu_will_be_used({}, spec_of('jax_cuda13_plugin')) is True
  assert accelerators.gpu_will_be_used({'JAX_PLATFORMS': 'cpu'}, cuda12) is False
  assert accelerators.gpu_will_be_used({'JAX_PLATFORMS': 'cuda,cpu'}, no_plugin) is True
  assert accelerators.gpu_will_be_used({'JAX_PLATFORMS': 'tpu'}, cuda12) is False


def test_configure_xla_adds_defaults_after_the_users_flags():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  assert accelerators.configure_xla(env, gpu=True) == [LHS, COMBINE]
  assert env['XLA_FLAGS'] == f'--xla_force_host_platform_device_count=8 {LHS} {COMBINE}'
  assert accelerators.configure_xla(env, gpu=True) == []  # Already there: unchanged.
  assert env['XLA_FLAGS'] == f'--xla_force_host_platform_device_count=8 {LHS} {COMBINE}'
  env = {}
  assert accelerators.configure_xla(env, gpu=True) == [LHS, COMBINE]
  assert env['XLA_FLAGS'] == f'{LHS} {COMBINE}'


def test_configure_xla_user_flag_wins():
  env = {'XLA_FLAGS': '--xla_gpu_all_reduce_combine_threshold_bytes=1048576'}
  assert accelerators.configure_xla(env, gpu=True) == [LHS]
  assert env['XLA_FLAGS'] == f'--xla_gpu_all_reduce_combine_threshold_bytes=1048576 {LHS}'
  env = {'XLA_FLAGS': '--xla_gpu_enable_latency_hiding_scheduler=false'}
  accelerators.configure_xla(env, gpu=True)
  assert env['XLA_FLAGS'] == f'--xla_gpu_enable_latency_hiding_scheduler=false {COMBINE}'


@pytest.mark.parametrize('env', [
    {'JAXSEG_XLA_DEFAULTS': '0'}, {'JAXSEG_XLA_DEFAULTS': 'off'}, {'JAXSEG_XLA_DEFAULTS': 'False'}])
def test_configure_xla_off_switch(env):
  env = dict(env, XLA_FLAGS='--xla_cpu_foo')
  assert accelerators.configure_xla(env, gpu=True) == []
  assert accelerators.configure_xla(env, gpu=False) == []
  assert env['XLA_FLAGS'] == '--xla_cpu_foo'


def test_configure_xla_cpu_keeps_remat_barriers():
  cse = '--xla_disable_hlo_passes=cse_barrier_expander'
  env = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_cpu_foo'}
  assert accelerators.configure_xla(env) == [cse]  # Not the GPU defaults.
  assert env['XLA_FLAGS'] == f'--xla_cpu_foo {cse}'
  env = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_disable_hlo_passes=foo'}
  assert accelerators.configure_xla(env) == []  # The user's list of disabled passes wins.


def test_default_flags_exist_in_this_jaxlib(tmp_path):
  """XLA aborts on an unknown XLA_FLAGS entry: the defaults must parse (and a bogus one not)."""
  code = 'import jax; print(jax.devices()[0].platform)'

  def run(flags):
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
    return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)

  for defaults in (accelerators.XLA_GPU_DEFAULTS, accelerators.XLA_CPU_DEFAULTS):
    ok = run(accelerators.merge_xla_flags('', defaults)[0])
    assert ok.returncode == 0 and ok.stdout.strip() == 'cpu', ok.stderr[-2000:]
  bad = run('--xla_gpu_no_such_flag_for_jaxseg=1')
  assert bad.returncode != 0 and 'Unknown flag' in bad.stderr


# ---------------------------------------------------------------- compilation cache
def test_compilation_cache_dir(tmp_path):
  home = str(tmp_path)
  assert accelerators.compilation_cache_dir({}, home) == f'{home}/.cache/jaxseg/xla'
  assert accelerators.compilation_cache_dir({'XDG_CACHE_HOME': '/c'}, home) == '/c/jaxseg/xla'
  assert accelerators.compilation_cache_dir({'JAXSEG_COMPILATION_CACHE': '/x/y'}, home) == '/x/y'
  assert accelerators.compilation_cache_dir(
      {'JAXSEG_COMPILATION_CACHE': '~/xla'}, home) == os.path.expanduser('~/xla')
  assert accelerators.compilation_cache_dir(
      {'JAXSEG_COMPILATION_CACHE': 'gs://b/xla'}, home) == 'gs://b/xla'
  for off in ('off', 'OFF', '0', 'false', 'none'):
    assert accelerators.compilation_cache_dir({'JAXSEG_COMPILATION_CACHE': off}, home) is None
  user = {'JAX_COMPILATION_CACHE_DIR': '/mine', 'JAXSEG_COMPILATION_CACHE': 'off'}
  assert accelerators.compilation_cache_dir(user, home) == '/mine'  # JAX's own setting wins.


def test_configure_compilation_cache(tmp_path):
  calls = []

  def update(name, value):
    calls.append((name, value))

  path = str(tmp_path / 'cache')
  env = {'JAXSEG_COMPILATION_CACHE': path}
  assert accelerators.configure_compilation_cache(env, update) == path
  assert calls == [('jax_compilation_cache_dir', path),
                   ('jax_persistent_cache_min_compile_time_secs', 2.0)]
  calls.clear()
  accelerators.configure_compilation_cache(
      {'JAXSEG_COMPILATION_CACHE': path, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '9'},
      update)
  assert calls == [('jax_compilation_cache_dir', path)]
  calls.clear()
  assert accelerators.configure_compilation_cache({'JAXSEG_COMPILATION_CACHE': 'off'},
                                                  update) is None
  assert accelerators.configure_compilation_cache({'JAX_COMPILATION_CACHE_DIR': '/mine'},
                                                  update) == '/mine'
  assert calls == []  # JAX reads JAX_COMPILATION_CACHE_DIR itself; nothing to set.


def test_configure_compilation_cache_names_real_jax_options():
  import jax  # pylint: disable=g-import-not-at-top
  for name in ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs'):
    assert hasattr(jax.config, name), name


# ---------------------------------------------------------------- NO_GCE_CHECK
@pytest.mark.parametrize('product, expected', [
    ('Google Compute Engine\n', None), ('Google\n', None),
    ('Standard PC (Q35 + ICH9, 2009)\n', 'true'), ('PowerEdge R750xa\n', 'true'), (None, 'true')])
def test_no_gce_check_default(tmp_path, product, expected):
  dmi = tmp_path / 'product_name'
  if product is not None:
    dmi.write_text(product)
  env = {}
  assert accelerators.set_no_gce_check_default(env, str(dmi)) == expected
  assert env.get('NO_GCE_CHECK') == expected
  assert accelerators.is_gce(str(dmi)) is (expected is None)


def test_no_gce_check_user_setting_is_kept(tmp_path):
  off_gce, on_gce = tmp_path / 'pc', tmp_path / 'gce'
  off_gce.write_text('Standard PC\n')
  on_gce.write_text('Google Compute Engine\n')
  for dmi in (off_gce, on_gce):
    for value in ('false', 'true'):
      env = {'NO_GCE_CHECK': value}
      assert accelerators.set_no_gce_check_default(env, str(dmi)) == value
      assert env == {'NO_GCE_CHECK': value}


def test_prepare_process_on_cpu():
  env = {'NO_GCE_CHECK': 'true', 'JAX_PLATFORMS': 'cpu', 'JAXSEG_COMPILATION_CACHE': 'off'}
  assert accelerators.prepare_process(env) == {
      'no_gce_check': 'true', 'compilation_cache': None,
      'xla_flags_added': ['--xla_disable_hlo_passes=cse_barrier_expander']}
  assert env['XLA_FLAGS'] == '--xla_disable_hlo_passes=cse_barrier_expander'


# ---------------------------------------------------------------- after start-up
def test_warn_if_cpu_for_accelerator_recipe(caplog):
  with caplog.at_level(logging.WARNING, logger='jaxseg.accelerators'):
    assert accelerators.warn_if_cpu_for_accelerator_recipe('float32', 'cpu') is False
    assert accelerators.warn_if_cpu_for_accelerator_recipe('bfloat16', 'gpu') is False
    assert accelerators.warn_if_cpu_for_accelerator_recipe('bfloat16', 'tpu') is False
    assert not caplog.records
    assert accelerators.warn_if_cpu_for_accelerator_recipe('bfloat16', 'cpu') is True
  assert caplog.records[0].levelno == logging.WARNING
  assert "config.model.dtype='bfloat16'" in caplog.text and 'CPU' in caplog.text


def test_startup_report(caplog):
  with caplog.at_level(logging.WARNING, logger='jaxseg.accelerators'):
    report = accelerators.startup_report('bfloat16')
  lines = report.splitlines()
  assert lines[0].startswith('backend: cpu (')
  assert 'devices: 8 in all, 8 local' in lines  # tests/conftest.py: 8 simulated CPU devices.
  assert 'process: 0 of 1' in lines
  assert 'local devices: ' + ', '.join(f'cpu:{i}' for i in range(8)) in lines
  assert 'bfloat16' in caplog.text  # This test session runs on the CPU.
