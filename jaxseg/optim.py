"""Optimisers and learning-rate schedules from `config.optim` (optax).

Choices, following the papers' Caffe/PyTorch recipes:
- Weight decay for SGD and Adam is L2 regularisation added to the gradients before momentum
  (Caffe's and torch.optim.SGD's `weight_decay`); AdamW uses decoupled decay (lr * wd * w).
- `config.optim.decay`: 'kernels' (default) decays convolution/dense kernels only (leaves with
  ndim > 1), not biases or BatchNorm scales/offsets: the FCN prototxts set decay_mult 0 on
  biases, and decaying BN parameters only fights the normalisation. 'all' decays every
  parameter, as semseg's `torch.optim.SGD(..., weight_decay=1e-4)` over all parameter groups.
- Learning-rate multipliers (Caffe's `lr_mult`, PyTorch parameter groups) scale each leaf's final
  update, which equals a group with lr * mult, momentum included (the trace holds raw gradients):
  `head_lr_mult` for every parameter outside the pretrained backbone (top-level keys not in
  `jaxseg.models.BACKBONE_PREFIXES[name]`; PSPNet's x10 head), `bias_lr_mult` for convolution and
  dense biases (not BatchNorm offsets; FCN's solvers: `lr_mult: 2`), and 0 for the FCN upsampling
  layers unless `config.model.learn_upsampling` (the reference's fixed bilinear deconvolutions,
  `lr_mult: 0`). A multiplier of 0 leaves the parameter exactly as initialised.
- Gradient clipping (global norm) acts on the raw gradients, before weight decay.

Schedules are functions of the number of updates already applied, `s` (0 for the first step),
with base rate `lr`, warmup `w` and total steps `T`:
  warmup (s < w):   lr * (s + 1) / w
  poly:             lr * (1 - (s - w) / (T - w)) ** power
  cosine:           lr * 0.5 * (1 + cos(pi * (s - w) / (T - w)))
  step:             lr * gamma ** floor(s / step_size)   (Caffe's lr_policy "step": DeconvNet)
  constant:         lr
with (s - w) / (T - w) clipped to [0, 1]. Caffe's solver counts updates (iterations of iter_size
micro-batches), as `s` does here with train.grad_accum_steps.
"""
import collections
import functools
from collections.abc import Callable
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

