"""Test-session setup.

torchvision must be imported before tensorflow in one process (the reverse order segfaults with
tensorflow-cpu 2.21 + torchvision 0.29.1), and TF must not see accelerators or probe GCE.
"""
import os

os.environ.setdefault('NO_GCE_CHECK', 'true')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

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
