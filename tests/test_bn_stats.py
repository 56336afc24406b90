"""`jaxseg bn-stats` (jaxseg/bn_stats.py): BatchNorm population statistics after training.

The statistics are checked against a NumPy float64 forward pass of a two-BatchNorm network
written here; the command end to end on a width-1/16 DeconvNet workdir (eval on its output,
params bitwise unchanged, the source workdir's files untouched) and its refusals.

The workdirs are written with the trainer's own parts (the state structure of create_train_state,
Checkpointer.save, write_workdir_config) holding random parameters as checkpoint 0, not trained:
one DeconvNet train step (and even its jitted init) compiles for a minute on two CPU cores, and
bn-stats reads nothing a step would add.
"""
import hashlib
import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import bn_stats, checkpoint, cli, optim, parallel, train

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_train import tiny_config  # noqa: E402  pylint: disable=g-import-not-at-top

EPS = 1e-5


# ---------------------------------------------------------------- against NumPy
class TwoBN(nn.Module):
  """1x1 conv -> BN -> ReLU -> dropout -> 2x2 average pool -> 1x1 conv -> BN -> ReLU -> 1x1."""
  sync_bn_axis: str | None = None
  dropout_rate: float = 0.5  # Must be switched off: the reference has none.

  @nn.compact
  def __call__(self, x, train: bool = False):
    def bn(name):
      return nn.BatchNorm(use_running_average=not train, axis_name=self.sync_bn_axis,
                          momentum=0.9, epsilon=EPS, name=name)
    h = nn.relu(bn('bn1')(nn.Dense(4, name='conv1')(x)))
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    h = nn.avg_pool(h, (2, 2), (2, 2))
    h = nn.relu(bn('bn2')(nn.Dense(5, name='conv2')(h)))
    return nn.Dense(3, name='score')(h)


