"""The models' `remat` field (jaxseg/models/remat.py): same numbers, same parameters, new program.

The reference for remat='block' / 'stage' is the same model with remat='none' (plain autodiff):
loss, gradients and updated BatchNorm statistics must agree, the parameter trees must be
identical (so checkpoints and imported weights load under every mode), and the gradient program
must really contain one checkpoint region per bottleneck / VGG block / stage.
"""
import pathlib
import sys

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import models, parallel
from jaxseg.models import remat

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_models_pspnet import _numpy_variables  # noqa: E402  pylint: disable=g-import-not-at-top

NUM_CLASSES = 4
# Tiny variant, input size, and per mode the activations each checkpoint region returns, in order.
# VGG16 has 5 blocks: a 'block' region is a block's convs (-> its activation), a 'stage' region
# adds the pool (-> activation, pooled[, switches for DeconvNet]); DeconvNet's 5 decoder blocks
# are regions of their deconvs, with ('stage') or without ('block') the unpool before them. The
# PSPNets get 5 bottlenecks in 4 stages, so one stage region holds two bottlenecks.
CASES = {
    'fcn32s': ({'width': 1 / 16}, (35, 46), {'block': [1] * 5, 'stage': [2] * 5}),
    'fcn16s': ({'width': 1 / 16}, (35, 46), {'block': [1] * 5, 'stage': [2] * 5}),
    'fcn8s': ({'width': 1 / 16}, (35, 46), {'block': [1] * 5, 'stage': [2] * 5}),
    'deconvnet': ({'width': 1 / 16}, (193, 201), {'block': [1] * 10,
                                                   'stage': [3] * 5 + [1] * 5}),
    'pspnet50': ({'width': 1 / 8, 'stage_sizes': (1, 2, 1, 1)}, (33, 45),
                 {'block': [1] * 5, 'stage': [1] * 4}),
    'pspnet101': ({'width': 1 / 8, 'stage_sizes': (2, 1, 1, 1)}, (25, 31),
                  {'block': [1] * 5, 'stage': [1] * 4}),
}
REGION_PRIMITIVES = ('checkpoint', 'remat', 'remat2')


def _loss_fn(model, x, labels):
  """Train-mode cross-entropy (+ 0.4 x aux for PSPNet) of (params, batch_stats), and the updated
  batch_stats; dropout with a fixed key."""

  def ce(logits):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1))

  def loss_fn(params, batch_stats):
    out, updates = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                               mutable=['batch_stats'], rngs={'dropout': jax.random.key(3)})
    loss = ce(out[0]) + 0.4 * ce(out[1]) if isinstance(out, tuple) else ce(out)
    return loss, updates.get('batch_stats', {})

  return loss_fn


def _inputs(size):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, *size, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, size=(2, *size)), jnp.int32)
  return x, labels


