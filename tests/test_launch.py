"""Launcher environments -> the exact jax.distributed.initialize arguments (nothing is started).

Where JAX parses the same variables (SLURM node lists, the Open MPI 4 URI), JAX's own cluster
classes are the reference; the two-process run through this path is tests/test_parallel.py.
"""
import importlib.util
import inspect
import logging
import os
from unittest import mock

import jax
import pytest
from jax._src import clusters

from jaxseg import launch

GPUS = '0,1,2,3,4,5,6,7'


def plan(env, **kwargs):
  return launch.plan_from_environment(env, **kwargs)


def kwargs_of(env, **kwargs):
  return plan(env, **kwargs).initialize_kwargs()


def slurm_env(**overrides):
  env = {'SLURM_JOB_ID': '123456', 'SLURM_NTASKS': '2', 'SLURM_STEP_NUM_TASKS': '2',
         'SLURM_PROCID': '1', 'SLURM_LOCALID': '0', 'SLURM_NODEID': '1',
         'SLURM_STEP_NODELIST': 'gpu[007-008]', 'SLURM_JOB_NODELIST': 'gpu[007-008]',
         'SLURM_STEP_NUM_NODES': '2', 'SLURM_STEP_TASKS_PER_NODE': '1(x2)',
         'SLURM_GPUS_ON_NODE': '8', 'CUDA_VISIBLE_DEVICES': GPUS}
  env.update(overrides)
  return {k: v for k, v in env.items() if v is not None}


def ompi_env(**overrides):
  env = {'OMPI_COMM_WORLD_SIZE': '4', 'OMPI_COMM_WORLD_RANK': '2',
         'OMPI_COMM_WORLD_LOCAL_RANK': '0', 'OMPI_COMM_WORLD_LOCAL_SIZE': '1'}
  env.update(overrides)
  return {k: v for k, v in env.items() if v is not None}


def jax_reference(monkeypatch, env, cluster, port=None):
  """What JAX's own cluster class reads from `env`: (coordinator, local process id), or
  (False, False) when it does not recognise the environment."""
  for name in list(os.environ):
    if name.startswith(('SLURM_', 'OMPI_', 'PMIX_', 'JAX_')):
      monkeypatch.delenv(name)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  if not cluster.is_env_present():
    return False, False
  return cluster.get_coordinator_address(None, port), cluster.get_local_process_id()


# ---------------------------------------------------------------- parsers
@pytest.mark.parametrize('nodelist, host', [
    ('node001', 'node001'), ('node001,host2', 'node001'), ('node[001-0015],host2', 'node001'),
    ('node[001,007-015],host2', 'node001'), ('node[001-004,007],other', 'node001'),
    ('node[007,001-003]', 'node007'), ('gpu-a100-[12-13]', 'gpu-a100-12')])
def test_first_host_matches_jax(monkeypatch, nodelist, host):
  assert launch.first_host(nodelist) == host
  coordinator, _ = jax_reference(monkeypatch, {
      'SLURM_JOB_ID': '1', 'SLURM_STEP_NODELIST': nodelist, 'SLURM_NTASKS': '2',
      'SLURM_PROCID': '0', 'SLURM_LOCALID': '0'}, clusters.SlurmCluster)
  assert coordinator == f'{host}:{1 % 4096 + 61440}'


def test_first_host_beyond_jax_and_errors():
  assert launch.first_host('rack[1-2]-gpu[03-04],x[1-3]') == 'rack1-gpu03'
  for bad in ('', ',node1', 'node[001', 'node]1['):
    with pytest.raises(ValueError, match='SLURM node list'):
      launch.first_host(bad)


def test_tasks_per_node_and_visible_devices():
  assert launch.expand_tasks_per_node('4(x2),1') == [4, 4, 1]
  assert launch.expand_tasks_per_node('8') == [8]
  with pytest.raises(ValueError, match='tasks-per-node'):
    launch.expand_tasks_per_node('4(2)')
  assert [launch.count_visible_devices(v) for v in (GPUS, '3', '', '-1', 'NoDevFiles',
                                                    'GPU-8a1b,GPU-77cd', 'MIG-1f2e')] == [
      8, 1, 0, 0, 0, 2, 1]


