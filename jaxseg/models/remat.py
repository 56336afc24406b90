"""Activation rematerialisation: the models' `remat` field (config.model.remat) and its regions.

  'none'   autodiff keeps every activation the backward pass needs (fastest, most memory).
  'block'  each ResNet bottleneck, the convs of each VGG16 block and the deconvs of each
           DeconvNet decoder block are one `jax.checkpoint` region: only its input is kept, the
           rest is recomputed in the backward pass.
  'stage'  each ResNet stage (layer1..4) is one region; each VGG16 block with its pool and each
           decoder block with its unpool.

Why these granularities (XLA memory analysis of the float32 train gradient, batch 1): a ResNet
bottleneck region keeps only its input, so 'block' cut PSPNet-101's temporaries at 473x473 from
2663 to 868 MiB, while under 'stage' (1658 MiB) the backward pass rebuilds all 23 bottlenecks of
layer3 at once. Either recomputes one forward pass (+24% XLA flops). In VGG16, regions of single
conv + ReLU units recompute as much as whole-block regions but save less, because VGG blocks are
short (FCN-8s at 384x384: 227 vs 183 MiB of 389; DeconvNet at 224: 164 vs 150 MiB of 441), so
'block' is a block's convs and 'stage' only adds the pool (165 and 148 MiB).

A region is a function `fn(module, x, train)` that creates its layers inside; `region` lifts it
with `nn.remat` over `module`, whose scope the layers keep (and `region_class` lifts a module
class, which keeps its own name), so the parameter tree (names, shapes) is the same under every
mode and checkpoints and imported weights load unchanged. `train` is a static argument
(BatchNorm and dropout branch on it in Python).

XLA:CPU's default pipeline drops jax.checkpoint's optimisation barriers (HLO pass
`cse_barrier_expander`) before CSE and scheduling, which fold the recomputation back into the
forward pass: on the CPU remat then saves nothing (PSPNet-101: 'block' 3078 MiB, 'stage' 2663)
unless XLA_FLAGS contains --xla_disable_hlo_passes=cse_barrier_expander (the numbers above).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

REMAT_MODES = ('none', 'block', 'stage')
# What a region keeps besides its inputs: nothing. dots_with_no_batch_dims_saveable keeps what the
# CPU computes as dots (1x1 convs, most of a bottleneck's activations): PSPNet-101 'block' then
# needs 1418 MiB instead of 868 for +12% instead of +24% flops, and on GPU/TPU, where convs are
# not dots, it would keep a different set. Remat is for memory; nothing_saveable is that.
POLICY: Callable[..., bool] = jax.checkpoint_policies.nothing_saveable

Region = Callable[[nn.Module, Any, bool], Any]


def check(remat: str) -> str:
  """Returns `remat` if it is one of REMAT_MODES, else raises a ValueError naming the choices."""
  if remat not in REMAT_MODES:
    raise ValueError(f'config.model.remat (the models\' remat field) must be one of '
                     f'{", ".join(repr(m) for m in REMAT_MODES)}; got {remat!r}')
  return remat


def region(fn: Region, enabled: bool) -> Region:
  """`fn(module, x, train)` as one rematerialised region when enabled, else `fn` itself."""
  if not enabled:
    return fn
  # static_argnums counts the module: index 2 is `train`.
  return nn.remat(fn, static_argnums=(2,), policy=POLICY)


@functools.lru_cache(maxsize=None)
def region_class(cls: type[nn.Module], enabled: bool) -> type[nn.Module]:
  """Module class `cls`, called as `cls(...)(x, train)`, rematerialised when enabled."""
  # One lifted class per module class, not a new one per layer and trace.
  return nn.remat(cls, static_argnums=(2,), policy=POLICY) if enabled else cls