def _regions(jaxpr) -> list:
  """Checkpoint (remat) equations of a jaxpr in order, searching inside jit and other calls."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in REGION_PRIMITIVES:
      found.append(eqn)
      continue
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jex.ClosedJaxpr):
          found += _regions(sub.jaxpr)
        elif isinstance(sub, jex.Jaxpr):
          found += _regions(sub)
  return found


def _assert_trees_close(got, want, what):
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want), what
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got),
                          jax.tree_util.tree_leaves(want)):
    g, w = np.asarray(g), np.asarray(w)
    # Relative, and absolute relative to each leaf's scale (for elements that cancel to ~0).
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6 * float(np.max(np.abs(w))),
                               err_msg=f'{what} {jax.tree_util.keystr(path)}')


@pytest.mark.parametrize('name', list(CASES))
def test_remat_keeps_parameter_tree(name):
  overrides, size, _ = CASES[name]
  x, _ = _inputs(size)
  trees = {}
  for mode in remat.REMAT_MODES:
    model = models.create_model(name, NUM_CLASSES, remat=mode, **overrides)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    trees[mode] = jax.tree_util.tree_map_with_path(
        lambda path, leaf: (jax.tree_util.keystr(path), leaf.shape, leaf.dtype), shapes)
  assert trees['block'] == trees['none']
  assert trees['stage'] == trees['none']


@pytest.mark.parametrize('name', list(CASES))
def test_remat_puts_one_checkpoint_region_per_unit_in_the_program(name):
  overrides, size, regions = CASES[name]
  x, labels = _inputs(size)
  for mode, outputs in (('none', []), *regions.items()):
    model = models.create_model(name, NUM_CLASSES, remat=mode, **overrides)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    args = (variables['params'], variables.get('batch_stats', {}))
    loss_fn = _loss_fn(model, x, labels)
    forward = _regions(jax.make_jaxpr(loss_fn)(*args).jaxpr)
    # NHWC outputs only: a region also returns the BatchNorm statistics it updates.
    assert [sum(v.aval.ndim == 4 for v in eqn.outvars) for eqn in forward] == outputs, mode
    # The gradient recomputes each region in the backward pass.
    backward = _regions(jax.make_jaxpr(jax.grad(loss_fn, has_aux=True))(*args).jaxpr)
    assert len(backward) == len(outputs), mode


@pytest.mark.parametrize('name', list(CASES))
def test_remat_gives_the_same_loss_gradients_and_batch_stats(name):
  # In float64: in float32, recomputing reorders sums enough (about 2e-6 of a leaf's largest
  # gradient in PSPNet, whose near-cancelling BatchNorm gradients are rounding noise even without
  # remat) that a 1e-6 comparison would test the rounding, not the rematerialisation.
  overrides, size, _ = CASES[name]
  with jax.enable_x64(True):
    x, labels = _inputs(size)
    x = x.astype(jnp.float64)
    results = {}
    for mode in remat.REMAT_MODES:
      model = models.create_model(name, NUM_CLASSES, remat=mode, dtype='float64', **overrides)
      variables = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64),
                                         _numpy_variables(model, x))
      grad_fn = jax.value_and_grad(_loss_fn(model, x, labels), has_aux=True)
      results[mode] = jax.jit(grad_fn)(variables['params'], variables.get('batch_stats', {}))
  (want_loss, want_stats), want_grads = results['none']
  assert np.isfinite(want_loss)
  assert max(np.max(np.abs(g)) for g in jax.tree_util.tree_leaves(want_grads)) > 0
  for mode in ('block', 'stage'):
    (loss, stats), grads = results[mode]
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg=mode)
    _assert_trees_close(grads, want_grads, f'{name} remat={mode} gradient')
    _assert_trees_close(stats, want_stats, f'{name} remat={mode} batch_stats')


@pytest.mark.parametrize('name', list(CASES))
def test_unknown_remat_names_the_config_field_and_the_choices(name):
  overrides, size, _ = CASES[name]
  with pytest.raises(ValueError, match=r"config\.model\.remat.*'none', 'block', 'stage'.*'layer'"):
    models.create_model(name, NUM_CLASSES, remat='layer', **overrides)
  # The module itself checks too (built directly, without the registry).
  model = models.model_class(name)(num_classes=NUM_CLASSES, remat='Block',
                                   **{k: v for k, v in overrides.items()},
                                   **({'variant': name[3:]} if name.startswith('fcn') else {}))
  with pytest.raises(ValueError, match=r"config\.model\.remat.*got 'Block'"):
    jax.eval_shape(model.init, jax.random.key(0), _inputs(size)[0])


def test_remat_with_cross_replica_batchnorm_under_shard_map():
  """Sync BN's pmean inside the checkpoint regions, mapped as the train step is (in float64)."""
  if jax.device_count() < 2:
    pytest.skip('needs 2 devices (tests/conftest.py forces 8 CPU devices)')
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), (parallel.DATA_AXIS,))
  overrides, size, _ = CASES['pspnet50']
  with jax.enable_x64(True):
    x, labels = _inputs(size)
    x = x.astype(jnp.float64)
    results = {}
    for mode in remat.REMAT_MODES:
      model = models.create_model('pspnet50', NUM_CLASSES, remat=mode, dtype='float64',
                                  sync_bn_axis=parallel.DATA_AXIS, **overrides)
      variables = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64),
                                         _numpy_variables(model, x))

      def step(state, batch, model=model):
        grad_fn = jax.value_and_grad(_loss_fn(model, *batch), has_aux=True)
        (loss, stats), grads = grad_fn(*state)
        return jax.lax.pmean((loss, grads), parallel.DATA_AXIS), stats

      mapped = parallel.data_parallel(step, mesh, donate_state=False)
      results[mode] = mapped((variables['params'], variables['batch_stats']), (x, labels))
  (want_loss, want_grads), want_stats = results['none']
  for mode in ('block', 'stage'):
    (loss, grads), stats = results[mode]
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg=mode)
    _assert_trees_close(grads, want_grads, f'sync BN remat={mode} gradient')
    _assert_trees_close(stats, want_stats, f'sync BN remat={mode} batch_stats')