@pytest.mark.parametrize('rank, size, visible, expected', [
    (0, 1, 8, (None, 8)),            # One process per node: all its GPUs.
    (0, 1, None, (None, None)),
    (3, 8, 8, ((3,), 1)),            # One per GPU, every task sees all of them.
    (3, 8, 1, (None, 1)),            # One per GPU, the launcher bound each task to its GPU.
    (1, 2, 8, ((4, 5, 6, 7), 4)),    # Two per node: four GPUs each.
    (5, 8, None, ((5,), 1)),         # Unknown GPUs: JAX's rule (local rank).
    (1, 2, 0, (None, None)),         # No GPUs (CUDA_VISIBLE_DEVICES=''): a CPU run.
])
def test_map_local_devices(rank, size, visible, expected):
  assert launch.map_local_devices(rank, size, visible) == expected


def test_map_local_devices_errors():
  with pytest.raises(ValueError, match='do not split evenly'):
    launch.map_local_devices(0, 3, 8)
  with pytest.raises(ValueError, match='outside'):
    launch.map_local_devices(2, 2, 8)


# ---------------------------------------------------------------- jax / k8s
def test_plain_jax_variables():
  env = {'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'JAX_NUM_PROCESSES': '4',
         'JAX_PROCESS_ID': '3'}
  assert kwargs_of(env) == {'coordinator_address': '10.0.0.1:1234', 'num_processes': 4,
                            'process_id': 3, 'local_device_ids': None,
                            'cluster_detection_method': 'deactivate'}
  assert kwargs_of({**env, 'JAX_LOCAL_DEVICE_IDS': '2,3'})['local_device_ids'] == [2, 3]
  assert plan({**env, 'JAX_NUM_PROCESSES': '1', 'JAX_PROCESS_ID': '0'}) is None


def test_plain_jax_incomplete_names_the_missing_variables():
  with pytest.raises(ValueError, match='JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID'):
    plan({'JAX_NUM_PROCESSES': '2'})
  # Half a jax.distributed env inside a SLURM step is ambiguous: an error, not a guess.
  with pytest.raises(ValueError, match='JAX_PROCESS_ID.*SLURM/Open MPI/TPU detection'):
    plan(slurm_env(JAX_NUM_PROCESSES='2', JAX_COORDINATOR_ADDRESS='a:1'))


def test_kubernetes_indexed_job():
  env = {'JOB_COMPLETION_INDEX': '3', 'JAX_NUM_PROCESSES': '4',
         'JAXSEG_COORDINATOR': 'train-0.train-svc'}
  p = plan(env)
  assert (p.launcher, p.coordinator_address, p.num_processes, p.process_id) == (
      'k8s', 'train-0.train-svc:55527', 4, 3)
  assert plan({**env, 'JAX_COORDINATOR_PORT': '8476'}).coordinator_address == (
      'train-0.train-svc:8476')
  assert plan({**env, 'JAXSEG_COORDINATOR': 'train-0.train-svc:1234'}).coordinator_address == (
      'train-0.train-svc:1234')
  assert plan({'JOB_COMPLETION_INDEX': '3'}) is None  # An indexed sweep of independent runs.
  with pytest.raises(ValueError, match='JAX_NUM_PROCESSES'):
    plan({'JOB_COMPLETION_INDEX': '3', 'JAXSEG_COORDINATOR': 'train-0.svc:1'})
  with pytest.raises(ValueError, match='JAXSEG_COORDINATOR or JAX_COORDINATOR_ADDRESS'):
    plan({'JOB_COMPLETION_INDEX': '3', 'JAX_NUM_PROCESSES': '4'})
  with pytest.raises(ValueError, match='disagree'):
    plan({**env, 'JAX_COORDINATOR_ADDRESS': 'other:1'})


