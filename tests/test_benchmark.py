"""Tests of `jaxseg benchmark` (smoke runs on the CPU, no timing checks), its device handling
(peaks, MFU, the parent that leaves JAX to the workers, the platform check) and its PyTorch twins
of the models."""
import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxseg import benchmark, cli
from jaxseg.benchmark import torch_models
from jaxseg.models import MODEL_NAMES, create_model

TINY = 1 / 16


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_torch_twin_has_the_same_parameters_and_output_shape(name):
  size = (224, 256) if name == 'deconvnet' else (40, 56)
  model = create_model(name, 5, width=TINY)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *size, 3)), train=False))
  flax_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))
  twin = torch_models.create_torch_model(name, 5, TINY)
  assert sum(p.numel() for p in twin.parameters()) == flax_count
  with torch.inference_mode():
    out = twin.eval()(torch.zeros(1, 3, *size))
  assert tuple(out.shape) == (1, 5, *size)
  train_out = twin.train()(torch.zeros(2, 3, *size))
  assert isinstance(train_out, tuple) == name.startswith('pspnet')


def test_torch_twin_unknown_model():
  with pytest.raises(ValueError, match='Unknown model .*fcn8s'):
    torch_models.create_torch_model('unet', 5)


def test_cli_model_train_smoke(tmp_path, capsys):
  out = tmp_path / 'bench.json'
  rc = cli.main(['benchmark', '--model', 'fcn32s', '--mode', 'train', '--width', str(TINY),
                 '--size', '48', '48', '--steps', '2', '--warmup', '1', '--peak-size', '256',
                 '--json', str(out)])
  assert rc == 0
  header, table = capsys.readouterr().out.split('\n', 1)
  assert header.startswith('jaxseg on cpu (cpu, 1 of 1 devices used)') and 'torch on cpu' in header
  assert '| MFU |' in table and '| fcn32s b2 48x48 float32 w0.0625 | train |' in table
  record = json.loads(out.read_text())['records'][0]
  assert record['flops'] > 0 and record['peak_flops_per_s'] > 0
  for framework in ('jax', 'torch'):
    result = record[framework]
    assert result['device'] == 'cpu'
    assert len(result['step_s_all']) == 2 and result['step_s'] > 0
    assert result['peak_rss'] > 0
    assert result['mfu'] == pytest.approx(
        record['flops'] / np.median(result['step_s_all']) / record['peak_flops_per_s'])
  assert record['torch']['flops_counted'] > 0
  assert record['speedup_vs_torch'] == pytest.approx(
      record['torch']['step_s'] / record['jax']['step_s'])


def test_parent_leaves_jax_to_the_worker():
  # The parent in a process of its own (this one has initialised JAX, with 8 CPU devices).
  script = textwrap.dedent('''
      import json, sys
      from jax._src import xla_bridge
      from jaxseg import benchmark
      spec = benchmark.Spec(op='max_unpool', mode='train', batch=1, size=(16, 24), width=1 / 16)
      record = benchmark.run_spec(spec, steps=1, warmup=0, measure_peak=False)
      print(json.dumps(dict(record=record, table=benchmark.format_table([record]),
                            backends=list(xla_bridge._backends))))
  ''')
  done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        check=True, timeout=600)
  out = json.loads(done.stdout.splitlines()[-1])
  assert out['backends'] == []  # No JAX backend in the parent: no device taken from the workers.
  record = out['record']
  # The worker's devices: one (the benchmark drops the tests' 8 forced host devices).
  assert jax.device_count() > 1
  assert record['device'] == dict(platform='cpu', device_kind='cpu', device_count=1,
                                  jax=jax.__version__)
  assert record['jax']['step_s'] > 0 and record['torch']['step_s'] > 0
  assert record['torch']['device'] == 'cpu'
  assert record['peak_flops_per_s'] is None  # No CPU peak asked, no published one.
  assert record['jax']['mfu'] is None and record['torch']['mfu'] is None
  assert out['table'].splitlines()[-1].count('| n/a |') == 2


