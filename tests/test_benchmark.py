"""Smoke tests of `jaxseg benchmark` and of its PyTorch twins of the models (no timing checks)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxseg import benchmark, cli
from jaxseg import torch_reference
from jaxseg.models import MODEL_NAMES, create_model

TINY = 1 / 16


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_torch_twin_has_the_same_parameters_and_output_shape(name):
  size = (224, 256) if name == 'deconvnet' else (40, 56)
  model = create_model(name, 5, width=TINY)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *size, 3)), train=False))
  flax_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))
  twin = torch_reference.create_torch_model(name, 5, TINY)
  assert sum(p.numel() for p in twin.parameters()) == flax_count
  with torch.inference_mode():
    out = twin.eval()(torch.zeros(1, 3, *size))
  assert tuple(out.shape) == (1, 5, *size)
  train_out = twin.train()(torch.zeros(2, 3, *size))
  assert isinstance(train_out, tuple) == name.startswith('pspnet')


def test_torch_twin_unknown_model():
  with pytest.raises(ValueError, match='Unknown model .*fcn8s'):
    torch_reference.create_torch_model('unet', 5)


def test_cli_model_train_smoke(tmp_path, capsys):
  out = tmp_path / 'bench.json'
  rc = cli.main(['benchmark', '--model', 'fcn32s', '--mode', 'train', '--width', str(TINY),
                 '--size', '48', '48', '--steps', '2', '--warmup', '1', '--peak-size', '256',
                 '--json', str(out)])
  assert rc == 0
  table = capsys.readouterr().out
  assert '| fcn32s b2 48x48 float32 w0.0625 | train |' in table
  record = json.loads(out.read_text())['records'][0]
  assert record['flops'] > 0 and record['peak_flops_per_s'] > 0
  for framework in ('jax', 'torch'):
    result = record[framework]
    assert len(result['step_s_all']) == 2 and result['step_s'] > 0
    assert result['peak_rss'] > 0 and 0 < result['fraction_of_peak']
  assert record['torch']['flops_counted'] > 0
  assert record['speedup_vs_torch'] == pytest.approx(
      record['torch']['step_s'] / record['jax']['step_s'])


def test_op_train_smoke():
  spec = benchmark.Spec(op='max_unpool', mode='train', batch=1, size=(16, 24), width=TINY)
  record = benchmark.run_spec(spec, steps=1, warmup=0, measure_peak=False)
  assert record['jax']['step_s'] > 0 and record['torch']['step_s'] > 0
  assert record['peak_flops_per_s'] is None  # No CPU peak asked, no published one.


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


def test_published_peaks():
  assert benchmark.published_peak('NVIDIA H100 80GB HBM3', 'bfloat16') == 989e12
  assert benchmark.published_peak('NVIDIA H100 PCIe', 'float32') == 51e12
  assert benchmark.published_peak('TPU v5 lite', 'bfloat16') == 197e12
  assert benchmark.published_peak('TPU v4', 'float32') is None
  assert benchmark.published_peak('cpu', 'float32') is None