# ---------------------------------------------------------------- SLURM
def test_slurm_one_task_per_node_uses_every_gpu(monkeypatch):
  env = slurm_env()
  port = 123456 % 4096 + 61440
  assert kwargs_of(env) == {'coordinator_address': f'gpu007:{port}', 'num_processes': 2,
                            'process_id': 1, 'local_device_ids': None,
                            'cluster_detection_method': 'deactivate'}
  assert plan(env).expected_local_devices == 8
  # JAX's own detection: same coordinator, but pins this only task of the node to GPU 0.
  coordinator, local_id = jax_reference(monkeypatch, env, clusters.SlurmCluster)
  assert coordinator == f'gpu007:{port}' and local_id == 0
  assert jax_reference(monkeypatch, env, clusters.SlurmCluster, port='7000')[0] == 'gpu007:7000'
  assert plan({**env, 'JAX_COORDINATOR_PORT': '7000'}).coordinator_address == 'gpu007:7000'


@pytest.mark.parametrize('overrides, ids, expected', [
    ({}, [3], 1),                                             # --gpus-per-node=8
    ({'CUDA_VISIBLE_DEVICES': '3'}, None, 1),                  # --gpus-per-task=1 (bound)
    ({'CUDA_VISIBLE_DEVICES': None}, [3], 1),                  # SLURM_GPUS_ON_NODE=8
    ({'CUDA_VISIBLE_DEVICES': None, 'SLURM_GPUS_ON_NODE': None}, [3], 1),
    ({'JAX_LOCAL_DEVICE_IDS': '6'}, [6], 1),                   # The user's choice wins.
])
def test_slurm_one_task_per_gpu(overrides, ids, expected):
  env = slurm_env(SLURM_NTASKS='16', SLURM_STEP_NUM_TASKS='16', SLURM_PROCID='11',
                  SLURM_LOCALID='3', SLURM_STEP_TASKS_PER_NODE='8(x2)', **overrides)
  p = plan(env)
  assert (p.num_processes, p.process_id) == (16, 11)
  assert p.initialize_kwargs()['local_device_ids'] == ids
  assert p.expected_local_devices == expected


def test_slurm_tasks_per_node_sources():
  # Uneven steps: this node (SLURM_NODEID=1) runs 1 of the 3 tasks, so it drives all 8 GPUs.
  p = plan(slurm_env(SLURM_STEP_NUM_TASKS='3', SLURM_STEP_TASKS_PER_NODE='2,1'))
  assert p.local_device_ids is None and p.expected_local_devices == 8
  p = plan(slurm_env(SLURM_STEP_NUM_TASKS='3', SLURM_STEP_TASKS_PER_NODE='2,1',
                     SLURM_NODEID='0', SLURM_LOCALID='1'))
  assert p.local_device_ids == (4, 5, 6, 7)
  p = plan(slurm_env(SLURM_STEP_NUM_TASKS='4', SLURM_STEP_TASKS_PER_NODE=None,
                     SLURM_NTASKS_PER_NODE='2', SLURM_LOCALID='1'))
  assert p.local_device_ids == (4, 5, 6, 7)
  p = plan(slurm_env(SLURM_STEP_NUM_TASKS='16', SLURM_STEP_TASKS_PER_NODE=None, SLURM_LOCALID='7'))
  assert p.local_device_ids == (7,)  # 16 tasks over SLURM_STEP_NUM_NODES=2.
  with pytest.raises(ValueError, match='SLURM_NODEID'):
    plan(slurm_env(SLURM_STEP_TASKS_PER_NODE='2,1', SLURM_NODEID=None))
  with pytest.raises(ValueError, match='do not split evenly'):
    plan(slurm_env(SLURM_STEP_NUM_TASKS='6', SLURM_STEP_TASKS_PER_NODE='3(x2)'))


def test_slurm_single_task_and_batch_shell_start_nothing(caplog):
  assert plan(slurm_env(SLURM_NTASKS='1', SLURM_STEP_NUM_TASKS='1', SLURM_PROCID='0')) is None
  batch = {k: v for k, v in slurm_env(SLURM_NTASKS='4', SLURM_PROCID='0').items()
           if not k.startswith('SLURM_STEP_')}
  with caplog.at_level(logging.WARNING, logger='jaxseg.launch'):
    assert plan(batch) is None
  assert 'not started by srun' in caplog.text


