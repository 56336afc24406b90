"""Process start-up for accelerators: what must be settled before JAX's backend starts.

  prepare_process(env)        all of the below that must precede the backend, in one call;
  configure_xla(env)          XLA_FLAGS defaults for data-parallel GPU training;
  configure_compilation_cache(env)   the persistent compilation cache;
  set_no_gce_check_default(env)      NO_GCE_CHECK=true only off Google Compute Engine;
  startup_report(dtype)       what the backend found (after it started), and
  warn_if_cpu_for_accelerator_recipe(dtype)  a loud warning for a bfloat16 recipe on the CPU.

XLA reads XLA_FLAGS once, when the backend starts, and aborts on a flag it does not know: the
defaults here exist in jaxlib 0.10.2 (its XLA) and are added only when a GPU will be used and
the user did not set the same flag. Launching (jax.distributed) is jaxseg.launch.
"""
import importlib.util
import logging
import os
import pathlib
import re
from typing import Any, Callable, Mapping, MutableMapping

import jax

logger = logging.getLogger(__name__)

XLA_DEFAULTS_ENV = 'JAXSEG_XLA_DEFAULTS'
CACHE_ENV = 'JAXSEG_COMPILATION_CACHE'
_JAX_CACHE_ENV = 'JAX_COMPILATION_CACHE_DIR'
_JAX_MIN_COMPILE_ENV = 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'
_OFF = ('0', 'false', 'no', 'off', 'none', '')
_GPU_PLATFORMS = ('cuda', 'gpu', 'rocm')
_CUDA_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin')
DMI_PRODUCT_NAME = '/sys/class/dmi/id/product_name'

# Data-parallel training all-reduces every gradient each step. The latency-hiding scheduler
# overlaps those all-reduces with the backward pass; combining them into buckets of up to
# 128 MiB (XLA's default is 30 MiB) sends the gradients of a VGG16/ResNet-101 (0.2-0.5 GB in
# float32) in a few large NCCL calls instead of many small ones.
XLA_GPU_DEFAULTS = (
    ('xla_gpu_enable_latency_hiding_scheduler', 'true'),
    ('xla_gpu_all_reduce_combine_threshold_bytes', str(128 * 2**20)),
)

# XLA:CPU expands the optimisation barriers of jax.checkpoint before CSE and scheduling, which
# then merge the recomputation back into the forward pass: config.model.remat would cost memory
# instead of saving it (PSPNet-101 at 473, batch 1: 'block' 3078 MiB temp vs 2663 without remat;
# with this flag 868). Programs without remat have no barriers, so nothing else changes.
XLA_CPU_DEFAULTS = (
    ('xla_disable_hlo_passes', 'cse_barrier_expander'),
)

# Programs compiling faster than this are not written to the persistent cache: eval/predict
# helpers and small jits compile in well under a second, a segmentation train step in tens.
MIN_COMPILE_TIME_SECS = 2.0


# ---------------------------------------------------------------- XLA flags
def gpu_will_be_used(env: Mapping[str, str],
                     find_spec: Callable[[str], Any] = importlib.util.find_spec) -> bool:
  """Whether JAX will pick a GPU: JAX_PLATFORMS names one, or (unset) a CUDA plugin is installed."""
  platforms = env.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return any(p.strip() in _GPU_PLATFORMS for p in platforms.split(','))
  return any(find_spec(name) is not None for name in _CUDA_PLUGINS)


def _flag_is_set(flags: str, name: str) -> bool:
  return any(re.fullmatch(rf'--{re.escape(name)}(?:=.*)?', token)
             for token in flags.split())


def merge_xla_flags(flags: str, defaults=XLA_GPU_DEFAULTS) -> tuple[str, list[str]]:
  """(flags with each default appended unless already there, the flags appended)."""
  added = [f'--{name}={value}' for name, value in defaults if not _flag_is_set(flags, name)]
  return ' '.join([flags.strip()] + added).strip(), added


def configure_xla(env: MutableMapping[str, str] = os.environ, *,
                  gpu: bool | None = None) -> list[str]:
  """Adds jaxseg's XLA defaults to env['XLA_FLAGS'] (before the backend starts).

  The data-parallel GPU defaults when a GPU will be used (`gpu`, default
  `gpu_will_be_used(env)`), else the CPU's (rematerialisation that saves memory). Nothing is
  added when JAXSEG_XLA_DEFAULTS is 0/false/off, or for a flag XLA_FLAGS already sets (the
  user's wins).

  Returns:
    The flags added.
  """
  if env.get(XLA_DEFAULTS_ENV, '1').strip().lower() in _OFF:
    return []
  gpu = gpu_will_be_used(env) if gpu is None else gpu
  flags, added = merge_xla_flags(env.get('XLA_FLAGS', ''),
                                 XLA_GPU_DEFAULTS if gpu else XLA_CPU_DEFAULTS)
  if added:
    env['XLA_FLAGS'] = flags
  return added


