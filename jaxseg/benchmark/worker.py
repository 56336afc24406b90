"""A benchmark worker process: `python -m jaxseg.benchmark.worker jax|torch|matmul`.

Serves the parent's JSON commands on stdin (protocol in harness.py) and answers on the original
stdout, which it keeps to itself: whatever the libraries print goes to stderr. It builds one
workload (workloads.py for jaxseg and the CPU matmul peak, torch_workload.py for PyTorch), steps
it when told and reports its memory: the process's RSS from /proc and the device's peak bytes.
JAX and torch are imported only by the workload, on the first command that needs them.
"""
from __future__ import annotations

import json
import os
import resource
import sys

from jaxseg.benchmark.harness import PROTOCOL
from jaxseg.benchmark.spec import Spec, available_cores


def _rss_bytes(field: str) -> int:
  """VmHWM / VmRSS of this process in bytes (0 where /proc is unavailable)."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def _reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS (Linux clear_refs 5)."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def _workload(framework: str, spec: Spec, args: list):
  # pylint: disable=g-import-not-at-top  Only the framework this worker runs is imported.
  if framework == 'jax':
    from jaxseg.benchmark.workloads import JaxWorkload
    return JaxWorkload(spec)
  if framework == 'torch':
    from jaxseg.benchmark.torch_workload import TorchWorkload
    return TorchWorkload(spec, *args)
  if framework == 'matmul':
    from jaxseg.benchmark.workloads import MatmulWorkload
    return MatmulWorkload(spec, *args)
  raise ValueError(f'benchmark worker: unknown framework {framework!r}')


def serve(framework: str) -> None:
  """Answers the parent's commands until 'exit' or the end of stdin."""
  channel = os.fdopen(os.dup(1), 'w', buffering=1)
  os.dup2(2, 1)
  sys.stdout = sys.stderr

  def reply(**message):
    channel.write(PROTOCOL + json.dumps(message) + '\n')

  workload = None
  for line in sys.stdin:
    command = json.loads(line)
    try:
      if command['cmd'] == 'device':
        from jaxseg.benchmark.workloads import device_info  # pylint: disable=g-import-not-at-top
        reply(**device_info())
      elif command['cmd'] == 'build':
        spec = Spec.from_dict(command['spec'])
        if spec.threads and spec.threads < available_cores():
          os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:spec.threads])
        baseline = _rss_bytes('VmRSS')
        workload = _workload(framework, spec, command.get('args', []))
        reply(device=workload.device, compile_s=workload.compile_s, flops=workload.flops,
              flops_executed=getattr(workload, 'flops_executed', None),
              bytes_accessed=getattr(workload, 'bytes_accessed', None), baseline_rss=baseline)
      elif command['cmd'] == 'step':
        reply(seconds=workload.step(*command.get('args', ())))
      elif command['cmd'] == 'reset_peak':
        workload.reset_device_peak()
        reply(ok=_reset_peak_rss())
      elif command['cmd'] == 'stats':
        reply(peak_rss=_rss_bytes('VmHWM'),
              max_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              device_peak=workload.device_peak_bytes())
      elif command['cmd'] == 'exit':
        reply(ok=True)
        return
      else:
        raise ValueError(f'benchmark worker: unknown command {command["cmd"]!r}')
    except Exception as e:  # pylint: disable=broad-except  Reported to the parent.
      error = f'{type(e).__name__}: {e}' if str(e) else type(e).__name__
      reply(error=error, usage=isinstance(e, ValueError))


if __name__ == '__main__':
  serve(sys.argv[1])
