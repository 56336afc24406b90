"""The parent of a benchmark run: starts fresh workers and drives them in lockstep (`run_spec`).

Each configuration runs in fresh worker processes (worker.py), one for jaxseg and one for
PyTorch eager (torch_models.py: the same networks on torchvision backbones), so each framework's
peak memory is its own, plus on the CPU one that measures the matmul peak. The parent never
initialises a JAX backend (on a GPU that would take 75% of its memory and push the workers onto
the CPU): it asks the jaxseg worker which platform, device kind and count it got, fails with
PlatformError if an accelerator was asked for and not got, and starts the torch worker on CUDA
when the jaxseg worker is on a GPU and torch has CUDA. Workers get
XLA_PYTHON_CLIENT_PREALLOCATE=false (unless set), so both frameworks fit on one GPU.

Lockstep: round i runs one jaxseg step, one torch step and (CPU) one reference matmul in each
framework, swapping the order every round, so a change of machine load hits both alike and the
ratio is fair. Workers idle (blocked on a pipe) while the other runs; on the CPU both use the
same cores (`threads`: CPU affinity for XLA, torch.set_num_threads). Step time is the median over
`steps` timed steps after `warmup` steps; every step blocks until its results are ready
(block_until_ready / torch.cuda.synchronize) before the clock is read.

Memory: the device's peak bytes where the backend reports them (GPU/TPU; JAX's peak includes
compilation and warm-up, torch's is reset after warm-up); on the CPU the process's peak RSS
(VmHWM) during the timed steps (reset after warm-up through /proc/self/clear_refs, so
compile-time memory is excluded; it includes the ~0.3-0.5 GiB of loaded libraries) — the
compile-inclusive peak and the post-import baseline are in the record too.

Protocol: the parent writes one JSON command per line to a worker's stdin ({"cmd": "device" |
"build" | "step" | "reset_peak" | "stats" | "exit", ...}); the worker answers each with one line
`PROTOCOL + JSON` on its original stdout (everything libraries print goes to stderr, kept in a
temporary file for the error message if the worker dies). An answer with "error" is raised in the
parent: ValueError for the worker's ValueErrors (bad input), RuntimeError otherwise.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from jaxseg.benchmark import devices
from jaxseg.benchmark.devices import PlatformError
from jaxseg.benchmark.spec import MATMUL_SIZE, PLATFORMS, Spec, validate

PROTOCOL = '@@jaxseg-bench '
_TORCH_DEVICE = {'cpu': 'cpu', 'gpu': 'cuda'}  # The torch device matching a JAX platform.


class Worker:
  """A worker subprocess (`python -m jaxseg.benchmark.worker FRAMEWORK`) driven over pipes."""

  def __init__(self, framework: str, env: dict[str, str]):
    self.framework = framework
    self.log = tempfile.TemporaryFile(mode='w+')
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'jaxseg.benchmark.worker', framework],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)

  def call(self, cmd: str, **kwargs) -> dict[str, Any]:
    try:
      self.proc.stdin.write(json.dumps(dict(cmd=cmd, **kwargs)) + '\n')
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass
    for line in self.proc.stdout:
      if line.startswith(PROTOCOL):
        answer = json.loads(line[len(PROTOCOL):])
        if 'error' in answer:
          error = ValueError if answer.get('usage') else RuntimeError
          raise error(f'{self.framework} worker: {answer["error"]}')
        return answer
    self.proc.wait()
    self.log.seek(0)
    tail = self.log.read()[-2000:]
    raise RuntimeError(f'{self.framework} worker died (exit {self.proc.returncode}) during '
                       f'{cmd!r}; its stderr ends with:\n{tail}')

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        self.call('exit')
      except (RuntimeError, ValueError):
        pass
      try:
        self.proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.proc.kill()
    self.log.close()


def worker_env(platform: str | None = None) -> dict[str, str]:
  """The workers' environment: this one, on `platform` if given, sharing the device politely."""
  env = dict(os.environ)
  # One XLA host device: tests force 8 virtual CPU devices, which a benchmark must not inherit.
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags)
  # JAX grabs 75% of a GPU at start-up; the torch worker needs room on the same GPU.
  env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if platform:
    env['JAX_PLATFORMS'] = devices.JAX_PLATFORMS_OF[platform]
  return env


def _device(worker: Worker, env: dict[str, str], platform: str | None) -> dict[str, Any]:
  """The jaxseg worker's platform, device kind and count; PlatformError if not what was asked."""
  asked = env.get('JAX_PLATFORMS', '')
  try:
    device = worker.call('device')
  except RuntimeError as e:
    where = f'JAX_PLATFORMS={asked}' if asked else 'its default platform'
    if platform:
      where = f'platform {platform} (--platform {platform}: {where})'
    raise PlatformError(f'benchmark: JAX could not initialise {where} in the jaxseg worker: '
                        f'{e}') from None
  devices.check_platform(asked, device['platform'], device['device_kind'])
  return device


def _median(values: Sequence[float]) -> float | None:
  return statistics.median(values) if values else None


