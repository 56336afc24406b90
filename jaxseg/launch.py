"""Starting JAX's multi-controller runtime from the launcher's environment.

`initialize_from_environment()` is the one place jaxseg calls `jax.distributed.initialize`. It
reads which launcher started this process, turns the launcher's variables into a `LaunchPlan`
(coordinator, number of processes, this process's id, the local GPUs it drives) and passes every
argument explicitly, with JAX's own cluster detection switched off: JAX's detection gives a
SLURM or Open MPI process one GPU (its local rank) even when it is the only task on a node of 8,
does not know Open MPI 5, and is never reached on TPU pods unless something calls it.

Each launcher is a pure function `env -> LaunchPlan | None` (None: not this launcher), so a test
asserts the plan without starting anything. `JAXSEG_LAUNCHER` picks one:

  auto (default)  the first launcher whose variables are present, in the order below;
  none            never start the runtime (one process);
  jax | k8s | openmpi | slurm | tpu | mpi4py   that launcher, or a ValueError naming what is
                  missing. mpi4py is never auto-detected (it needs `mpirun` and the package).

Launchers and the variables they read:

  jax      JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES, JAX_PROCESS_ID,
           optional JAX_LOCAL_DEVICE_IDS ("0,1"). Detected when JAX_PROCESS_ID is set, or
           JAX_NUM_PROCESSES without JOB_COMPLETION_INDEX.
  k8s      An Indexed Job (or one child Job of a JobSet): JOB_COMPLETION_INDEX (the process id,
           set by Kubernetes), JAX_NUM_PROCESSES (= the Job's parallelism and completions) and the
           coordinator in JAXSEG_COORDINATOR or JAX_COORDINATOR_ADDRESS, normally pod 0 behind a
           headless service: `<job>-0.<service>:<port>` (port 55527, JAX's k8s default, when
           none is given). Detected when JOB_COMPLETION_INDEX and one of those is set, so an
           indexed sweep of independent runs stays single-process. One pod = one process using
           all its GPUs.
  openmpi  `mpirun`/`mpiexec` of Open MPI 4 or 5: OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_RANK,
           OMPI_COMM_WORLD_LOCAL_RANK, OMPI_COMM_WORLD_LOCAL_SIZE. Checked before SLURM: ranks
           started by `mpirun` inside an allocation inherit the batch step's SLURM variables.
           The coordinator is, first found:
             1. JAXSEG_COORDINATOR or JAX_COORDINATOR_ADDRESS (pass it with `mpirun -x`);
             2. Open MPI 4: the host in OMPI_MCA_orte_hnp_uri (as JAX reads it);
             3. Open MPI 5 (PRRTE): the host in PMIX_NAMESPACE, `prterun-<host>-<pid>@<job>`;
             4. the first host of SLURM_JOB_NODELIST (`mpirun` inside a SLURM allocation).
           2 and 3 name the host where `mpirun` runs, so they are right when `mpirun` runs on
           the node of rank 0 (a batch script, or `--host` listing that node first); when it
           runs elsewhere (a login node) set JAX_COORDINATOR_ADDRESS. The port is
           JAX_COORDINATOR_PORT or one derived from the job's id, the same in every rank.
  slurm    A job step started by `srun`: SLURM_JOB_ID, SLURM_PROCID, SLURM_STEP_NODELIST (or
           SLURM_JOB_NODELIST), SLURM_STEP_NUM_TASKS (or SLURM_NTASKS), SLURM_LOCALID, the tasks
           on this node from SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE (e.g. `4(x2),1`,
           picked by SLURM_NODEID) or SLURM_NTASKS_PER_NODE. Coordinator: JAXSEG_COORDINATOR /
           JAX_COORDINATOR_ADDRESS, else the step's first host and JAX_COORDINATOR_PORT or
           JAX's port for the job id. A batch script's own shell (no `srun`) is one process.
  tpu      A Cloud TPU slice with several hosts: TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES
           naming several hosts (GKE), TPU_WORKER_ID or CLOUD_TPU_TASK_ID above 0, MEGASCALE_*
           of a multislice job, or a GCE Cloud TPU VM (`gcloud ... ssh --worker=all`) whose
           metadata server lists several workers (asked only on a Cloud TPU VM, as JAX does).
           `jax.distributed.initialize()` is then called with no arguments: JAX's own TPU
           detection fills them.
  mpi4py   Any MPI: rank and size from mpi4py's COMM_WORLD, the local rank from a shared-memory
           split, the coordinator `hostname:port` of rank 0 broadcast (or the override).

Local devices. One process per node (tasks on this node = 1) drives every GPU it sees
(`local_device_ids=None`). With several processes per node, the GPUs this process sees are
counted from CUDA_VISIBLE_DEVICES (else SLURM_GPUS_ON_NODE, else /dev/nvidiaN) and split: one
visible GPU (the launcher bound each task to its own) -> that one; as many as tasks -> the local
rank's; k times as many -> the local rank's k consecutive GPUs; nothing known -> the local
rank's (JAX's rule). JAX_LOCAL_DEVICE_IDS always wins. After start-up the number of local GPU
devices is compared with the plan and a mismatch is logged as a warning.

A single-process launch (one SLURM task, `mpirun -n 1`, JAX_NUM_PROCESSES=1) starts nothing.
Call this before anything touches a JAX device; a second call is a no-op.
"""
import dataclasses
import glob
import logging
import os
import re
import socket
import urllib.request
import zlib
from typing import Any, Callable, Mapping

