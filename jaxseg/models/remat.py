"""Activation rematerialisation: the models' `remat` field (config.model.remat) and its regions.

  'none'   autodiff keeps every activation the backward pass needs (fastest, most memory).
  'block'  each residual bottleneck (ResNet), each conv + [BN] + ReLU of VGG16 and each
           deconv + BN + ReLU of DeconvNet's decoder is one `jax.checkpoint` region: only its
           input is kept, the rest is recomputed in the backward pass.
  'stage'  each ResNet stage (layer1..4), each VGG16 block (its convs and pool) and each
           DeconvNet decoder block (unpool and deconvs) is one region.

A region is a function `fn(module, x, train)` that creates its layers inside; `region` lifts it
with `nn.remat` over `module`, whose scope the layers keep (and `region_class` lifts a module
class, which keeps its own name), so the parameter tree (names, shapes)
is the same under every mode and checkpoints and imported weights load unchanged. `train` is a
static argument (BatchNorm and dropout branch on it in Python).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

REMAT_MODES = ('none', 'block', 'stage')
# What a region keeps besides its inputs. Nothing: measured on PSPNet-101 at 473x473, saving the
# dots (jax.checkpoint_policies.dots_with_no_batch_dims_saveable) keeps on the CPU the outputs of
# the 1x1 convs, which are most of a bottleneck's activations, and saves far less memory.
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