def test_slurm_coordinator_override():
  env = slurm_env(JAX_COORDINATOR_ADDRESS='10.1.2.3')
  assert plan(env).coordinator_address == f'10.1.2.3:{123456 % 4096 + 61440}'
  assert plan(slurm_env(JAXSEG_COORDINATOR='[fe80::1]:99')).coordinator_address == '[fe80::1]:99'
  assert plan(slurm_env(JAXSEG_COORDINATOR='fe80::1')).coordinator_address.startswith(
      '[fe80::1]:')


# ---------------------------------------------------------------- Open MPI
ORTE_URI = '1531576320.0;tcp://10.96.0.1,10.148.0.1,10.108.0.1:34911'


def test_openmpi4_matches_jax_coordinator(monkeypatch):
  env = ompi_env(OMPI_MCA_orte_hnp_uri=ORTE_URI, CUDA_VISIBLE_DEVICES=GPUS)
  coordinator, _ = jax_reference(monkeypatch, env, clusters.OmpiCluster)
  assert kwargs_of(env) == {'coordinator_address': coordinator, 'num_processes': 4,
                            'process_id': 2, 'local_device_ids': None,
                            'cluster_detection_method': 'deactivate'}
  assert coordinator.startswith('10.96.0.1:')
  ipv6 = '1314521088.0;tcp6://[fe80::b9b:ac5d:9cf0:b858,2620:10d:c083:150e::3000:2]:43370'
  coordinator, _ = jax_reference(monkeypatch, ompi_env(OMPI_MCA_orte_hnp_uri=ipv6),
                                 clusters.OmpiCluster)
  assert plan(ompi_env(OMPI_MCA_orte_hnp_uri=ipv6)).coordinator_address == (
      '[' + coordinator.rsplit(':', 1)[0] + ']:' + coordinator.rsplit(':', 1)[1])


def test_openmpi5_coordinator_from_the_prrte_namespace(monkeypatch):
  env = ompi_env(PMIX_NAMESPACE='prterun-gpu-node-7-41234@1', PMIX_RANK='2')
  assert not jax_reference(monkeypatch, env, clusters.OmpiCluster)[0]  # JAX misses Open MPI 5.
  host, port = plan(env).coordinator_address.split(':')
  assert host == 'gpu-node-7' and 61440 <= int(port) <= 65535
  assert plan(dict(env, OMPI_COMM_WORLD_RANK='0')).coordinator_address == f'{host}:{port}'
  assert plan({**env, 'JAX_COORDINATOR_PORT': '1234'}).coordinator_address == 'gpu-node-7:1234'
  assert plan({**env, 'JAX_COORDINATOR_ADDRESS': '10.0.0.5:999'}).coordinator_address == (
      '10.0.0.5:999')


def test_openmpi5_coordinator_fallbacks_and_error():
  inside_slurm = ompi_env(SLURM_JOB_ID='77', SLURM_JOB_NODELIST='n[3-4]', SLURM_PROCID='0',
                          SLURM_NTASKS='4', SLURM_LOCALID='0')
  p = plan(inside_slurm)
  # mpirun's ranks inherit the batch step's SLURM_PROCID=0: Open MPI's rank is the one used.
  assert (p.launcher, p.process_id, p.coordinator_address) == ('openmpi', 2, f'n3:{77 + 61440}')
  with pytest.raises(ValueError, match='mpirun -x JAX_COORDINATOR_ADDRESS'):
    plan(ompi_env())
  with pytest.raises(ValueError, match='OMPI_COMM_WORLD_LOCAL_SIZE'):
    plan(ompi_env(OMPI_COMM_WORLD_LOCAL_SIZE=None, JAX_COORDINATOR_ADDRESS='a:1'))
  assert plan({'OMPI_COMM_WORLD_SIZE': '1', 'OMPI_COMM_WORLD_RANK': '0'}) is None