def run_spec(spec: Spec, steps: int = 10, warmup: int = 2, with_torch: bool = True,
             measure_peak: bool = True, platform: str | None = None,
             peak_size: int = MATMUL_SIZE) -> dict[str, Any]:
  """Benchmarks one configuration (jaxseg and torch interleaved); returns a result record.

  Args:
    spec: what to run.
    steps: timed steps (the median is reported); warmup: untimed steps after compilation.
    with_torch: also run the PyTorch eager twin.
    measure_peak: on the CPU, measure the peak with a peak_size^2 matmul in both frameworks.
    platform: 'cpu', 'gpu' (CUDA) or 'tpu' for the jaxseg worker; None: JAX's own choice
      (JAX_PLATFORMS if set).
    peak_size: side of the CPU peak matmul.

  Raises:
    ValueError: bad configuration (also the model's own input checks, from the worker).
    PlatformError: JAX could not initialise the platform asked for, or fell back to another.
    RuntimeError: a worker failed or died.
  """
  validate(spec)
  if steps < 1 or warmup < 0:
    raise ValueError(f'benchmark: --steps must be >= 1 and --warmup >= 0, got {steps}, {warmup}')
  if platform is not None and platform not in PLATFORMS:
    raise ValueError(f'benchmark: --platform must be one of {PLATFORMS}, got {platform!r}')
  env = worker_env(platform)
  fields = dataclasses.asdict(spec)
  record: dict[str, Any] = dict(fields, steps=steps, warmup=warmup,
                                load_before=devices.load_average())
  workers = {'jax': Worker('jax', env)}
  try:
    if with_torch:  # Started now: its interpreter comes up while JAX initialises.
      workers['torch'] = Worker('torch', env)
    device = _device(workers['jax'], env, platform)
    record['device'] = device
    on_cpu = device['platform'] == 'cpu'
    cpu_peak = measure_peak and on_cpu
    built = {'jax': workers['jax'].call('build', spec=fields)}
    if with_torch:
      built['torch'] = workers['torch'].call('build', spec=fields,
                                              args=[device['platform'] == 'gpu'])
      if built['torch']['device'] != _TORCH_DEVICE.get(device['platform']):
        print(f"[benchmark] torch runs on {built['torch']['device']}, jaxseg on "
              f"{device['platform']} ({device['device_kind']}): their times do not compare",
              file=sys.stderr, flush=True)
    if cpu_peak:
      workers['matmul'] = Worker('matmul', {**env, 'JAX_PLATFORMS': 'cpu'})
      built['matmul'] = workers['matmul'].call('build', spec=fields, args=[peak_size])
    frameworks = [name for name in ('jax', 'torch') if name in workers]
    for _ in range(warmup):
      for name in frameworks:
        workers[name].call('step')
    for name in frameworks:
      workers[name].call('reset_peak')
    times: dict[str, list[float]] = {'jax': [], 'torch': [], 'matmul_jax': [], 'matmul_torch': []}
    for i in range(steps):
      order = frameworks if i % 2 == 0 else frameworks[::-1]
      for name in order:
        times[name].append(workers[name].call('step')['seconds'])
      if cpu_peak:
        for which in order:
          times[f'matmul_{which}'].append(workers['matmul'].call('step', args=[which])['seconds'])
    stats = {name: workers[name].call('stats') for name in frameworks}
  finally:
    for w in workers.values():
      w.close()
  record['load_after'] = devices.load_average()
  flops = built['jax']['flops']
  record['flops'] = flops
  record['flops_executed'] = built['jax'].get('flops_executed')
  record['bytes_accessed'] = built['jax'].get('bytes_accessed')
  if cpu_peak:
    matmul_flops = built['matmul']['flops']
    rates = {k: matmul_flops / _median(times[f'matmul_{k}']) for k in frameworks}
    record['matmul_flops_per_s'] = rates
    record['peak_flops_per_s'] = max(rates.values())
    record['peak_source'] = (f'measured {spec.dtype} {peak_size}^2 matmul '
                             '(max of XLA and torch)')
  elif on_cpu:
    record['peak_flops_per_s'] = None
    record['peak_source'] = 'CPU peak not measured'
  else:
    peak = devices.published_peak(device['device_kind'], spec.dtype)
    record['peak_flops_per_s'] = peak
    record['peak_source'] = (f"published dense {spec.dtype} peak of {device['device_kind']}"
                             if peak else
                             f"no published {spec.dtype} peak known for {device['device_kind']}")
  for name in frameworks:
    median = _median(times[name])
    # The peak is the jaxseg worker's device's: it applies to torch only on the same device.
    same = name == 'jax' or built[name]['device'] == _TORCH_DEVICE.get(device['platform'])
    peak = record['peak_flops_per_s'] if same else None
    record[name] = dict(
        device=built[name]['device'], step_s=median, step_s_all=times[name],
        images_per_s=spec.batch / median, compile_s=built[name]['compile_s'],
        flops_counted=built[name]['flops'], flops_per_s=flops / median if flops else None,
        mfu=devices.mfu(flops, median, peak),
        peak_rss=stats[name]['peak_rss'], max_rss=stats[name]['max_rss'],
        baseline_rss=built[name]['baseline_rss'], device_peak_bytes=stats[name]['device_peak'])
  if with_torch:
    record['speedup_vs_torch'] = record['torch']['step_s'] / record['jax']['step_s']
  return record
