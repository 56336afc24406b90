"""Data parallelism in the pmap programming model, run with `jax.shard_map` over a 1-D mesh.

Functions handed to `data_parallel` are written per device, as for `jax.pmap`: they see one
device's slice of the batch and the full (replicated) state, and use collectives over the axis
'data' (`lax.pmean` of gradients, cross-replica BatchNorm, `psum`ed metrics). The mesh spans
every device of every process, so the same code runs on one CPU, one GPU host or a multi-host pod
(several processes are started by jaxseg.launch before any of this runs).

`check_vma=False` keeps pmap's semantics: the gradient of a replicated parameter is the local,
per-device gradient (which the step then `pmean`s). With `check_vma=True` JAX would instead
insert the cross-device sum itself and the explicit `pmean` would be a no-op.
"""
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError('create_mesh needs at least one device.')
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of arrays held whole by every device (state, scalars)."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """The sharding of batches: leading axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies a pytree of host values (identical in every process) onto every device of `mesh`."""
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Builds global arrays split along 'data' from each process's own rows of the batch."""
  sharding = data_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def to_host(tree: Any) -> Any:
  """NumPy copies of replicated global arrays (valid in every process)."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)
    return np.asarray(x)
  return jax.tree.map(get, tree)


def data_parallel(
    per_device_fn: Callable[[Any, Any], tuple[Any, Any]],
    mesh: Mesh,
    *,
    donate_state: bool = True,
) -> Callable[[Any, Any], tuple[Any, Any]]:
  """Maps `per_device_fn(state, batch) -> (state, metrics)` over the mesh, under jit.

  State and metrics are replicated (P()), the batch is split along 'data' (P('data')). The
  per-device function must keep the state identical on every device (pmean what differs);
  the state argument's buffers are donated.
  """
  mapped = jax.shard_map(
      per_device_fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()),
      check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,) if donate_state else ())