SCHEDULES = ('poly', 'constant', 'cosine', 'step')
OPTIMIZERS = ('sgd', 'adam', 'adamw')
DECAYS = ('kernels', 'all')


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The learning rate of the backbone as a function of the update count."""
  optim = config.optim
  base = float(optim.learning_rate)
  total = int(config.train.num_steps)
  warmup = int(optim.warmup_steps)
  if optim.schedule not in SCHEDULES:
    raise ValueError(f'config.optim.schedule={optim.schedule!r} is unknown; use one of '
                     f'{SCHEDULES}.')
  if warmup < 0 or (warmup and warmup >= total):
    raise ValueError(f'config.optim.warmup_steps={warmup} must be >= 0 and below '
                     f'config.train.num_steps={total}.')
  decay_steps = max(total - warmup, 1)
  power = float(optim.poly_power)
  step_size, gamma = int(optim.step_size), float(optim.gamma)
  if optim.schedule == 'step' and (step_size <= 0 or not 0 < gamma <= 1):
    raise ValueError(f'config.optim.schedule=\'step\' needs config.optim.step_size > 0 (got '
                     f'{step_size}) and 0 < config.optim.gamma <= 1 (got {gamma}).')

  def schedule(count):
    s = jnp.asarray(count, jnp.float32)
    t = jnp.clip((s - warmup) / decay_steps, 0.0, 1.0)
    if optim.schedule == 'poly':
      lr = base * (1.0 - t) ** power
    elif optim.schedule == 'cosine':
      lr = base * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    elif optim.schedule == 'step':
      lr = base * gamma ** jnp.floor(s / step_size)
    else:
      lr = jnp.full_like(s, base)
    if warmup:
      lr = jnp.where(s < warmup, base * (s + 1.0) / warmup, lr)
    return lr

  return schedule


def decay_mask(params: Any, decay: str = 'kernels') -> Any:
  """True for the leaves weight decay applies to: kernels only ('kernels') or every leaf ('all')."""
  if decay not in DECAYS:
    raise ValueError(f'config.optim.decay={decay!r} is unknown; use one of {DECAYS}.')
  return jax.tree.map(lambda p: decay == 'all' or jnp.ndim(p) > 1, params)


def param_labels(params: Any, backbone_prefixes: Sequence[str]) -> Any:
  """'backbone' for leaves under a top-level key in `backbone_prefixes`, else 'head'."""
  return {key: jax.tree.map(lambda _, k=key: 'backbone' if k in backbone_prefixes else 'head', sub)
          for key, sub in params.items()}


def _is_layer_bias(path: tuple[Any, ...], siblings: set[Any]) -> bool:
  """A convolution/dense bias: a leaf 'bias' whose module has no BatchNorm 'scale'."""
  return path[-1] == 'bias' and 'scale' not in siblings


def lr_multipliers(params: Any, backbone_prefixes: Sequence[str] = (), *, head: float = 1.0,
                   bias: float = 1.0, frozen_prefixes: Sequence[str] = ()) -> Any:
  """Per-leaf learning-rate multiplier (a float tree shaped like `params`).

  head for leaves outside `backbone_prefixes` (top-level keys), times bias for layer biases;
  0 for leaves under a top-level key in `frozen_prefixes`.
  """
  flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
  leaves_of = collections.defaultdict(set)  # Module path -> its leaf names.
  for path in flat:
    leaves_of[path[:-1]].add(path[-1])
  out = {}
  for path in flat:
    top = path[0]
    if top in frozen_prefixes:
      out[path] = 0.0
      continue
    mult = 1.0 if top in backbone_prefixes else head
    if _is_layer_bias(path, leaves_of[path[:-1]]):
      mult *= bias
    out[path] = mult
  return traverse_util.unflatten_dict(out)


def scale_by_multipliers(multipliers_fn: Callable[[Any], Any]) -> optax.GradientTransformation:
  """Multiplies each update leaf by its (static) multiplier from `multipliers_fn(params)`."""
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    mults = multipliers_fn(updates)
    updates = jax.tree.map(lambda u, m: u if m == 1.0 else u * jnp.asarray(m, u.dtype),
                           updates, mults)
    return updates, state

  return optax.GradientTransformation(init, update)


def create_optimizer(
    config: ml_collections.ConfigDict,
    backbone_prefixes: Sequence[str] = (),
    frozen_prefixes: Sequence[str] | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax transformation from `config.optim` and returns it with its schedule.

  Args:
    config: the full config (reads config.optim.*, config.train.num_steps, config.model.name and
      config.model.learn_upsampling).
    backbone_prefixes: top-level parameter keys of the pretrained backbone; the others get
      config.optim.head_lr_mult.
    frozen_prefixes: top-level keys never updated; None = the model's fixed upsampling layers
      (`jaxseg.models.FIXED_UPSAMPLING`) unless config.model.learn_upsampling.

  Returns:
    (tx, schedule) where schedule(step) is the backbone learning rate.
  """
  optim = config.optim
  schedule = learning_rate_schedule(config)
  weight_decay = float(optim.weight_decay)
  if weight_decay < 0:
    raise ValueError(f'config.optim.weight_decay={weight_decay} must be >= 0.')
  decay = str(optim.decay)
  mask = functools.partial(decay_mask, decay=decay)
  mask(())  # Validates config.optim.decay now, not at the first update.
  if frozen_prefixes is None:
    from jaxseg import models  # pylint: disable=g-import-not-at-top
    frozen_prefixes = () if config.model.learn_upsampling else models.FIXED_UPSAMPLING.get(
        config.model.name, ())
  parts = []
  if optim.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(optim.grad_clip_norm)))
  if optim.name == 'sgd':
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay, mask=mask))
    momentum = float(optim.momentum) or None
    parts.append(optax.sgd(schedule, momentum=momentum, nesterov=bool(optim.nesterov)))
  elif optim.name == 'adam':
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay, mask=mask))
    parts.append(optax.adam(schedule))
  elif optim.name == 'adamw':
    parts.append(optax.adamw(schedule, weight_decay=weight_decay, mask=mask))
  else:
    raise ValueError(f'config.optim.name={optim.name!r} is unknown; use one of {OPTIMIZERS}.')
  head, bias = float(optim.head_lr_mult), float(optim.bias_lr_mult)
  if head < 0 or bias < 0:
    raise ValueError(f'config.optim.head_lr_mult={head} and bias_lr_mult={bias} must be >= 0.')
  if head != 1.0 or bias != 1.0 or frozen_prefixes:
    parts.append(scale_by_multipliers(functools.partial(
        lr_multipliers, backbone_prefixes=tuple(backbone_prefixes), head=head, bias=bias,
        frozen_prefixes=tuple(frozen_prefixes))))
  return optax.chain(*parts), schedule