import jax

logger = logging.getLogger(__name__)

LAUNCHER_ENV = 'JAXSEG_LAUNCHER'
COORDINATOR_ENV = 'JAXSEG_COORDINATOR'
_JAX_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
_JAX_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
_JAX_PROCESS_ID = 'JAX_PROCESS_ID'
_JAX_LOCAL_DEVICE_IDS = 'JAX_LOCAL_DEVICE_IDS'
_JAX_PORT = 'JAX_COORDINATOR_PORT'
_K8S_DEFAULT_PORT = 55527  # JAX's K8sCluster port.


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
  """What `jax.distributed.initialize` is called with.

  Attributes:
    launcher: 'jax', 'k8s', 'openmpi', 'slurm', 'tpu', 'mpi4py' (or 'preinitialized' when the
      runtime was started before jaxseg looked).
    coordinator_address: 'host:port' of process 0's coordinator; None only for 'tpu'.
    num_processes: processes in the job (None for 'tpu': JAX reads it from the TPU metadata).
    process_id: this process's id in [0, num_processes).
    local_device_ids: the local GPU ordinals (in this process's CUDA_VISIBLE_DEVICES view) this
      process drives; None = every local device.
    expected_local_devices: how many local GPUs the environment says this process should see,
      when it says (checked after start-up on GPU backends).
  """
  launcher: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None
  expected_local_devices: int | None = None

  @property
  def single_process(self) -> bool:
    return self.num_processes == 1

  def initialize_kwargs(self) -> dict[str, Any]:
    """Keyword arguments for `jax.distributed.initialize`."""
    if self.launcher == 'tpu':
      return {}  # JAX's TPU detection: GKE variables or the GCE metadata server.
    return {
        'coordinator_address': self.coordinator_address,
        'num_processes': self.num_processes,
        'process_id': self.process_id,
        'local_device_ids': None if self.local_device_ids is None else list(self.local_device_ids),
        # Without this JAX re-detects SLURM/Open MPI and, for local_device_ids=None, pins each
        # process to the GPU of its local rank: 7 of 8 GPUs idle with one task per node.
        'cluster_detection_method': 'deactivate',
    }


# ---------------------------------------------------------------- small parsers
def first_host(nodelist: str) -> str:
  """The first host of a SLURM hostlist: 'node[001-004,007],other' -> 'node001'.

  Handles several bracket groups ('rack[1-2]-gpu[03-04]' -> 'rack1-gpu03'), keeps zero padding.
  """
  depth, end, balanced = 0, len(nodelist), True
  for i, ch in enumerate(nodelist):
    if ch == '[':
      depth += 1
    elif ch == ']':
      depth -= 1
      balanced = balanced and depth >= 0
    elif ch == ',' and depth == 0:
      end = i
      break
  entry = nodelist[:end].strip()
  if not entry or not balanced or depth != 0:
    raise ValueError(f'Cannot read the first host of the SLURM node list {nodelist!r}.')
  return re.sub(r'\[([^\]]*)\]', lambda m: re.split(r'[,-]', m.group(1))[0], entry)


