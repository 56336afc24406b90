"""Test-session setup.

The suite runs on 8 simulated CPU devices whatever the machine has: on a GPU or TPU host JAX
would otherwise pick the accelerator (1 device instead of 8) and two xdist workers would fight
over its memory, and PyTorch parity tests would run on CUDA. So JAX is pinned to the CPU and
CUDA is hidden (subprocesses inherit both). torchvision must be imported before tensorflow in one
process (the reverse order segfaults with tensorflow-cpu 2.21 + torchvision 0.29.1), and TF must
not see accelerators or probe GCE.
"""
import os

os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ['CUDA_VISIBLE_DEVICES'] = ''
os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'
os.environ['JAXSEG_COMPILATION_CACHE'] = 'off'  # CLI tests must not fill ~/.cache.
os.environ.setdefault('NO_GCE_CHECK', 'true')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + ' --xla_force_host_platform_device_count=8').strip()

try:  # Before anything imports tensorflow.
  import torchvision  # noqa: F401
except ImportError:
  pass

import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'


@pytest.fixture(scope='session')
def shared_data():
  """The read-only real data beside the project; tests using it skip when it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'{SHARED_DATA} is not present')
  return SHARED_DATA
