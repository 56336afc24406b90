"""The environment check: what JAX started on, its versions, flags and cache, the launcher.

Fails when training would silently run on the wrong hardware: JAX_PLATFORMS asks for an
accelerator JAX did not get, a GPU/TPU plugin is installed but JAX fell back to the CPU (the
plugin failed to load: driver, CUDA or libtpu mismatch), or the machine has NVIDIA GPUs and no
CUDA plugin at all; also when the launcher's variables are contradictory (jaxseg.launch raises)
or the local device count differs from what the launcher promised.
"""
from __future__ import annotations

import glob
import importlib.metadata
import os

import jax

from jaxseg import accelerators
from jaxseg import launch
from jaxseg.benchmark import devices as bench_devices
from jaxseg.doctor.runner import Context, Outcome

# Distributions that give JAX an accelerator backend, by the platform they provide.
_PLUGIN_PREFIXES = (('jax-cuda', 'gpu'), ('jax_cuda', 'gpu'), ('jax-rocm', 'gpu'),
                    ('jax_rocm', 'gpu'), ('libtpu', 'tpu'))


def accelerator_plugins() -> dict[str, tuple[str, str]]:
  """{distribution: (version, platform)} of the installed JAX GPU/TPU plugins."""
  found = {}
  for dist in importlib.metadata.distributions():
    name = (dist.metadata['Name'] or '').lower()
    for prefix, platform in _PLUGIN_PREFIXES:
      if name.startswith(prefix):
        found[name] = (dist.version, platform)
  return dict(sorted(found.items()))


def nvidia_gpus(dev: str = '/dev') -> int:
  """NVIDIA GPUs the kernel driver exposes (/dev/nvidiaN)."""
  return len(glob.glob(os.path.join(dev, 'nvidia[0-9]*')))


def platform_problems(backend: str, jax_platforms: str, plugins: dict[str, tuple[str, str]],
                      gpus: int) -> list[str]:
  """Why the backend JAX started is not the one this machine and environment mean to train on."""
  expected = bench_devices.expected_accelerators(jax_platforms)
  if expected and backend not in expected:
    return [f'JAX_PLATFORMS={jax_platforms} asks for {" or ".join(sorted(expected))} but JAX '
            f'runs on {backend}.']
  asked_cpu = bool(jax_platforms) and not expected
  if backend != 'cpu' or asked_cpu:
    return []
  problems = []
  for name, (version, platform) in plugins.items():
    problems.append(
        f'{name} {version} is installed but JAX fell back to the CPU: the {platform} plugin did '
        f'not start (driver/CUDA/libtpu mismatch, or no device visible: check nvidia-smi and '
        f'CUDA_VISIBLE_DEVICES). JAX_PLATFORMS={"cuda" if platform == "gpu" else platform} '
        'makes JAX raise the reason instead of falling back.')
  if gpus and not plugins:
    problems.append(f'this machine has {gpus} NVIDIA GPU(s) but no JAX CUDA plugin is '
                    'installed: pip install "jaxseg[cuda12]" (or cuda13).')
  return problems


def check_environment(ctx: Context) -> Outcome:
  """Backend, devices, versions, XLA_FLAGS, compilation cache and launcher of this process."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  local = jax.local_devices()
  jax_platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  plugins = accelerator_plugins()
  problems = platform_problems(backend, jax_platforms, plugins, nvidia_gpus())
  plan = launch.plan_from_environment(os.environ)  # Raises on contradictory launcher variables.
  if plan is not None:
    count = launch.device_count_problem(plan, backend, len(local))
    if count:
      problems.append(count)
  stats = ctx.device.memory_stats() or {}
  cache = jax.config.jax_compilation_cache_dir
  details = {
      'backend': backend,
      'device': str(ctx.device),
      'device_kind': ctx.device.device_kind,
      'device_count': jax.device_count(),
      'local_device_count': len(local),
      'process_count': jax.process_count(),
      'jax': jax.__version__,
      'jaxlib': jaxlib.__version__,
      'plugins': {name: version for name, (version, _) in plugins.items()},
      'jax_platforms': jax_platforms or None,
      'xla_flags': os.environ.get('XLA_FLAGS') or None,
      'compilation_cache': cache or None,
      'conv_impl_env': os.environ.get('JAXSEG_CONV_IMPL') or None,
      'launcher': plan.launcher if plan else None,
      'launch_plan': None if plan is None else plan.initialize_kwargs(),
      'memory_bytes_limit': stats.get('bytes_limit'),
      'startup_report': accelerators.startup_report().splitlines(),
      'problems': problems,
  }
  if problems:
    return Outcome(False, ' '.join(problems), details)
  kinds = ', '.join(sorted({d.device_kind for d in local}))
  plugin_text = ', '.join(f'{n} {v}' for n, (v, _) in plugins.items()) or 'no accelerator plugin'
  launcher = (f'; launcher {plan.launcher} (process {plan.process_id} of {plan.num_processes}: '
              'the doctor checks this process only)' if plan else '')
  return Outcome(True, f'{backend} ({kinds}) x{len(local)}, jax {jax.__version__} / jaxlib '
                 f'{jaxlib.__version__}, {plugin_text}; compilation cache {cache or "off"}'
                 f'{launcher}', details)