def expand_tasks_per_node(spec: str) -> list[int]:
  """SLURM's tasks-per-node syntax: '4(x2),1' -> [4, 4, 1]."""
  counts = []
  for part in spec.split(','):
    match = re.fullmatch(r'\s*(\d+)(?:\(x(\d+)\))?\s*', part)
    if match is None:
      raise ValueError(f'Cannot read the SLURM tasks-per-node value {spec!r}.')
    counts += [int(match.group(1))] * int(match.group(2) or 1)
  return counts


def count_visible_devices(value: str) -> int:
  """How many GPUs a CUDA_VISIBLE_DEVICES value makes visible ('' / '-1' / 'NoDevFiles': 0)."""
  value = value.strip()
  if value in ('', 'NoDevFiles') or value.startswith('-'):
    return 0
  return len([v for v in value.split(',') if v.strip()])


def _int(env: Mapping[str, str], name: str) -> int:
  try:
    return int(env[name])
  except ValueError:
    raise ValueError(f'{name}={env[name]!r} is not an integer.') from None


def _has_port(address: str) -> bool:
  if address.startswith('['):  # [IPv6]:port
    return re.search(r'\]:\d+$', address) is not None
  return address.count(':') == 1 and re.search(r':\d+$', address) is not None


def _with_port(host: str, port: int | str) -> str:
  if _has_port(host):
    return host
  if ':' in host and not host.startswith('['):  # Bare IPv6.
    host = f'[{host}]'
  return f'{host}:{port}'


def _port(env: Mapping[str, str], derived: int) -> str:
  return env.get(_JAX_PORT) or str(derived)


def _ephemeral_port(job_id: int) -> int:
  """JAX's choice for a job: one of the top 4096 ports, the same in every process."""
  return job_id % 2**12 + (65535 - 2**12 + 1)


def coordinator_override(env: Mapping[str, str]) -> str | None:
  """JAXSEG_COORDINATOR or JAX_COORDINATOR_ADDRESS (an error when both are set and differ)."""
  ours, jaxs = env.get(COORDINATOR_ENV), env.get(_JAX_COORDINATOR)
  if ours and jaxs and ours != jaxs:
    raise ValueError(f'{COORDINATOR_ENV}={ours!r} and {_JAX_COORDINATOR}={jaxs!r} disagree; '
                     'set one of them.')
  return ours or jaxs or None


def _user_device_ids(env: Mapping[str, str]) -> tuple[int, ...] | None:
  value = env.get(_JAX_LOCAL_DEVICE_IDS)
  if not value:
    return None
  try:
    return tuple(int(v) for v in value.split(','))
  except ValueError:
    raise ValueError(
        f'{_JAX_LOCAL_DEVICE_IDS}={value!r} must be comma-separated integers.') from None


def visible_gpus(env: Mapping[str, str], node_gpus: int | None = None) -> int | None:
  """GPUs this process can see: CUDA_VISIBLE_DEVICES, else SLURM_GPUS_ON_NODE, else node_gpus."""
  if 'CUDA_VISIBLE_DEVICES' in env:
    return count_visible_devices(env['CUDA_VISIBLE_DEVICES'])
  if env.get('SLURM_GPUS_ON_NODE'):
    return _int(env, 'SLURM_GPUS_ON_NODE')
  return node_gpus