def test_openmpi_one_process_per_gpu():
  env = ompi_env(OMPI_COMM_WORLD_SIZE='16', OMPI_COMM_WORLD_RANK='13',
                 OMPI_COMM_WORLD_LOCAL_RANK='5', OMPI_COMM_WORLD_LOCAL_SIZE='8',
                 JAX_COORDINATOR_ADDRESS='head:1234')
  assert plan(env, node_gpus=8).local_device_ids == (5,)  # From /dev/nvidiaN.
  assert plan({**env, 'CUDA_VISIBLE_DEVICES': GPUS}).local_device_ids == (5,)
  assert plan({**env, 'CUDA_VISIBLE_DEVICES': '5'}).local_device_ids is None


# ---------------------------------------------------------------- mpi4py
class FakeComm:
  """The part of an mpi4py communicator that plan_mpi4py uses."""

  def __init__(self, rank, size, root_value=None):
    self.rank, self.size, self.root_value = rank, size, root_value

  def Get_rank(self):  # noqa: N802 (mpi4py's name)
    return self.rank

  def Get_size(self):  # noqa: N802
    return self.size

  def bcast(self, value, root):
    assert root == 0
    return value if self.rank == 0 else self.root_value


def test_mpi4py_plan(monkeypatch):
  monkeypatch.setattr(launch.socket, 'gethostname', lambda: 'rank0host')
  env = {'JAXSEG_LAUNCHER': 'mpi4py', 'CUDA_VISIBLE_DEVICES': GPUS}
  root = plan(env, mpi_communicators=lambda: (FakeComm(0, 16), FakeComm(0, 8)))
  assert root.coordinator_address.startswith('rank0host:') and root.local_device_ids == (0,)
  other = plan(env, mpi_communicators=lambda: (
      FakeComm(9, 16, root.coordinator_address), FakeComm(1, 8)))
  assert (other.coordinator_address, other.process_id, other.num_processes,
          other.local_device_ids) == (root.coordinator_address, 9, 16, (1,))
  assert plan(env, mpi_communicators=lambda: (FakeComm(0, 1), FakeComm(0, 1))) is None


@pytest.mark.skipif(importlib.util.find_spec('mpi4py') is not None,
                    reason='mpi4py is installed: the forced launcher would really use MPI')
def test_mpi4py_missing_is_an_import_error():
  with pytest.raises(ImportError, match='mpi4py'):
    plan({'JAXSEG_LAUNCHER': 'mpi4py'})


# ---------------------------------------------------------------- TPU
def test_tpu_pods_use_jax_detection():
  gke = {'TPU_WORKER_HOSTNAMES': 't-0,t-1,t-2,t-3', 'TPU_WORKER_ID': '2'}
  assert plan(gke).launcher == 'tpu' and plan(gke).initialize_kwargs() == {}
  assert plan({'TPU_WORKER_HOSTNAMES': 't-0', 'TPU_WORKER_ID': '0'}) is None  # One host.
  assert plan({'MEGASCALE_NUM_SLICES': '2', 'TPU_WORKER_ID': '0'}).launcher == 'tpu'
  assert plan({'CLOUD_TPU_TASK_ID': '1'}).launcher == 'tpu'
  assert plan({}, gce_tpu_workers=lambda: 4).launcher == 'tpu'  # GCE: from the metadata.
  assert plan({}, gce_tpu_workers=lambda: 1) is None
  assert plan({}) is None


def test_tpu_metadata_is_asked_only_when_tpu_is_considered():
  asked = []

  def workers():
    asked.append(1)
    return 4

  assert plan(slurm_env(), gce_tpu_workers=workers).launcher == 'slurm'
  assert plan({'JAXSEG_LAUNCHER': 'none'}, gce_tpu_workers=workers) is None
  assert not asked
  assert plan({}, gce_tpu_workers=workers).launcher == 'tpu' and asked