def test_bfloat16_op_smoke_measures_the_peak_in_its_dtype():
  spec = benchmark.Spec(op='max_pool', mode='train', batch=1, size=(16, 24), width=TINY,
                        dtype='bfloat16')
  record = benchmark.run_spec(spec, steps=1, warmup=0, peak_size=128)
  assert record['peak_source'].startswith('measured bfloat16 128^2 matmul')
  assert set(record['matmul_flops_per_s']) == {'jax', 'torch'}
  assert record['jax']['step_s'] > 0 and record['torch']['step_s'] > 0


def test_worker_errors_surface_as_value_errors():
  # DeconvNet's valid 7x7 fc6 needs inputs >= 193: the model's own message comes back.
  spec = benchmark.Spec(model='deconvnet', batch=1, size=(64, 64), width=TINY)
  with pytest.raises(ValueError, match='DeconvNet needs input height and width >= 193'):
    benchmark.run_spec(spec, steps=1, warmup=0, with_torch=False, measure_peak=False)


SMALL_OP = benchmark.Spec(op='max_pool', batch=1, size=(8, 8), width=TINY)
# The platform checks ask for accelerators this machine must not have.
CPU_ONLY = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='needs a CPU-only machine')


@CPU_ONLY
def test_asking_for_a_gpu_on_a_cpu_machine_fails_naming_it():
  # JAX_PLATFORMS=cuda without a GPU: JAX raises (this machine has none).
  with pytest.raises(benchmark.PlatformError, match='platform gpu .*JAX_PLATFORMS=cuda'):
    benchmark.run_spec(SMALL_OP, steps=1, warmup=0, platform='gpu')


@CPU_ONLY
def test_falling_back_to_the_cpu_is_an_error(monkeypatch):
  # With a CPU fallback listed, JAX runs on the CPU quietly: the benchmark must not.
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda,cpu')
  with pytest.raises(benchmark.PlatformError, match=r'asked for gpu .*runs on cpu'):
    benchmark.run_spec(SMALL_OP, steps=1, warmup=0)


@CPU_ONLY
def test_cli_platform_error_is_one_line(capsys):
  rc = cli.main(['benchmark', '--op', 'max_pool', '--size', '8', '8', '--platform', 'tpu'])
  err = capsys.readouterr().err
  assert rc == 1 and 'jaxseg benchmark: error: JAX could not initialise platform tpu' in err
  assert 'Traceback' not in err


@pytest.mark.parametrize('jax_platforms, reported, ok', [
    ('', 'cpu', True), ('cpu', 'cpu', True), ('cuda', 'gpu', True), ('gpu', 'gpu', True),
    ('tpu', 'tpu', True), ('cuda,cpu', 'gpu', True),
    ('cuda', 'cpu', False), ('cuda,cpu', 'cpu', False), ('rocm', 'cpu', False),
    ('tpu,cpu', 'cpu', False), ('tpu', 'gpu', False),
])
def test_check_platform(jax_platforms, reported, ok):
  if ok:
    benchmark.check_platform(jax_platforms, reported, 'some device')
  else:
    with pytest.raises(benchmark.PlatformError, match=f'runs on {reported} '):
      benchmark.check_platform(jax_platforms, reported, 'some device')


def test_worker_env_shares_the_gpu_and_sets_the_platform(monkeypatch):
  monkeypatch.delenv('XLA_PYTHON_CLIENT_PREALLOCATE', raising=False)
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  env = benchmark.worker_env('gpu')
  assert env['XLA_PYTHON_CLIENT_PREALLOCATE'] == 'false' and env['JAX_PLATFORMS'] == 'cuda'
  assert 'xla_force_host_platform_device_count' not in env['XLA_FLAGS']
  assert benchmark.worker_env()['JAX_PLATFORMS'] == 'cpu'  # The user's choice without --platform.
  monkeypatch.setenv('XLA_PYTHON_CLIENT_PREALLOCATE', 'true')
  assert benchmark.worker_env('tpu')['XLA_PYTHON_CLIENT_PREALLOCATE'] == 'true'