def _numpy_batch_stats(params, images):
  """Per-layer (mean, biased var, elements per channel) of one batch, float64."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  out = {}

  def bn(name, h):
    mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
    out[name] = (mean, var, h.size // h.shape[-1])
    return (h - mean) / np.sqrt(var + EPS) * p[name]['scale'] + p[name]['bias']

  x = np.asarray(images, np.float64)
  h = np.maximum(bn('bn1', x @ p['conv1']['kernel'] + p['conv1']['bias']), 0)
  n, hh, ww, c = h.shape
  h = h.reshape(n, hh // 2, 2, ww // 2, 2, c).mean((2, 4))
  bn('bn2', h @ p['conv2']['kernel'] + p['conv2']['bias'])
  return out


def _reference(params, batches, devices, sync):
  """Averaged means and m/(m-1)-corrected averaged variances, per layer (NumPy)."""
  sums = {}
  for images in batches:
    groups = [images] if sync else np.split(images, devices)  # One device's rows each.
    for group in groups:
      for name, (mean, var, m) in _numpy_batch_stats(params, group).items():
        s = sums.setdefault(name, [0.0, 0.0, m])
        s[0], s[1] = s[0] + mean, s[1] + var
  count = len(batches) * (1 if sync else devices)
  return {name: (s[0] / count, s[1] / count * s[2] / (s[2] - 1)) for name, s in sums.items()}


@pytest.mark.parametrize('sync', [True, False])
def test_statistics_match_numpy_forward(sync):
  mesh = parallel.create_mesh()
  devices = mesh.size
  model = TwoBN(sync_bn_axis=parallel.DATA_AXIS if sync else None)
  rng = np.random.default_rng(0)
  shape = (2 * devices, 6, 8, 3)  # Two images per device.
  variables = model.clone(sync_bn_axis=None).init(jax.random.PRNGKey(1), jnp.zeros(shape))
  params = jax.tree.map(np.asarray, variables['params'])
  for name in ('bn1', 'bn2'):  # Non-trivial affine BN, so layer 2 depends on layer 1's.
    params[name]['scale'] = rng.uniform(0.5, 2.0, params[name]['scale'].shape).astype(np.float32)
    params[name]['bias'] = rng.normal(0, 1, params[name]['bias'].shape).astype(np.float32)
  old_stats = jax.tree.map(lambda a: np.full(a.shape, 7.0, np.float32), variables['batch_stats'])
  batches = [(rng.normal(0, 1, shape) * [1, 2, 3] + [0.5, -1, 2]).astype(np.float32)
             for _ in range(3)]
  variables = parallel.replicate({'params': params, 'batch_stats': old_stats}, mesh)
  global_batches = [{'image': parallel.shard_batch(b, mesh)} for b in batches]

  stats, elements = bn_stats.population_statistics(model, variables, iter(global_batches), mesh,
                                                   num_batches=3)

  expected = _reference(params, batches, devices, sync)
  per_batch = 1 if not sync else devices
  assert elements == {'bn1': 2 * per_batch * 48, 'bn2': 2 * per_batch * 12}
  for name, (mean, var) in expected.items():
    np.testing.assert_allclose(stats[name]['mean'], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[name]['var'], var, rtol=1e-5)
    assert stats[name]['mean'].dtype == np.float32


def test_fewer_batches_than_asked_and_one_value_per_channel_are_errors():
  mesh = parallel.create_mesh()
  model = TwoBN(sync_bn_axis=None)
  shape = (mesh.size, 2, 2, 3)  # One image per device: bn2 sees one value per channel.
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros(shape))
  batch = {'image': parallel.shard_batch(np.ones(shape, np.float32), mesh)}
  with pytest.raises(ValueError, match='bn2 sees 1 value per channel'):
    bn_stats.population_statistics(model, variables, iter([batch]), mesh, 1)
  model = TwoBN(sync_bn_axis=parallel.DATA_AXIS)
  with pytest.raises(ValueError, match='ended after 1 of 2'):
    bn_stats.population_statistics(model, variables, iter([batch]), mesh, 2)


# ---------------------------------------------------------------- the command
def _hashes(folder):
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def _variables(workdir, step):
  reader = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    return jax.tree.map(np.asarray, reader.restore_variables(step, parallel.create_mesh()))
  finally:
    reader.close()


def _make_workdir(config, workdir):
  """config.json and checkpoint 0 of a train state with random params; nothing is compiled."""
  mesh = parallel.create_mesh()
  model = train.build_model(config)
  tx, _ = optim.create_optimizer(config, train.backbone_prefixes(config))
  shapes = train.create_train_state(config, model, tx, mesh, abstract=True)
  rng = np.random.default_rng(7)

  def param(path, leaf):
    noise = rng.normal(0, 0.1, leaf.shape).astype(leaf.dtype)
    return noise + 1 if path[-1].key == 'scale' else noise

  def stat(path, leaf):
    return np.full(leaf.shape, 1.0 if path[-1].key == 'var' else 0.0, leaf.dtype)

  zeros = lambda leaf: np.zeros(leaf.shape, leaf.dtype)
  state = train.TrainState(
      step=zeros(shapes.step), params=jax.tree_util.tree_map_with_path(param, shapes.params),
      batch_stats=jax.tree_util.tree_map_with_path(stat, shapes.batch_stats),
      opt_state=jax.tree.map(zeros, shapes.opt_state), rng=zeros(shapes.rng))
  writer = checkpoint.Checkpointer(workdir, config.train.keep_checkpoints)
  writer.save(0, parallel.replicate(state, mesh), config)
  writer.wait()
  writer.close()
  checkpoint.write_workdir_config(workdir, config)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def deconvnet_run(tmp_path_factory, data_dir):
  """A width-1/16 DeconvNet workdir, and `jaxseg bn-stats` of it (2 batches)."""
  root = tmp_path_factory.mktemp('bn')
  source, out = root / 'work', root / 'out'
  config = tiny_config(data_dir)
  config.model.name = 'deconvnet'
  config.data.crop_size = config.data.eval_size = (193, 193)  # DeconvNet's smallest input.
  config.eval.num_examples = 8
  _make_workdir(config, source)
  before = _hashes(source)
  code = cli.main(['bn-stats', '--workdir', str(source), '--output', str(out), '--batches', '2',
                   '--checkpoint', 'latest'])
  return source, out, before, code


def test_cli_writes_a_workdir_that_evaluates(deconvnet_run, capsys):
  source, out, _, code = deconvnet_run
  assert code == 0
  record = json.loads((out / 'bn_stats.json').read_text())
  assert record['step'] == 0 and record['batches'] == 2 and record['batch_size'] == 8
  assert record['source_workdir'] == str(source) and record['sync_bn'] is True
  assert len(record['elements_per_channel']) == 29  # The script's 29 bn_layers.
  assert record['elements_per_channel']['backbone/bn1_1'] == 8 * 193 * 193
  assert json.loads((out / 'config.json').read_text()) == json.loads(
      (source / 'config.json').read_text())

  old, new = _variables(source, 0), _variables(out, 0)
  same = jax.tree.map(np.array_equal, old['params'], new['params'])
  assert all(jax.tree.leaves(same))  # Bitwise.
  assert jax.tree.structure(old['batch_stats']) == jax.tree.structure(new['batch_stats'])
  for leaf_old, leaf_new in zip(jax.tree.leaves(old['batch_stats']),
                                jax.tree.leaves(new['batch_stats'])):
    assert leaf_new.dtype == leaf_old.dtype and not np.allclose(leaf_new, leaf_old)
  assert all(np.all(v > 0) for v in jax.tree.leaves(new['batch_stats']['debn1_1']['var']))

  capsys.readouterr()
  assert cli.main(['eval', '--workdir', str(out)]) == 0
  assert 'mean IoU' in capsys.readouterr().out
  assert (out / 'eval' / 'val_step0.json').is_file()


def test_source_workdir_is_untouched(deconvnet_run):
  source, _, before, code = deconvnet_run
  assert code == 0 and before and _hashes(source) == before


def test_refusals_name_the_problem(deconvnet_run, tmp_path, data_dir, capsys):
  source, out, _, _ = deconvnet_run
  cases = [(out, 'is not empty'), (source / 'stats', 'inside the source workdir')]
  full = tmp_path / 'full'
  full.mkdir()
  (full / 'note.txt').write_text('mine')
  cases.append((full, 'is not empty'))
  for output, message in cases:
    assert cli.main(['bn-stats', '--workdir', str(source), '--output', str(output)]) == 2
    assert message in capsys.readouterr().err
  assert (full / 'note.txt').read_text() == 'mine' and not (source / 'stats').exists()

  assert cli.main(['bn-stats', '--workdir', str(tmp_path / 'none'),
                   '--output', str(tmp_path / 'o1')]) == 2
  assert 'does not exist' in capsys.readouterr().err

  fcn = tmp_path / 'fcn'
  _make_workdir(tiny_config(data_dir), fcn)
  assert cli.main(['bn-stats', '--workdir', str(fcn), '--output', str(tmp_path / 'o2')]) == 2
  assert 'fcn8s model, which has no BatchNorm layers' in capsys.readouterr().err
  assert cli.main(['bn-stats', '--workdir', str(source), '--output', str(tmp_path / 'o3'),
                   '--batch_size', '4']) == 2
  assert 'must be a positive multiple of the number of devices (8)' in capsys.readouterr().err
  assert not any((tmp_path / name).exists() for name in ('o1', 'o2', 'o3'))
