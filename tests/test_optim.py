"""Schedules against their closed forms; optimisers against torch.optim with parameter groups."""
import math
import sys
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseg import optim

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'experiments'))
import default  # noqa: E402  pylint: disable=g-import-not-at-top


def make_config(**optim_fields):
  config = default.get_config()
  config.train.num_steps = 100
  config.train.num_steps = optim_fields.pop('num_steps', 100)
  for key, value in optim_fields.items():
    config.optim[key] = value
  return config


def closed_form(name, s, lr=0.01, warmup=0, total=100, power=0.9):
  if s < warmup:
    return lr * (s + 1) / warmup
  t = min(max((s - warmup) / (total - warmup), 0.0), 1.0)
  if name == 'poly':
    return lr * (1 - t) ** power
  if name == 'cosine':
    return lr * 0.5 * (1 + math.cos(math.pi * t))
  return lr


def test_step_schedule_is_caffes():
  # Caffe's "step" policy (DeconvNet's solvers): base_lr * gamma ^ floor(iter / stepsize).
  config = make_config(schedule='step', learning_rate=0.01, step_size=9000, gamma=0.1,
                       num_steps=20000)
  schedule = optim.learning_rate_schedule(config)
  for s, want in [(0, 0.01), (8999, 0.01), (9000, 0.001), (17999, 0.001), (18000, 1e-4),
                  (19999, 1e-4)]:
    assert float(schedule(s)) == pytest.approx(want, rel=1e-6)
  with pytest.raises(ValueError, match='config.optim.step_size'):
    optim.learning_rate_schedule(make_config(schedule='step', step_size=0))


@pytest.mark.parametrize('name', ['poly', 'cosine', 'constant'])
@pytest.mark.parametrize('warmup', [0, 10])
def test_schedule_closed_form(name, warmup):
  config = make_config(schedule=name, warmup_steps=warmup, learning_rate=0.01)
  schedule = optim.learning_rate_schedule(config)
  steps = [0, 1, 5, 9, 10, 11, 50, 99, 100, 150]
  got = [float(schedule(s)) for s in steps]
  want = [closed_form(name, s, warmup=warmup) for s in steps]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
  if name == 'poly' and not warmup:  # The paper's poly: lr * (1 - iter/max_iter) ** 0.9.
    assert float(schedule(50)) == pytest.approx(0.01 * 0.5 ** 0.9, rel=1e-5)


def test_bad_fields_are_named():
  with pytest.raises(ValueError, match='config.optim.schedule'):
    optim.learning_rate_schedule(make_config(schedule='exponential'))
  with pytest.raises(ValueError, match='config.optim.warmup_steps'):
    optim.learning_rate_schedule(make_config(warmup_steps=100))
  with pytest.raises(ValueError, match='config.optim.name'):
    optim.create_optimizer(make_config(name='lamb'))


def _params(seed=0):
  rng = np.random.RandomState(seed)
  return {
      'backbone': {'conv': {'kernel': rng.randn(3, 3, 2, 4).astype(np.float32),
                            'bias': rng.randn(4).astype(np.float32)},
                   'bn': {'scale': rng.rand(4).astype(np.float32) + 0.5}},
      'head': {'kernel': rng.randn(4, 5).astype(np.float32),
               'bias': rng.randn(5).astype(np.float32)},
  }


def _run_optax(config, params, grads_seq, prefixes=('backbone',), frozen=None):
  tx, _ = optim.create_optimizer(config, prefixes, frozen)
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  for grads in grads_seq:
    updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, params)
    params = optax.apply_updates(params, updates)
  return jax.tree.map(np.asarray, params)


def _run_torch(config, params, grads_seq, head_mult, make_opt, bias_mult=1.0, frozen=()):
  """torch.optim with one parameter group per leaf: Caffe's lr_mult / decay_mult by hand.

  lr mult: head_mult outside 'backbone', x bias_mult for the leaves named bias, 0 for `frozen`
  top-level keys; weight decay on ndim > 1 leaves (or every leaf with config.optim.decay='all').
  """
  torch = pytest.importorskip('torch')
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
  tensors = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in flat.items()}
  schedule = optim.learning_rate_schedule(config)
  groups = []
  for k, v in flat.items():
    mult = 1.0 if k.startswith("['backbone']") else head_mult
    if k.endswith("['bias']"):
      mult *= bias_mult
    if any(k.startswith(f"['{f}']") for f in frozen):
      mult = 0.0
    decayed = v.ndim > 1 or config.optim.decay == 'all'
    groups.append({'params': [tensors[k]], 'mult': mult,
                   'weight_decay': config.optim.weight_decay if decayed else 0.0})
  opt = make_opt(groups)
  for step, grads in enumerate(grads_seq):
    flat_g = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(grads)}
    for k, t in tensors.items():
      t.grad = torch.from_numpy(flat_g[k].copy())
    if config.optim.grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(list(tensors.values()), config.optim.grad_clip_norm)
    for group in opt.param_groups:
      group['lr'] = float(schedule(step)) * group['mult']
    opt.step()
  return {k: t.detach().numpy() for k, t in tensors.items()}


def _compare(got, want):
  for path, value in jax.tree_util.tree_leaves_with_path(got):
    np.testing.assert_allclose(value, want[jax.tree_util.keystr(path)], rtol=2e-5, atol=2e-6,
                               err_msg=jax.tree_util.keystr(path))