# Device kinds as JAX reports them; dense TFLOP/s from the vendors' datasheets (float32 on
# NVIDIA = TF32; on TPU = the bfloat16 rate, one MXU pass under the default precision).
@pytest.mark.parametrize('kind, float32, bfloat16', [
    ('NVIDIA H100 80GB HBM3', 494.7, 989.4),
    ('NVIDIA H200', 494.7, 989.4),
    ('NVIDIA A100-SXM4-80GB', 156, 312),
    ('NVIDIA A100-SXM4-40GB', 156, 312),
    ('NVIDIA H100 PCIe', 378, 756),
    ('NVIDIA L4', 60, 121),
    ('TPU v4', 275, 275),
    ('TPU v5 lite', 197, 197),
    ('TPU v5p', 459, 459),
    ('TPU v5', 459, 459),
    ('TPU v6 lite', 918, 918),
    # Unknown: no guess (NVL parts and GH200 have their own datasheet columns; L40S is not L4).
    ('NVIDIA H100 NVL', None, None),
    ('NVIDIA H200 NVL', None, None),
    ('NVIDIA GH200 480GB', None, None),
    ('NVIDIA L40S', None, None),
    ('TPU v4 lite', None, None),
    ('cpu', None, None),
])
def test_published_peaks(kind, float32, bfloat16):
  for dtype, tflops in (('float32', float32), ('bfloat16', bfloat16)):
    peak = benchmark.published_peak(kind, dtype)
    assert peak == (pytest.approx(tflops * 1e12) if tflops else None), (kind, dtype)


def test_mfu():
  # 2 TFLOP per step in 10 ms on an H100 SXM in bfloat16: 200 TFLOP/s of 989.4.
  peak = benchmark.published_peak('NVIDIA H100 80GB HBM3', 'bfloat16')
  assert benchmark.mfu(2e12, 0.010, peak) == pytest.approx(200 / 989.4)
  assert benchmark.mfu(2e12, 0.010, None) is None  # Unknown peak: n/a, not a guess.
  assert benchmark.mfu(0.0, 0.010, peak) is None
  record = dict(model='fcn8s', op='', mode='train', batch=2, size=(320, 320), dtype='bfloat16',
                flops=2e12, jax=dict(step_s=0.01, images_per_s=200.0, compile_s=1.0,
                                     flops_per_s=2e14, mfu=benchmark.mfu(2e12, 0.01, peak),
                                     device_peak_bytes=2**30, peak_rss=0))
  assert '| 2000.0 | 200000 | 20% | 1.00 | - |' in benchmark.format_table([record])


@pytest.mark.parametrize('kwargs, match', [
    (dict(model='unet'), 'unknown --model .*pspnet50'),
    (dict(op='conv'), 'unknown --op .*max_unpool'),
    (dict(model='fcn8s', mode='eval'), '--mode must be one of'),
    (dict(model='fcn8s', dtype='float16'), '--dtype must be one of'),
    (dict(model='fcn8s', size=(0, 32)), '--size H W must be positive'),
    (dict(model='fcn8s', width=0.0), '--width must be > 0'),
    (dict(model='fcn8s', threads=10_000), '--threads must be between'),
    (dict(model='fcn8s', op='max_unpool'), 'exactly one of --model or --op'),
    (dict(model='fcn8s', conv_impl='eigen'), "--conv-impl must be 'auto' or 'lax'"),
])
def test_validate_rejects_bad_configs(kwargs, match):
  with pytest.raises(ValueError, match=match):
    benchmark.validate(benchmark.Spec(**kwargs))


def test_cli_bad_input_is_a_usage_error(tmp_path, capsys):
  rc = cli.main(['benchmark', '--model', 'unet'])
  assert rc == 2 and 'unknown --model' in capsys.readouterr().err
  rc = cli.main(['benchmark', '--model', 'fcn8s', '--json', str(tmp_path / 'nope' / 'b.json')])
  assert rc == 2 and 'does not exist' in capsys.readouterr().err


def test_command_module_imports_no_framework():
  # `python -m jaxseg.benchmark.command` and the CLI parent load neither JAX nor torch to start.
  done = subprocess.run(
      [sys.executable, '-c', 'import sys, jaxseg.benchmark.command; '
       'print(sorted(m for m in ("jax", "torch", "flax") if m in sys.modules))'],
      capture_output=True, text=True, check=True, timeout=120)
  assert done.stdout.strip() == '[]'
