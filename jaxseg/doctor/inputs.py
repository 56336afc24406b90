"""The random train states, variables and batches the doctor's checks run on.

States are laid out by `train.create_train_state(..., abstract=True)` (shapes, dtypes and
shardings, no compile) and filled on the host with NumPy: the checks measure programs, not an
initialisation, and XLA:CPU spends about half a second compiling each threefry draw of a model's
initialisers (tens of seconds for the smallest network). The values are scaled like an
initialisation so that activations and losses stay finite: conv/dense kernels N(0, 1/fan_in),
BatchNorm scales and variances U(0.5, 1.5), other floats (biases, BN means) N(0, 0.01^2), integer
scalars 0 and other integers (the dropout key) random bits. A state to train from gets the
optimiser's own initial state (`random_train_state`); the checkpoint check saves every leaf
random (`random_tree`).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from jaxseg import parallel
from jaxseg import train

_UNIT_SCALE = ('scale', 'var')  # BatchNorm leaves that must stay positive.


def _leaf_name(path: tuple[Any, ...]) -> str:
  last = path[-1] if path else None
  for attr in ('key', 'name', 'idx'):
    if hasattr(last, attr):
      return str(getattr(last, attr))
  return str(last)


def _host_value(name: str, shape: tuple[int, ...], dtype: Any, rng: np.random.Generator
                ) -> np.ndarray:
  dtype = np.dtype(dtype)
  if np.issubdtype(dtype, np.floating) or dtype.name == 'bfloat16':
    if name == 'kernel' and len(shape) >= 2:
      value = rng.standard_normal(shape, np.float32) / math.sqrt(math.prod(shape[:-1]))
    elif name in _UNIT_SCALE:
      value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      value = 0.01 * rng.standard_normal(shape, np.float32)
    return value.astype(dtype)
  if not shape:
    return np.zeros((), dtype)
  info = np.iinfo(dtype)
  return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def random_tree(target: Any, seed: int) -> Any:
  """A pytree of arrays like `target` (jax.ShapeDtypeStructs with .sharding), filled as above."""
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
  arrays = [jax.device_put(_host_value(_leaf_name(path), s.shape, s.dtype, rng), s.sharding)
            for path, s in leaves]
  return jax.tree_util.tree_unflatten(treedef, arrays)


def random_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                       tx: optax.GradientTransformation, mesh: Mesh, seed: int = 0) -> Any:
  """A train state to step from: random parameters and BatchNorm statistics (as above), the
  optimiser's own initial state of them (`tx.init`: zero momentum, Adam's moments), step 0."""
  target = train.create_train_state(config, model, tx, mesh, abstract=True)
  params, batch_stats, rng = random_tree((target.params, target.batch_stats, target.rng), seed)
  opt_state = jax.jit(tx.init, out_shardings=parallel.replicated(mesh))(params)
  return target.replace(step=jax.device_put(np.zeros((), np.int32), target.step.sharding),
                        params=params, batch_stats=batch_stats, opt_state=opt_state, rng=rng)


def random_batch(config: ml_collections.ConfigDict, batch_size: int, mesh: Mesh,
                 seed: int = 0) -> dict[str, jax.Array]:
  """A train batch as the input pipeline yields it: uint8 RGB images, int32 labels (about 5%
  ignored), config.data.crop_size, split over the mesh."""
  rng = np.random.default_rng(seed)
  height, width = (int(v) for v in config.data.crop_size)
  images = rng.integers(0, 256, (batch_size, height, width, 3), dtype=np.uint8)
  labels = rng.integers(0, int(config.data.num_classes), (batch_size, height, width),
                        dtype=np.int32)
  labels[rng.random(labels.shape) < 0.05] = int(config.data.ignore_label)
  return parallel.shard_batch({'image': images, 'label': labels}, mesh)


def tree_bytes(tree: Any) -> int:
  """Bytes of every array leaf of a pytree."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
