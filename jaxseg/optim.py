"""Optimisers and learning-rate schedules from `config.optim` (optax).

Choices, following the papers' Caffe/PyTorch recipes:
- Weight decay for SGD and Adam is L2 regularisation added to the gradients before momentum
  (Caffe's and torch.optim.SGD's `weight_decay`); AdamW uses decoupled decay (lr * wd * w).
- Decay applies to convolution/dense kernels only (leaves with ndim > 1), not to biases or
  BatchNorm scales/offsets: the FCN prototxts set decay_mult 0 on biases, and decaying BN
  parameters only fights the normalisation.
- `head_lr_mult` scales the updates of every parameter outside the pretrained backbone
  (top-level keys not in `jaxseg.models.BACKBONE_PREFIXES[name]`) — PSPNet's x10 head. Scaling
  the final update equals PyTorch parameter groups with lr * mult, momentum included.
- Gradient clipping (global norm) acts on the raw gradients, before weight decay.

Schedules are functions of the number of updates already applied, `s` (0 for the first step),
with base rate `lr`, warmup `w` and total steps `T`:
  warmup (s < w):   lr * (s + 1) / w
  poly:             lr * (1 - (s - w) / (T - w)) ** power
  cosine:           lr * 0.5 * (1 + cos(pi * (s - w) / (T - w)))
  constant:         lr
with (s - w) / (T - w) clipped to [0, 1].
"""
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ('poly', 'constant', 'cosine')
OPTIMIZERS = ('sgd', 'adam', 'adamw')


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

  def schedule(count):
    s = jnp.asarray(count, jnp.float32)
    t = jnp.clip((s - warmup) / decay_steps, 0.0, 1.0)
    if optim.schedule == 'poly':
      lr = base * (1.0 - t) ** power
    elif optim.schedule == 'cosine':
      lr = base * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    else:
      lr = jnp.full_like(s, base)
    if warmup:
      lr = jnp.where(s < warmup, base * (s + 1.0) / warmup, lr)
    return lr

  return schedule


def decay_mask(params: Any) -> Any:
  """True for the leaves weight decay applies to: kernels, not biases or BatchNorm parameters."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def param_labels(params: Any, backbone_prefixes: Sequence[str]) -> Any:
  """'backbone' for leaves under a top-level key in `backbone_prefixes`, else 'head'."""
  return {key: jax.tree.map(lambda _, k=key: 'backbone' if k in backbone_prefixes else 'head', sub)
          for key, sub in params.items()}


def create_optimizer(
    config: ml_collections.ConfigDict,
    backbone_prefixes: Sequence[str] = (),
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax transformation from `config.optim` and returns it with its schedule.

  Args:
    config: the full config (reads config.optim.* and config.train.num_steps).
    backbone_prefixes: top-level parameter keys of the pretrained backbone; the others get
      config.optim.head_lr_mult.

  Returns:
    (tx, schedule) where schedule(step) is the backbone learning rate.
  """
  optim = config.optim
  schedule = learning_rate_schedule(config)
  weight_decay = float(optim.weight_decay)
  if weight_decay < 0:
    raise ValueError(f'config.optim.weight_decay={weight_decay} must be >= 0.')
  parts = []
  if optim.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(optim.grad_clip_norm)))
  if optim.name == 'sgd':
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    momentum = float(optim.momentum) or None
    parts.append(optax.sgd(schedule, momentum=momentum, nesterov=bool(optim.nesterov)))
  elif optim.name == 'adam':
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    parts.append(optax.adam(schedule))
  elif optim.name == 'adamw':
    parts.append(optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask))
  else:
    raise ValueError(f'config.optim.name={optim.name!r} is unknown; use one of {OPTIMIZERS}.')
  head_lr_mult = float(optim.head_lr_mult)
  if head_lr_mult != 1.0:
    parts.append(optax.multi_transform(
        {'backbone': optax.identity(), 'head': optax.scale(head_lr_mult)},
        lambda params: param_labels(params, tuple(backbone_prefixes))))
  return optax.chain(*parts), schedule
