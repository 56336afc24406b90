"""Data parallelism in the pmap programming model, run with `jax.shard_map` over a 1-D mesh.

Functions handed to `data_parallel` are written per device, as for `jax.pmap`: they see one
device's slice of the batch and the full (replicated) state, and use collectives over the axis
'data' (`lax.pmean` of gradients, cross-replica BatchNorm, `psum`ed metrics). The mesh spans
every device of every process, so the same code runs on one CPU, one GPU host or a multi-host pod.

`check_vma=False` keeps pmap's semantics: the gradient of a replicated parameter is the local,
per-device gradient (which the step then `pmean`s). With `check_vma=True` JAX would instead
insert the cross-device sum itself and the explicit `pmean` would be a no-op.
"""
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'

# Environment variables read by maybe_initialize_distributed (JAX itself reads the first).
_ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
_ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
_ENV_PROCESS_ID = 'JAX_PROCESS_ID'
# Set by launchers whose cluster JAX detects on its own (SLURM, Open MPI, multi-host TPU).
_CLUSTER_ENV = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE')


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
  """Starts JAX's multi-controller runtime when this program is one of several processes.

  Arguments win over the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID; without either, SLURM/Open MPI launches with more than one task are detected
  by `jax.distributed.initialize()` itself. Must run before anything touches a JAX device.
  On the CPU, cross-process collectives use gloo (JAX's default).

  Returns:
    True when the distributed runtime is (now) initialised.
  """
  if jax.distributed.is_initialized():
    return True
  coordinator_address = coordinator_address or os.environ.get(_ENV_COORDINATOR)
  if num_processes is None and os.environ.get(_ENV_NUM_PROCESSES):
    num_processes = int(os.environ[_ENV_NUM_PROCESSES])
  if process_id is None and os.environ.get(_ENV_PROCESS_ID):
    process_id = int(os.environ[_ENV_PROCESS_ID])
  if coordinator_address or (num_processes or 1) > 1:
    if coordinator_address is None or num_processes is None or process_id is None:
      raise ValueError(
          'A multi-process launch needs all of coordinator address, number of processes and '
          f'process id (got {coordinator_address!r}, {num_processes!r}, {process_id!r}); set '
          f'{_ENV_COORDINATOR}, {_ENV_NUM_PROCESSES} and {_ENV_PROCESS_ID}.')
    if num_processes == 1:
      return False
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True
  if any(int(os.environ.get(name, '1') or 1) > 1 for name in _CLUSTER_ENV):
    jax.distributed.initialize()
    return True
  return False


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