# ---------------------------------------------------------------- compilation cache
def compilation_cache_dir(env: Mapping[str, str], home: str | None = None) -> str | None:
  """Where compiled programs are kept: JAX_COMPILATION_CACHE_DIR (the user's, kept as it is),
  else JAXSEG_COMPILATION_CACHE (a path, or off/0/false: no cache), else
  $XDG_CACHE_HOME/jaxseg/xla or ~/.cache/jaxseg/xla."""
  if env.get(_JAX_CACHE_ENV):
    return env[_JAX_CACHE_ENV]
  ours = env.get(CACHE_ENV)
  if ours is not None:
    if ours.strip().lower() in _OFF:
      return None
    return ours if '://' in ours else os.path.expanduser(ours)
  home = home if home is not None else os.path.expanduser('~')
  base = env.get('XDG_CACHE_HOME') or os.path.join(home, '.cache')
  return os.path.join(base, 'jaxseg', 'xla')


def configure_compilation_cache(
    env: Mapping[str, str] = os.environ,
    update: Callable[[str, Any], None] = jax.config.update,
) -> str | None:
  """Turns on JAX's persistent compilation cache at `compilation_cache_dir(env)`.

  A user's JAX_COMPILATION_CACHE_DIR is JAX's own setting and left alone (as is a user's
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS); otherwise the directory and the minimum compile
  time (MIN_COMPILE_TIME_SECS) are set through `update` (jax.config.update). Call it before the
  first compilation: JAX decides once, at its first compile, whether the cache is used.

  Returns:
    The cache directory, or None when the cache is off.
  """
  path = compilation_cache_dir(env)
  if path is None or env.get(_JAX_CACHE_ENV):
    return path
  update('jax_compilation_cache_dir', path)
  if not env.get(_JAX_MIN_COMPILE_ENV):
    update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_TIME_SECS)
  return path


# ---------------------------------------------------------------- NO_GCE_CHECK
def is_gce(dmi_path: str = DMI_PRODUCT_NAME) -> bool:
  """Whether this machine is a Google Compute Engine VM (GCE, GKE, Cloud TPU VM): its DMI
  product name says 'Google'. A local file read; no network."""
  try:
    return 'Google' in pathlib.Path(dmi_path).read_text()
  except OSError:
    return False


def set_no_gce_check_default(env: MutableMapping[str, str] = os.environ,
                             dmi_path: str = DMI_PRODUCT_NAME) -> str | None:
  """Sets NO_GCE_CHECK=true unless the user set it or this is a GCE machine.

  Off GCE the check only costs TF/TFDS a metadata-server timeout; on GCE (and TPU VMs) it is how
  google-auth finds the VM's service account, so `gs://` data and workdirs need it.

  Returns:
    NO_GCE_CHECK as it now is (None: unset).
  """
  if 'NO_GCE_CHECK' not in env and not is_gce(dmi_path):
    env['NO_GCE_CHECK'] = 'true'
  return env.get('NO_GCE_CHECK')


def prepare_process(env: MutableMapping[str, str] = os.environ) -> dict[str, Any]:
  """NO_GCE_CHECK, XLA_FLAGS defaults and the compilation cache, before the backend starts.

  Returns:
    {'no_gce_check', 'xla_flags_added', 'compilation_cache'} for logs.
  """
  return {'no_gce_check': set_no_gce_check_default(env),
          'xla_flags_added': configure_xla(env),
          'compilation_cache': configure_compilation_cache(env)}


# ---------------------------------------------------------------- after start-up
def warn_if_cpu_for_accelerator_recipe(dtype: str, backend: str | None = None) -> bool:
  """Warns loudly when a bfloat16 (accelerator) recipe is about to run on the CPU.

  Args:
    dtype: config.model.dtype.
    backend: jax.default_backend() (default: asked, which starts the backend).

  Returns:
    Whether it warned.
  """
  if dtype != 'bfloat16':
    return False
  backend = jax.default_backend() if backend is None else backend
  if backend != 'cpu':
    return False
  logger.warning(
      '!!! config.model.dtype=%r is an accelerator recipe but JAX is running on the CPU: '
      'bfloat16 convolutions are emulated there and many times slower than float32. Install '
      'a GPU/TPU build (pip install "jaxseg[cuda12]" or "jaxseg[tpu]"), check JAX_PLATFORMS, or '
      'pass --config.model.dtype=float32 for a CPU run. !!!', dtype)
  return True


def startup_report(dtype: str | None = None) -> str:
  """Lines saying what JAX started on (starts the backend: call after jaxseg.launch).

  Args:
    dtype: config.model.dtype, to warn about a bfloat16 recipe on the CPU.
  """
  backend = jax.default_backend()
  local = jax.local_devices()
  kinds = sorted({d.device_kind for d in jax.devices()})
  lines = [
      f'backend: {backend} ({", ".join(kinds)})',
      f'devices: {jax.device_count()} in all, {len(local)} local',
      f'process: {jax.process_index()} of {jax.process_count()}',
      'local devices: ' + ', '.join(f'{d.platform}:{d.id}' for d in local),
      f'compilation cache: {jax.config.jax_compilation_cache_dir or "off"}',
  ]
  if os.environ.get('XLA_FLAGS'):
    lines.append(f'XLA_FLAGS: {os.environ["XLA_FLAGS"]}')
  if dtype is not None:
    warn_if_cpu_for_accelerator_recipe(dtype, backend)
  return '\n'.join(lines)