def map_local_devices(local_rank: int, local_size: int, visible: int | None,
                      ) -> tuple[tuple[int, ...] | None, int | None]:
  """(local_device_ids, expected local GPU count) of local rank `local_rank` of `local_size`."""
  if not 0 <= local_rank < local_size:
    raise ValueError(f'Local rank {local_rank} is outside the {local_size} tasks on this node.')
  if local_size == 1:
    return None, visible or None
  if visible is None:
    return (local_rank,), 1
  if visible == 0:
    return None, None
  if visible == 1:  # The launcher bound each task to its own GPU.
    return None, 1
  if visible % local_size:
    raise ValueError(
        f'{local_size} processes on this node see {visible} GPUs, which do not split evenly. '
        'Start one process per node or one per GPU, or set JAX_LOCAL_DEVICE_IDS per process.')
  per_task = visible // local_size
  return tuple(range(local_rank * per_task, (local_rank + 1) * per_task)), per_task


def _local_devices(env, local_rank, local_size, node_gpus):
  user = _user_device_ids(env)
  if user is not None:
    return user, len(user)
  return map_local_devices(local_rank, local_size, visible_gpus(env, node_gpus))


# ---------------------------------------------------------------- launchers
def plan_jax(env: Mapping[str, str], forced: bool = False) -> LaunchPlan | None:
  """Plain `jax.distributed` variables (`forced`: JAXSEG_LAUNCHER=jax, so they must be set)."""
  if not forced and _JAX_PROCESS_ID not in env and (_JAX_NUM_PROCESSES not in env
                                                    or 'JOB_COMPLETION_INDEX' in env):
    return None
  missing = [n for n in (_JAX_COORDINATOR, _JAX_NUM_PROCESSES, _JAX_PROCESS_ID) if not env.get(n)]
  if missing:
    raise ValueError(
        f'A multi-process launch through jax.distributed variables needs {", ".join(missing)} '
        f'as well (got {_JAX_COORDINATOR}={env.get(_JAX_COORDINATOR)!r}, '
        f'{_JAX_NUM_PROCESSES}={env.get(_JAX_NUM_PROCESSES)!r}, '
        f'{_JAX_PROCESS_ID}={env.get(_JAX_PROCESS_ID)!r}); or unset them to let the '
        'SLURM/Open MPI/TPU detection run.')
  ids = _user_device_ids(env)
  return LaunchPlan('jax', env[_JAX_COORDINATOR], _int(env, _JAX_NUM_PROCESSES),
                    _int(env, _JAX_PROCESS_ID), ids, None if ids is None else len(ids))


def plan_k8s(env: Mapping[str, str]) -> LaunchPlan | None:
  """Kubernetes Indexed Job: JOB_COMPLETION_INDEX + JAX_NUM_PROCESSES + a coordinator."""
  if 'JOB_COMPLETION_INDEX' not in env or _JAX_PROCESS_ID in env:
    return None
  if not any(env.get(n) for n in (_JAX_NUM_PROCESSES, COORDINATOR_ENV, _JAX_COORDINATOR)):
    return None
  coordinator = coordinator_override(env)
  if not coordinator or not env.get(_JAX_NUM_PROCESSES):
    raise ValueError(
        'A Kubernetes Indexed Job launch needs JOB_COMPLETION_INDEX, JAX_NUM_PROCESSES (the '
        f'Job\'s parallelism) and {COORDINATOR_ENV} or {_JAX_COORDINATOR} (pod 0, e.g. '
        f'<job>-0.<headless-service>:1234); got {_JAX_NUM_PROCESSES}='
        f'{env.get(_JAX_NUM_PROCESSES)!r}, coordinator={coordinator!r}.')
  ids = _user_device_ids(env)
  return LaunchPlan('k8s', _with_port(coordinator, _port(env, _K8S_DEFAULT_PORT)),
                    _int(env, _JAX_NUM_PROCESSES), _int(env, 'JOB_COMPLETION_INDEX'), ids,
                    None if ids is None else len(ids))


_ORTE_URI = 'OMPI_MCA_orte_hnp_uri'
_PRRTE_NAMESPACE = re.compile(r'^[^-@]+-(?P<host>.+)-(?P<pid>\d+)@(?P<job>\d+)$')