# ---------------------------------------------------------------- forcing
def test_forced_launchers():
  both = {**slurm_env(), **ompi_env(OMPI_MCA_orte_hnp_uri=ORTE_URI)}
  assert plan(both).launcher == 'openmpi'
  assert plan({**both, 'JAXSEG_LAUNCHER': 'slurm'}).launcher == 'slurm'
  assert plan({**both, 'JAXSEG_LAUNCHER': 'none'}) is None
  assert plan({**both, 'JAXSEG_LAUNCHER': ' Auto '}).launcher == 'openmpi'
  with pytest.raises(ValueError, match='JAXSEG_LAUNCHER=slurm.*srun'):
    plan({'JAXSEG_LAUNCHER': 'slurm'})
  with pytest.raises(ValueError, match='JAXSEG_LAUNCHER=tpu'):
    plan({'JAXSEG_LAUNCHER': 'tpu'})
  with pytest.raises(ValueError, match='JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROC'):
    plan({**slurm_env(), 'JAXSEG_LAUNCHER': 'jax'})
  with pytest.raises(ValueError, match='expected one of auto, none, jax'):
    plan({'JAXSEG_LAUNCHER': 'pbs'})


def test_kwargs_fit_jax_distributed_initialize():
  signature = inspect.signature(jax.distributed.initialize)
  for env in (slurm_env(), {'TPU_WORKER_HOSTNAMES': 'a,b', 'TPU_WORKER_ID': '1'},
              ompi_env(OMPI_MCA_orte_hnp_uri=ORTE_URI)):
    signature.bind(**kwargs_of(env))


# ---------------------------------------------------------------- initialize_from_environment
@pytest.fixture
def fake_runtime(monkeypatch):
  """jax.distributed.initialize mocked; is_initialized() turns True once it was called."""
  monkeypatch.setattr(launch, '_active_plan', None)
  with mock.patch('jax.distributed.initialize') as initialize, \
       mock.patch('jax.distributed.is_initialized', side_effect=lambda: initialize.called):
    yield initialize


def test_initialize_passes_the_plan_and_is_idempotent(fake_runtime):
  env = slurm_env(SLURM_NTASKS='16', SLURM_STEP_NUM_TASKS='16', SLURM_PROCID='11',
                  SLURM_LOCALID='3', SLURM_STEP_TASKS_PER_NODE='8(x2)')
  started = launch.initialize_from_environment(env, gce_tpu_workers=0, node_gpus=0)
  fake_runtime.assert_called_once_with(
      coordinator_address=f'gpu007:{123456 % 4096 + 61440}', num_processes=16, process_id=11,
      local_device_ids=[3], cluster_detection_method='deactivate')
  assert launch.initialize_from_environment(env) is started
  assert fake_runtime.call_count == 1


def test_initialize_tpu_without_arguments(fake_runtime):
  launch.initialize_from_environment({'TPU_WORKER_HOSTNAMES': 'a,b', 'TPU_WORKER_ID': '1'})
  fake_runtime.assert_called_once_with()


def test_initialize_single_process_starts_nothing(fake_runtime):
  for env in ({}, slurm_env(SLURM_NTASKS='1', SLURM_STEP_NUM_TASKS='1', SLURM_PROCID='0'),
              {'OMPI_COMM_WORLD_SIZE': '1'}, {'JOB_COMPLETION_INDEX': '0'}):
    assert launch.initialize_from_environment(env, gce_tpu_workers=0, node_gpus=0) is None
  fake_runtime.assert_not_called()


def test_initialize_warns_when_one_process_per_node_sees_one_gpu(fake_runtime, caplog):
  with mock.patch('jax.default_backend', return_value='gpu'), \
       mock.patch('jax.local_device_count', return_value=1), \
       caplog.at_level(logging.WARNING, logger='jaxseg.launch'):
    launch.initialize_from_environment(slurm_env(), gce_tpu_workers=0, node_gpus=0)
  assert 'drives 1 GPU(s)' in caplog.text and 'one process per node' in caplog.text


def test_device_count_problem():
  per_node = plan(slurm_env())
  assert launch.device_count_problem(per_node, 'gpu', 8) is None
  assert launch.device_count_problem(per_node, 'cpu', 1) is None  # No GPU backend: no claim.
  assert 'one process per node' in launch.device_count_problem(per_node, 'gpu', 1)
  per_gpu = plan(slurm_env(SLURM_STEP_NUM_TASKS='16', SLURM_STEP_TASKS_PER_NODE='8(x2)'))
  assert launch.device_count_problem(per_gpu, 'gpu', 1) is None
  assert 'drives 8 GPU(s)' in launch.device_count_problem(per_gpu, 'gpu', 8)