def _grads(params, steps=6):
  rng = np.random.RandomState(1)
  return [jax.tree.map(lambda p: rng.randn(*p.shape).astype(np.float32), params)
          for _ in range(steps)]


@pytest.mark.parametrize('nesterov', [False, True])
def test_sgd_matches_torch(nesterov):
  torch = pytest.importorskip('torch')
  config = make_config(name='sgd', learning_rate=0.1, momentum=0.9, nesterov=nesterov,
                       weight_decay=0.05, head_lr_mult=10.0, warmup_steps=2, grad_clip_norm=3.0)
  params = _params()
  grads = _grads(params)
  got = _run_optax(config, params, grads)
  want = _run_torch(config, params, grads, 10.0, lambda groups: torch.optim.SGD(
      groups, lr=0.1, momentum=0.9, nesterov=nesterov))
  _compare(got, want)


@pytest.mark.parametrize('name', ['adam', 'adamw'])
def test_adam_matches_torch(name):
  torch = pytest.importorskip('torch')
  config = make_config(name=name, learning_rate=1e-3, weight_decay=0.1, head_lr_mult=10.0,
                       schedule='cosine')
  params = _params()
  grads = _grads(params)
  got = _run_optax(config, params, grads)
  cls = torch.optim.Adam if name == 'adam' else torch.optim.AdamW
  want = _run_torch(config, params, grads, 10.0, lambda groups: cls(groups, lr=1e-3))
  _compare(got, want)


def test_head_multiplier_only_on_head_params():
  params = _params()
  grads = _grads(params, steps=1)
  base = make_config(name='sgd', momentum=0.0, weight_decay=0.0, learning_rate=0.1,
                     schedule='constant')
  boosted = make_config(name='sgd', momentum=0.0, weight_decay=0.0, learning_rate=0.1,
                        schedule='constant', head_lr_mult=10.0)
  delta1 = jax.tree.map(np.subtract, _run_optax(base, params, grads), params)
  delta10 = jax.tree.map(np.subtract, _run_optax(boosted, params, grads), params)
  for path, d10 in jax.tree_util.tree_leaves_with_path(delta10):
    d1 = delta1
    for key in path:
      d1 = d1[key.key]
    mult = 10.0 if path[0].key == 'head' else 1.0
    np.testing.assert_allclose(d10, mult * d1, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
  # Plain SGD: the update is -lr * grad.
  np.testing.assert_allclose(delta1['head']['kernel'], -0.1 * grads[0]['head']['kernel'],
                             rtol=1e-5)


def test_weight_decay_skips_biases_and_batchnorm():
  params = _params()
  zeros = [jax.tree.map(np.zeros_like, params)]
  config = make_config(name='sgd', momentum=0.0, weight_decay=0.5, learning_rate=0.1,
                       schedule='constant')
  new = _run_optax(config, params, zeros)
  np.testing.assert_allclose(new['head']['kernel'], params['head']['kernel'] * (1 - 0.05),
                             rtol=1e-6)
  np.testing.assert_array_equal(new['head']['bias'], params['head']['bias'])
  np.testing.assert_array_equal(new['backbone']['bn']['scale'], params['backbone']['bn']['scale'])


@pytest.mark.parametrize('decay', ['kernels', 'all'])
def test_caffe_multipliers_match_torch_groups(decay):
  """FCN's solver (bias lr x2, frozen upsampling) and semseg's decay of every parameter."""
  torch = pytest.importorskip('torch')
  config = make_config(name='sgd', learning_rate=0.1, momentum=0.99, weight_decay=0.05,
                       bias_lr_mult=2.0, head_lr_mult=10.0, decay=decay, schedule='constant')
  params = _params()
  params['upscore'] = {'kernel': np.ones((4, 4, 5, 5), np.float32)}
  grads = _grads(params)
  got = _run_optax(config, params, grads, frozen=('upscore',))
  want = _run_torch(config, params, grads, 10.0, lambda groups: torch.optim.SGD(
      groups, lr=0.1, momentum=0.99), bias_mult=2.0, frozen=('upscore',))
  _compare(got, want)
  np.testing.assert_array_equal(got['upscore']['kernel'], params['upscore']['kernel'])


def test_fcn_upsampling_frozen_unless_learned():
  from jaxseg import models  # pylint: disable=g-import-not-at-top
  params = {'upscore2': {'kernel': np.ones((4, 4, 2, 2), np.float32)},
            'score_fr': {'kernel': np.ones((1, 1, 3, 2), np.float32)}}
  grads = [jax.tree.map(np.ones_like, params)]
  config = make_config(name='sgd', momentum=0.0, weight_decay=0.0, schedule='constant')
  config.model.name = 'fcn16s'
  assert 'upscore2' in models.FIXED_UPSAMPLING['fcn16s']
  frozen = _run_optax(config, params, grads)
  np.testing.assert_array_equal(frozen['upscore2']['kernel'], params['upscore2']['kernel'])
  assert not np.array_equal(frozen['score_fr']['kernel'], params['score_fr']['kernel'])
  config.model.learn_upsampling = True
  learned = _run_optax(config, params, grads)
  assert not np.array_equal(learned['upscore2']['kernel'], params['upscore2']['kernel'])


def test_bad_decay_and_multipliers_are_named():
  with pytest.raises(ValueError, match='config.optim.decay'):
    optim.create_optimizer(make_config(decay='biases'))
  with pytest.raises(ValueError, match='bias_lr_mult'):
    optim.create_optimizer(make_config(bias_lr_mult=-1.0))