def _openmpi_coordinator(env: Mapping[str, str]) -> str:
  override = coordinator_override(env)
  if override:
    return _with_port(override, _port(env, _ephemeral_port(0)))
  if _ORTE_URI in env:  # Open MPI 4: '1531576320.0;tcp://10.96.0.1,10.148.0.1:34911'.
    uri = env[_ORTE_URI]
    match = re.search(r'tcp://(.+?)[,:]|tcp6://\[(.+?)[,\]]', uri)
    if match is None:
      raise ValueError(f'Cannot read the mpirun host from {_ORTE_URI}={uri!r}; '
                       f'set {_JAX_COORDINATOR}=host:port and pass it with `mpirun -x`.')
    host = next(g for g in match.groups() if g is not None)
    # The ORTE job id is a multiple of 2**12 (JAX's formula).
    return _with_port(host, _port(env, _ephemeral_port(int(uri.split('.', 1)[0]) // 2**12)))
  match = _PRRTE_NAMESPACE.match(env.get('PMIX_NAMESPACE', ''))
  if match:  # Open MPI 5: the namespace names the host and pid of prterun (mpirun).
    port = _ephemeral_port(zlib.crc32(env['PMIX_NAMESPACE'].encode()))
    return _with_port(match.group('host'), _port(env, port))
  if env.get('SLURM_JOB_NODELIST'):
    port = _ephemeral_port(_int(env, 'SLURM_JOB_ID')) if env.get('SLURM_JOB_ID') else 61440
    return _with_port(first_host(env['SLURM_JOB_NODELIST']), _port(env, port))
  raise ValueError(
      'Cannot tell where Open MPI rank 0 runs: none of JAXSEG_COORDINATOR, '
      f'{_JAX_COORDINATOR}, {_ORTE_URI} (Open MPI 4), PMIX_NAMESPACE of the form '
      'prterun-<host>-<pid>@<job> (Open MPI 5) or SLURM_JOB_NODELIST is set. Run e.g. '
      f'`mpirun -x {_JAX_COORDINATOR}=<rank-0 host>:1234 ...`.')


def plan_openmpi(env: Mapping[str, str], node_gpus: int | None = None) -> LaunchPlan | None:
  """Open MPI 4 or 5 `mpirun`."""
  if 'OMPI_COMM_WORLD_SIZE' not in env:
    return None
  size = _int(env, 'OMPI_COMM_WORLD_SIZE')
  if size == 1:
    return LaunchPlan('openmpi', None, 1, 0)
  missing = [n for n in ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_LOCAL_RANK',
                         'OMPI_COMM_WORLD_LOCAL_SIZE') if n not in env]
  if missing:
    raise ValueError(f'Open MPI set OMPI_COMM_WORLD_SIZE={size} but not {", ".join(missing)}.')
  ids, expected = _local_devices(env, _int(env, 'OMPI_COMM_WORLD_LOCAL_RANK'),
                                 _int(env, 'OMPI_COMM_WORLD_LOCAL_SIZE'), node_gpus)
  return LaunchPlan('openmpi', _openmpi_coordinator(env), size,
                    _int(env, 'OMPI_COMM_WORLD_RANK'), ids, expected)


def _slurm_tasks_on_node(env: Mapping[str, str], num_tasks: int) -> int:
  for name in ('SLURM_STEP_TASKS_PER_NODE', 'SLURM_TASKS_PER_NODE'):
    if env.get(name):
      counts = expand_tasks_per_node(env[name])
      if len(set(counts)) == 1:
        return counts[0]
      if 'SLURM_NODEID' not in env:
        raise ValueError(f'{name}={env[name]!r} differs between nodes and SLURM_NODEID is unset.')
      node = _int(env, 'SLURM_NODEID')
      if node >= len(counts):
        raise ValueError(f'SLURM_NODEID={node} is outside {name}={env[name]!r}.')
      return counts[node]
  if env.get('SLURM_NTASKS_PER_NODE'):
    return _int(env, 'SLURM_NTASKS_PER_NODE')
  nodes = env.get('SLURM_STEP_NUM_NODES') or env.get('SLURM_JOB_NUM_NODES') or env.get(
      'SLURM_NNODES')
  if nodes and num_tasks % int(nodes) == 0:
    return num_tasks // int(nodes)
  raise ValueError('Cannot tell how many SLURM tasks run on this node: set '
                   'SLURM_STEP_TASKS_PER_NODE or SLURM_NTASKS_PER_NODE (srun --ntasks-per-node).')


def plan_slurm(env: Mapping[str, str], node_gpus: int | None = None) -> LaunchPlan | None:
  """A SLURM job step started by `srun`, one task per node or per GPU."""
  if 'SLURM_JOB_ID' not in env or 'SLURM_PROCID' not in env:
    return None
  if 'SLURM_STEP_NODELIST' not in env and 'SLURM_STEP_NUM_TASKS' not in env:
    # The batch script's own shell (or salloc's): one process, whatever --ntasks says.
    if int(env.get('SLURM_NTASKS', '1') or 1) > 1:
      logger.warning('SLURM_NTASKS=%s but this process was not started by srun: running as one '
                     'process. Launch with `srun python -m jaxseg ...` to use every task.',
                     env['SLURM_NTASKS'])
    return LaunchPlan('slurm', None, 1, 0)
  num_tasks = _int(env, 'SLURM_STEP_NUM_TASKS' if env.get('SLURM_STEP_NUM_TASKS')
                   else 'SLURM_NTASKS')
  if num_tasks == 1:
    return LaunchPlan('slurm', None, 1, 0)
  local_rank = _int(env, 'SLURM_LOCALID') if 'SLURM_LOCALID' in env else None
  if local_rank is None:
    raise ValueError('A multi-task SLURM step needs SLURM_LOCALID (set by srun).')
  ids, expected = _local_devices(env, local_rank, _slurm_tasks_on_node(env, num_tasks), node_gpus)
  override = coordinator_override(env)
  port = _port(env, _ephemeral_port(_int(env, 'SLURM_JOB_ID')))
  if override:
    coordinator = _with_port(override, port)
  else:
    nodelist = env.get('SLURM_STEP_NODELIST') or env.get('SLURM_JOB_NODELIST')
    if not nodelist:
      raise ValueError('A multi-task SLURM step needs SLURM_STEP_NODELIST or SLURM_JOB_NODELIST, '
                       f'or the coordinator in {_JAX_COORDINATOR}.')
    coordinator = _with_port(first_host(nodelist), port)
  return LaunchPlan('slurm', coordinator, num_tasks, _int(env, 'SLURM_PROCID'), ids, expected)


def _host_count(value: str | None) -> int:
  return len([h for h in (value or '').split(',') if h.strip()])


def plan_tpu(env: Mapping[str, str], gce_tpu_workers: int | None = None) -> LaunchPlan | None:
  """A multi-host Cloud TPU slice (GKE variables, multislice variables, or a GCE TPU VM).

  Args:
    env: the environment.
    gce_tpu_workers: on a GCE Cloud TPU VM, the number of workers its metadata server lists
      (None elsewhere).
  """
  hosts = env.get('TPU_PROCESS_ADDRESSES') or env.get('TPU_WORKER_HOSTNAMES')
  multislice = (bool(env.get('MEGASCALE_COORDINATOR_ADDRESS'))
                or (bool(env.get('MEGASCALE_NUM_SLICES'))
                    and _int(env, 'MEGASCALE_NUM_SLICES') > 1))
  worker_above_0 = any(_int(env, n) > 0 for n in ('TPU_WORKER_ID', 'CLOUD_TPU_TASK_ID')
                       if env.get(n))
  if hosts is not None:
    if _host_count(hosts) > 1 or multislice or worker_above_0:
      return LaunchPlan('tpu')
    return LaunchPlan('tpu', None, 1, 0)  # A single-host slice.
  if multislice or worker_above_0 or (gce_tpu_workers or 0) > 1:
    return LaunchPlan('tpu')
  if gce_tpu_workers == 1:
    return LaunchPlan('tpu', None, 1, 0)
  return None


def plan_mpi4py(env: Mapping[str, str], comm: Any, local_comm: Any,
                node_gpus: int | None = None) -> LaunchPlan:
  """Any MPI through mpi4py communicators: COMM_WORLD and its shared-memory (per node) split."""
  size, rank = comm.Get_size(), comm.Get_rank()
  if size == 1:
    return LaunchPlan('mpi4py', None, 1, 0)
  ids, expected = _local_devices(env, local_comm.Get_rank(), local_comm.Get_size(), node_gpus)
  override = coordinator_override(env)
  address = None
  if rank == 0:
    host = override or socket.gethostname()
    address = _with_port(host, _port(env, _ephemeral_port(zlib.crc32(host.encode()))))
  address = comm.bcast(address, root=0)
  return LaunchPlan('mpi4py', address, size, rank, ids, expected)


def _mpi4py_communicators():
  from mpi4py import MPI  # pylint: disable=g-import-not-at-top  (only for JAXSEG_LAUNCHER=mpi4py)
  world = MPI.COMM_WORLD
  return world, world.Split_type(MPI.COMM_TYPE_SHARED)


def _count_nvidia_devices(dev: str = '/dev') -> int | None:
  count = len(glob.glob(os.path.join(dev, 'nvidia[0-9]*')))
  return count or None


def _gce_tpu_workers(env: Mapping[str, str]) -> int | None:
  """Workers of this GCE Cloud TPU VM's slice, from its metadata server (None: not one)."""
  # Set by `import jax` (jax/__init__ runs cloud_tpu_init): libtpu present and TPU chips on
  # PCI. Reading JAX's flag keeps the chip list in one place.
  from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  if (not cloud_tpu_init.running_in_cloud_tpu_vm or 'TPU_SKIP_MDS_QUERY' in env
      or env.get('TPU_WORKER_HOSTNAMES') or env.get('TPU_PROCESS_ADDRESSES')):
    return None
  host = env.get('GCE_METADATA_IP', 'metadata.google.internal')
  request = urllib.request.Request(
      f'http://{host}/computeMetadata/v1/instance/attributes/worker-network-endpoints',
      headers={'Metadata-Flavor': 'Google'})
  try:
    with urllib.request.urlopen(request, timeout=10) as response:
      endpoints = response.read().decode()
  except OSError as e:  # Not GCE (e.g. a TPU VM elsewhere): JAX could not ask either.
    logger.warning('Cloud TPU VM without a metadata server (%s): not starting jax.distributed; '
                   'set TPU_WORKER_HOSTNAMES and TPU_WORKER_ID for a multi-host slice.', e)
    return None
  return _host_count(endpoints)


_AUTO_ORDER = ('jax', 'k8s', 'openmpi', 'slurm', 'tpu')
LAUNCHERS = ('auto', 'none') + _AUTO_ORDER + ('mpi4py',)

_REQUIREMENTS = {
    'jax': 'JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID',
    'k8s': 'JOB_COMPLETION_INDEX, JAX_NUM_PROCESSES and JAXSEG_COORDINATOR',
    'openmpi': 'OMPI_COMM_WORLD_SIZE/RANK/LOCAL_RANK/LOCAL_SIZE (start with mpirun)',
    'slurm': 'SLURM_JOB_ID and SLURM_PROCID (start with srun)',
    'tpu': 'TPU_WORKER_HOSTNAMES/TPU_WORKER_ID, MEGASCALE_* or a multi-host GCE TPU VM',
}


def plan_from_environment(
    env: Mapping[str, str],
    *,
    gce_tpu_workers: Callable[[], int | None] = lambda: None,
    node_gpus: int | None = None,
    mpi_communicators: Callable[[], tuple[Any, Any]] = _mpi4py_communicators,
) -> LaunchPlan | None:
  """The launch plan of this process, or None when there is nothing to start.

  Args:
    env: the environment (os.environ).
    gce_tpu_workers: () -> on a GCE Cloud TPU VM, the workers its metadata server lists (asked
      only when the TPU launcher is considered).
    node_gpus: GPUs on this node when no variable says (from /dev/nvidiaN).
    mpi_communicators: () -> (COMM_WORLD, per-node communicator), for JAXSEG_LAUNCHER=mpi4py.

  Raises:
    ValueError: an unknown JAXSEG_LAUNCHER, a forced launcher whose variables are absent, or a
      launcher's variables that are incomplete or contradictory (the message names the variables).
  """
  choice = (env.get(LAUNCHER_ENV) or 'auto').strip().lower()
  if choice not in LAUNCHERS:
    raise ValueError(
        f'{LAUNCHER_ENV}={env[LAUNCHER_ENV]!r}; expected one of {", ".join(LAUNCHERS)}.')
  planners = {
      'jax': lambda: plan_jax(env),
      'k8s': lambda: plan_k8s(env),
      'openmpi': lambda: plan_openmpi(env, node_gpus),
      'slurm': lambda: plan_slurm(env, node_gpus),
      'tpu': lambda: plan_tpu(env, gce_tpu_workers()),
  }
  if choice == 'none':
    return None
  if choice == 'mpi4py':
    plan = plan_mpi4py(env, *mpi_communicators(), node_gpus=node_gpus)
  elif choice == 'auto':
    plan = next((p for p in (planners[name]() for name in _AUTO_ORDER) if p is not None), None)
  else:
    plan = plan_jax(env, forced=True) if choice == 'jax' else planners[choice]()
    if plan is None:
      raise ValueError(f'{LAUNCHER_ENV}={choice} but this process was not started that way: '
                       f'it needs {_REQUIREMENTS[choice]}.')
  if plan is None or plan.single_process:
    return None
  return plan


# ---------------------------------------------------------------- start-up
_active_plan: LaunchPlan | None = None


def device_count_problem(plan: LaunchPlan, backend: str, local_device_count: int) -> str | None:
  """Why the local device count differs from the plan's (None when it agrees or cannot tell)."""
  if backend not in ('gpu', 'cuda', 'rocm') or plan.expected_local_devices is None:
    return None
  if local_device_count == plan.expected_local_devices:
    return None
  problem = (f'{plan.launcher} launch: process {plan.process_id} of {plan.num_processes} '
             f'drives {local_device_count} GPU(s) but its environment makes '
             f'{plan.expected_local_devices} visible to it')
  if plan.local_device_ids is None and local_device_count == 1:
    problem += (' — one process per node is using 1 GPU and the others idle. Check '
                'CUDA_VISIBLE_DEVICES / --gpus-per-task, or set JAX_LOCAL_DEVICE_IDS.')
  return problem + '.'


def initialize_from_environment(
    env: Mapping[str, str] | None = None,
    *,
    gce_tpu_workers: int | None = None,
    node_gpus: int | None = None,
) -> LaunchPlan | None:
  """Starts JAX's multi-controller runtime when the launcher started several processes.

  Args:
    env: the environment (default os.environ).
    gce_tpu_workers: workers of this GCE Cloud TPU VM's slice (default: asked of the metadata
      server on a Cloud TPU VM only, as JAX would).
    node_gpus: GPUs on this node when no variable says (default: count /dev/nvidiaN).

  Returns:
    The plan it started (also on a repeated call), or None for a single-process run.

  Raises:
    ValueError: see `plan_from_environment`.
    RuntimeError: from JAX, when a device was touched before this call.
  """
  global _active_plan
  if jax.distributed.is_initialized():
    return _active_plan or LaunchPlan('preinitialized')
  env = os.environ if env is None else env
  plan = plan_from_environment(
      env, gce_tpu_workers=lambda: (_gce_tpu_workers(env) if gce_tpu_workers is None
                                    else gce_tpu_workers),
      node_gpus=_count_nvidia_devices() if node_gpus is None else node_gpus)
  if plan is None:
    return None
  logger.info('Starting jax.distributed (%s): process %s of %s, coordinator %s, local devices %s.',
              plan.launcher, plan.process_id, plan.num_processes, plan.coordinator_address,
              'all' if plan.local_device_ids is None else list(plan.local_device_ids))
  jax.distributed.initialize(**plan.initialize_kwargs())
  _active_plan = plan
  if plan.expected_local_devices is not None:  # Starts the backend: after initialize only.
    problem = device_count_problem(plan, jax.default_backend(), jax.local_device_count())
    if problem:
      logger.warning(problem)
  return plan

