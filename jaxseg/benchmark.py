"""`jaxseg benchmark`: step time, throughput, memory and roofline of every model, beside PyTorch.

  jaxseg benchmark --model fcn8s [--mode train|infer] [--batch 2] [--size 320 320]
                   [--dtype float32|bfloat16] [--steps 10] [--warmup 2] [--width 1.0]
                   [--torch/--no-torch] [--json OUT]
  jaxseg benchmark --all            # every model x {train, infer}, plus the ops alone

How it measures, and why:
- Each configuration runs in fresh worker processes, one for jaxseg and one for PyTorch eager
  (jaxseg.torch_reference: the same networks on torchvision backbones), so each framework's peak
  memory is its own. The parent drives them in lockstep: round i runs one jaxseg step, one torch
  step and one reference matmul in each framework, swapping the order every round, so a change of
  machine load hits both alike and the ratio is fair. Workers idle (blocked on a pipe) while the
  other runs; both use the same cores (`--threads`: CPU affinity for XLA, torch.set_num_threads).
- Step time is the median over `--steps` timed steps after `--warmup` steps. jaxseg's compile time
  (lower + compile) is reported apart; torch's first step is reported as its "compile" column.
- train = forward + backward + SGD (momentum 0.9, weight decay 1e-4) update on the real model
  with jaxseg's loss, jitted with the train state donated; infer = forward in eval mode.
- FLOPs per step come from XLA's cost analysis of the step lowered with lax convolutions
  (JAXSEG_CONV_IMPL=lax): the network's conventional count, used for both frameworks (same
  network, same work). The program that runs writes some convolutions as matmuls inside loops,
  which cost analysis counts once per loop; its count is kept in the JSON as 'flops_executed',
  and torch's own (FlopCounterMode, convs and matmuls only) as a cross-check.
- Peak FLOP/s: on the CPU, measured in the same run as the median of a 4096x4096 matmul (run dtype)
  in XLA and in torch (the faster one is the peak); on GPU/TPU, the published dense peak of the
  device kind for the dtype (PEAK_TFLOPS). "%peak" is achieved FLOP/s over that.
- Memory: the device's peak bytes where the backend reports them (GPU/TPU); on the CPU the
  process's peak RSS (VmHWM) during the timed steps (reset after warm-up through
  /proc/self/clear_refs, so compile-time memory is excluded; it includes the ~0.3-0.5 GiB of
  loaded libraries) — compile-inclusive peak and the post-import baseline are in the JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

MODES = ('train', 'infer')
DTYPES = ('float32', 'bfloat16')
# Ops alone, at the shapes the models give them for an input of --size (s = H, W):
#   kind, feature-map size divisor, in channels, out channels, kernel, stride, padding, rate.
# The conv/deconv entries are the layers that had cliffs on XLA:CPU (see BENCHMARKS.md).
OP_TABLE: dict[str, tuple[str, int, int, int, int, int, str, int]] = {
    'max_pool': ('maxpool', 1, 64, 64, 2, 2, 'valid', 1),  # FCN pool1 (no switches).
    'max_pool_argmax': ('pool', 1, 64, 64, 2, 2, 'valid', 1),  # DeconvNet pool1.
    'max_unpool': ('unpool', 1, 64, 64, 2, 2, 'valid', 1),  # DeconvNet unpool1.
    'atrous_conv_r2': ('conv', 8, 256, 256, 3, 1, 'same', 2),  # PSPNet layer3 3x3.
    'atrous_conv_r4': ('conv', 8, 512, 512, 3, 1, 'same', 4),  # PSPNet layer4 3x3.
    'vgg_conv1_2': ('conv', 1, 64, 64, 3, 1, 'same', 1),  # Full-resolution 3x3.
    'vgg_conv3_2': ('conv', 4, 256, 256, 3, 1, 'same', 1),
    'bottleneck_1x1': ('conv', 8, 1024, 256, 1, 1, 'same', 1),  # ResNet layer3 conv1.
    'psp_head_3x3': ('conv', 8, 4096, 512, 3, 1, 'same', 1),  # PSPNet cls conv.
    'fcn_fc6': ('conv', 32, 512, 4096, 7, 1, 'same', 1),  # FCN fc6 ('same' geometry).
    'deconvnet_fc6': ('conv', 32, 512, 4096, 7, 1, 'valid', 1),  # DeconvNet fc6.
    'fc7_1x1': ('conv', 32, 4096, 4096, 1, 1, 'same', 1),  # FCN fc7.
    'deconvnet_fc6_deconv': ('deconv', 32, 4096, 512, 7, 1, 'valid', 1),  # On fc6's output.
    'fcn_upscore8': ('deconv', 8, 21, 21, 16, 8, 'valid', 1),  # FCN-8s x8 upsampling.
}
OPS = tuple(OP_TABLE)
NUM_CLASSES = 21
MATMUL_SIZE = 4096
LEARNING_RATE = 1e-3
_PROTOCOL = '@@jaxseg-bench '

# Published dense peaks in TFLOP/s per chip: (substring of jax device_kind, {dtype: peak}).
# First match wins, so more specific names come first. float32 is the non-tensor-core rate.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ('H100 PCIe', {'bfloat16': 756.0, 'float32': 51.0}),
    ('H100', {'bfloat16': 989.0, 'float32': 67.0}),  # SXM.
    ('H200', {'bfloat16': 989.0, 'float32': 67.0}),
    ('A100', {'bfloat16': 312.0, 'float32': 19.5}),
    ('L4', {'bfloat16': 121.0, 'float32': 30.3}),
    ('TPU v6 lite', {'bfloat16': 918.0}),  # v6e.
    ('TPU v5 lite', {'bfloat16': 197.0}),  # v5e.
    ('TPU v5e', {'bfloat16': 197.0}),
    ('TPU v5p', {'bfloat16': 459.0}),
    ('TPU v5', {'bfloat16': 459.0}),  # v5p reports itself as 'TPU v5'.
    ('TPU v4', {'bfloat16': 275.0}),
)


@dataclasses.dataclass(frozen=True)
class Spec:
  """One benchmark configuration (a model, or an op alone when `op` is set)."""
  model: str = ''
  op: str = ''
  mode: str = 'infer'
  batch: int = 2
  size: tuple[int, int] = (320, 320)
  dtype: str = 'float32'
  width: float = 1.0
  threads: int = 0  # 0 = every core this process may use.
  channels_last: bool = False  # torch memory format.
  conv_impl: str = 'auto'  # jaxseg.ops convolution formulation: 'auto' or 'lax' (XLA's own).

  @property
  def name(self) -> str:
    return self.model or self.op


def available_cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def load_average() -> list[float]:
  try:
    return [float(v) for v in open('/proc/loadavg').read().split()[:3]]
  except OSError:
    return list(os.getloadavg()) if hasattr(os, 'getloadavg') else []


def validate(spec: Spec) -> None:
  """Raises ValueError naming the bad field of a benchmark configuration."""
  from jaxseg.models import MODEL_NAMES  # Light: the registry imports models lazily.

  if bool(spec.model) == bool(spec.op):
    raise ValueError('benchmark: give exactly one of --model or --op')
  if spec.model and spec.model not in MODEL_NAMES:
    raise ValueError(f'benchmark: unknown --model {spec.model!r}; known models: '
                     f'{", ".join(MODEL_NAMES)}')
  if spec.op and spec.op not in OPS:
    raise ValueError(f'benchmark: unknown --op {spec.op!r}; known ops: {", ".join(OPS)}')
  if spec.mode not in MODES:
    raise ValueError(f'benchmark: --mode must be one of {MODES}, got {spec.mode!r}')
  if spec.dtype not in DTYPES:
    raise ValueError(f'benchmark: --dtype must be one of {DTYPES}, got {spec.dtype!r}')
  if spec.batch < 1 or len(spec.size) != 2 or min(spec.size) < 1:
    raise ValueError(f'benchmark: --batch and --size H W must be positive, got batch '
                     f'{spec.batch}, size {spec.size}')
  if not spec.width > 0:
    raise ValueError(f'benchmark: --width must be > 0, got {spec.width}')
  if spec.conv_impl not in ('auto', 'lax'):
    raise ValueError(f"benchmark: --conv-impl must be 'auto' or 'lax', got {spec.conv_impl!r}")
  if spec.threads < 0 or spec.threads > available_cores():
    raise ValueError(f'benchmark: --threads must be between 1 and {available_cores()} (0 = all), '
                     f'got {spec.threads}')


# ----------------------------------------------------------------------------------------------
# Workloads (run inside the workers)
# ----------------------------------------------------------------------------------------------


def _op_geometry(spec: Spec) -> dict[str, Any]:
  """Input shape (NHWC), kernel/stride/padding/rate of an op at --size, --batch and --width."""
  kind, divisor, cin, cout, k, stride, padding, rate = OP_TABLE[spec.op]
  scale = lambda c: c if spec.op == 'fcn_upscore8' else max(1, int(round(c * spec.width)))
  h, w = (-(-n // divisor) for n in spec.size)  # Ceil-mode pooling sizes.
  if spec.op == 'deconvnet_fc6_deconv':  # Valid fc6's output: pool5 - 6.
    h, w = max(1, h - 6), max(1, w - 6)
  pad = rate * (k // 2) if padding == 'same' else 0
  return dict(kind=kind, shape=(spec.batch, h, w, scale(cin)), cout=scale(cout), kernel=k,
              stride=stride, pad=pad, rate=rate)


def _cost(cost) -> dict[str, float]:
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost or {}


def _flops(cost) -> float:
  return float(_cost(cost).get('flops', 0.0))


class _JaxWorkload:
  """Builds and compiles the jaxseg step of a Spec; `step()` runs it once (blocking)."""

  def __init__(self, spec: Spec):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxseg import ops

    self.jax = jax
    self.spec = spec
    ops.set_conv_impl(spec.conv_impl)
    rng = np.random.default_rng(0)
    dtype = jnp.dtype(spec.dtype)
    if spec.model:
      fn, args, donate = self._model_step(spec, rng, dtype)
    else:
      fn, args, donate = self._op_step(spec, rng, dtype)
    start = time.perf_counter()
    lowered = jax.jit(fn, donate_argnums=donate).lower(*args)
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - start
    self.flops_executed = _flops(self.compiled.cost_analysis())
    cost = _cost(self.compiled.cost_analysis())
    self.bytes_accessed = float(cost.get('bytes accessed', 0.0))
    # The network's FLOPs: XLA's count of the step written with lax convolutions. (The program
    # that runs computes the same convolutions as matmuls, partly inside loops, which XLA's
    # cost analysis counts once per loop rather than once per iteration.)
    ops.set_conv_impl('lax')
    try:
      self.flops = _flops(jax.jit(lambda *a: fn(*a)).lower(*args).cost_analysis())
    finally:
      ops.set_conv_impl(spec.conv_impl)
    self.args = args
    self.donate = donate

  def _model_step(self, spec, rng, dtype):
    import jax
    import jax.numpy as jnp
    import optax

    from jaxseg import losses
    from jaxseg.models import create_model

    model = create_model(spec.model, NUM_CLASSES, width=spec.width, dtype=dtype)
    x = jnp.asarray(rng.standard_normal((spec.batch, *spec.size, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, NUM_CLASSES, (spec.batch, *spec.size)), jnp.int32)
    key = jax.random.key(0)
    variables = jax.jit(lambda: model.init({'params': key, 'dropout': key}, x, train=False))()
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    if spec.mode == 'infer':
      fn = lambda variables, x: model.apply(variables, x, train=False)
      return fn, (variables, x), ()

    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(LEARNING_RATE, momentum=0.9))

    def train_step(state, x, y, key):
      params, batch_stats, opt_state = state

      def loss_fn(params):
        outputs, updates = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                                       train=True, rngs={'dropout': key}, mutable=['batch_stats'])
        return losses.segmentation_loss(outputs, y)[0], updates

      (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      deltas, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, deltas)
      return (params, updates.get('batch_stats', batch_stats), opt_state), loss

    state = (params, batch_stats, tx.init(params))
    return train_step, (state, x, y, key), (0,)

  def _op_step(self, spec, rng, dtype):
    import jax
    import jax.numpy as jnp

    from jaxseg import ops

    g = _op_geometry(spec)
    shape, k, s, p, r = g['shape'], g['kernel'], g['stride'], g['pad'], g['rate']
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    if g['kind'] == 'maxpool':
      fn = lambda x: ops.max_pool(x, 2, 2, 'VALID', ceil_mode=True)
      inputs = (x,)
    elif g['kind'] == 'pool':
      fn = lambda x: ops.max_pool_with_argmax(x, ceil_mode=True)
      inputs = (x,)
    elif g['kind'] == 'unpool':
      pooled, switches = jax.jit(lambda x: ops.max_pool_with_argmax(x, ceil_mode=True))(x)
      fn = lambda p, s: ops.max_unpool(p, s, shape[1:3])
      inputs = (pooled, switches)
    elif g['kind'] == 'conv':  # HWIO kernel.
      kernel = jnp.asarray(rng.standard_normal((k, k, shape[-1], g['cout'])) /
                           (k * shape[-1] ** 0.5), dtype)
      fn = lambda x, w: ops.conv2d(x, w, (s, s), ((p, p), (p, p)), (r, r))
      inputs = (x, kernel)
    else:  # Transposed conv, kernel (kh, kw, out, in).
      kernel = jnp.asarray(rng.standard_normal((k, k, g['cout'], shape[-1])) /
                           (k * shape[-1] ** 0.5), dtype)
      fn = lambda x, w: ops.conv_transpose(x, w, (s, s), ((p, p), (p, p)))
      inputs = (x, kernel)
    if spec.mode == 'infer':
      return fn, inputs, ()
    # train: forward + backward to every float input, with a fixed random cotangent.
    out = jax.eval_shape(fn, *inputs)
    out = out[0] if isinstance(out, tuple) else out
    cotangent = jnp.asarray(rng.standard_normal(out.shape), out.dtype)
    floats = tuple(i for i, a in enumerate(inputs) if jnp.issubdtype(a.dtype, jnp.floating))

    def fwd_bwd(ct, *inputs):
      def objective(*diff):
        full = list(inputs)
        for i, d in zip(floats, diff):
          full[i] = d
        y = fn(*full)
        y = y[0] if isinstance(y, tuple) else y
        return jnp.sum(y.astype(jnp.float32) * ct.astype(jnp.float32))
      return jax.grad(objective, argnums=tuple(range(len(floats))))(
          *(inputs[i] for i in floats))

    return fwd_bwd, (cotangent, *inputs), ()

  def step(self) -> float:
    start = time.perf_counter()
    if self.donate:
      state, loss = self.compiled(*self.args)
      loss.block_until_ready()
      self.args = (state, *self.args[1:])
    else:
      self.jax.block_until_ready(self.compiled(*self.args))
    return time.perf_counter() - start

  def device_peak_bytes(self) -> int | None:
    stats = self.jax.devices()[0].memory_stats()
    return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


class _TorchWorkload:
  """The same configuration in PyTorch eager (jaxseg.torch_reference)."""

  def __init__(self, spec: Spec):
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from jaxseg import torch_reference

    self.torch = torch
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if spec.threads:
      torch.set_num_threads(spec.threads)
    else:
      torch.set_num_threads(available_cores())
    torch.manual_seed(0)
    self.autocast = (spec.dtype == 'bfloat16')
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    h, w = spec.size
    if spec.model:
      model = torch_reference.create_torch_model(spec.model, NUM_CLASSES, spec.width)
      model = model.to(self.device, memory_format=memory_format)
      x = torch.randn(spec.batch, 3, h, w, device=self.device).to(memory_format=memory_format)
      y = torch.randint(0, NUM_CLASSES, (spec.batch, h, w), device=self.device)
      if spec.mode == 'train':
        model.train()
        opt = torch.optim.SGD(model.parameters(), LEARNING_RATE, momentum=0.9,
                              weight_decay=1e-4)

        def run():
          opt.zero_grad(set_to_none=True)
          with self._autocast():
            outputs = model(x)
          torch_reference.segmentation_loss(outputs, y).backward()
          opt.step()
      else:
        model.eval()

        def run():
          with torch.inference_mode(), self._autocast():
            model(x)
    else:
      g = _op_geometry(spec)
      n, oh, ow, c = g['shape']
      k, s, p, r = g['kernel'], g['stride'], g['pad'], g['rate']
      x = torch.randn(n, c, oh, ow, device=self.device).to(memory_format=memory_format)
      train = spec.mode == 'train'
      if g['kind'] == 'maxpool':
        inputs, fn = [x], lambda x: F.max_pool2d(x, 2, 2, ceil_mode=True)
      elif g['kind'] in ('pool', 'unpool'):
        pooled, idx = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
        if g['kind'] == 'pool':
          inputs, fn = [x], lambda x: F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)[0]
        else:
          inputs = [pooled.contiguous()]
          fn = lambda p: F.max_unpool2d(p, idx, 2, 2, output_size=(oh, ow))
      elif g['kind'] == 'conv':
        kernel = torch.randn(g['cout'], c, k, k, device=self.device) / (k * c ** 0.5)
        inputs = [x, kernel]
        fn = lambda x, w: F.conv2d(x, w, stride=s, padding=p, dilation=r)
      else:
        kernel = torch.randn(c, g['cout'], k, k, device=self.device) / (k * c ** 0.5)
        inputs = [x, kernel]
        fn = lambda x, w: F.conv_transpose2d(x, w, stride=s, padding=p)
      if train:
        inputs = [t.detach().requires_grad_(True) for t in inputs]
        with torch.no_grad():
          cotangent = torch.randn_like(fn(*inputs))

        def run():
          for t in inputs:
            t.grad = None
          with self._autocast():
            out = fn(*inputs)
          out.backward(cotangent.to(out.dtype))
      else:
        def run():
          with torch.inference_mode(), self._autocast():
            fn(*inputs)

    self.run = run
    with FlopCounterMode(display=False) as counter:
      start = time.perf_counter()
      run()
      self._sync()
    self.compile_s = time.perf_counter() - start  # First step (eager: nothing to compile).
    self.flops = float(counter.get_total_flops())
    if self.device.type == 'cuda':
      torch.cuda.reset_peak_memory_stats()

  def _autocast(self):
    import contextlib
    if not self.autocast:
      return contextlib.nullcontext()
    return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16)

  def _sync(self):
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()

  def step(self) -> float:
    start = time.perf_counter()
    self.run()
    self._sync()
    return time.perf_counter() - start

  def device_peak_bytes(self) -> int | None:
    if self.device.type == 'cuda':
      return int(self.torch.cuda.max_memory_allocated())
    return None


class _MatmulWorkload:
  """MATMUL_SIZE^2 matmul in the run's dtype, in XLA and in torch: the CPU's attainable peak.

  In the run's dtype because the CPU's peak depends on it (this machine's AMX units multiply
  bfloat16 several times faster than float32 where the library uses them).
  """

  def __init__(self, spec: Spec, size: int):
    import jax
    import jax.numpy as jnp
    import torch

    torch.set_num_threads(spec.threads or available_cores())
    self.jax, self.torch = jax, torch
    a = jnp.asarray(jax.random.normal(jax.random.key(0), (size, size)), spec.dtype)
    self.jax_args = (a, a + 1)
    self.jax_fn = jax.jit(jnp.matmul).lower(*self.jax_args).compile()
    dtype = getattr(torch, spec.dtype)
    self.torch_args = (torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype))
    self.flops = 2.0 * size ** 3
    for _ in range(2):
      self.step('jax')
      self.step('torch')

  def step(self, which: str) -> float:
    start = time.perf_counter()
    if which == 'jax':
      self.jax_fn(*self.jax_args).block_until_ready()
    else:
      self.torch.matmul(*self.torch_args)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# Worker process: serves JSON commands on stdin, answers on the original stdout
# ----------------------------------------------------------------------------------------------


def _rss_bytes(field: str) -> int:
  """VmHWM / VmRSS of this process in bytes (0 where /proc is unavailable)."""
  try:
    for line in open('/proc/self/status'):
      if line.startswith(field + ':'):
        return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def _reset_peak_rss() -> bool:
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def _worker_main(framework: str) -> None:
  # Keep the protocol channel clean: anything libraries print goes to stderr.
  channel = os.fdopen(os.dup(1), 'w', buffering=1)
  os.dup2(2, 1)
  sys.stdout = sys.stderr

  def reply(**message):
    channel.write(_PROTOCOL + json.dumps(message) + '\n')

  workload = None
  for line in sys.stdin:
    command = json.loads(line)
    try:
      if command['cmd'] == 'build':
        spec = Spec(**{**command['spec'], 'size': tuple(command['spec']['size'])})
        if spec.threads and spec.threads < available_cores():
          os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:spec.threads])
        baseline = _rss_bytes('VmRSS')
        cls = {'jax': _JaxWorkload, 'torch': _TorchWorkload, 'matmul': _MatmulWorkload}[framework]
        workload = cls(spec, *command.get('args', ()))
        reply(compile_s=getattr(workload, 'compile_s', 0.0), flops=workload.flops,
              flops_executed=getattr(workload, 'flops_executed', None),
              bytes_accessed=getattr(workload, 'bytes_accessed', None), baseline_rss=baseline)
      elif command['cmd'] == 'step':
        seconds = workload.step(*command.get('args', ()))
        reply(seconds=seconds)
      elif command['cmd'] == 'reset_peak':
        reply(ok=_reset_peak_rss())
      elif command['cmd'] == 'stats':
        reply(peak_rss=_rss_bytes('VmHWM'),
              max_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              device_peak=workload.device_peak_bytes()
              if hasattr(workload, 'device_peak_bytes') else None)
      elif command['cmd'] == 'exit':
        reply(ok=True)
        return
    except Exception as e:  # pylint: disable=broad-except  Reported to the parent.
      reply(error=f'{type(e).__name__}: {e}', usage=isinstance(e, ValueError))


class _Worker:
  """A worker subprocess driven over pipes."""

  def __init__(self, framework: str, env: dict[str, str]):
    self.framework = framework
    self.log = tempfile.TemporaryFile(mode='w+')
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'jaxseg.benchmark', '_worker', framework],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)

  def call(self, cmd: str, **kwargs) -> dict[str, Any]:
    try:
      self.proc.stdin.write(json.dumps(dict(cmd=cmd, **kwargs)) + '\n')
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass
    for line in self.proc.stdout:
      if line.startswith(_PROTOCOL):
        answer = json.loads(line[len(_PROTOCOL):])
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


def _worker_env() -> dict[str, str]:
  env = dict(os.environ)
  # One XLA host device: tests force 8 virtual CPU devices, which a benchmark must not inherit.
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float | None:
  return statistics.median(values) if values else None


def device_info() -> dict[str, Any]:
  """Backend, device kind and (for GPU/TPU) the published peak of this machine."""
  import jax

  device = jax.devices()[0]
  cpu = ''
  try:
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo')
                if l.startswith('model name')), '')
  except OSError:
    pass
  return dict(backend=jax.default_backend(), device_kind=device.device_kind,
              cpu=cpu or platform.processor(), cores=available_cores(), jax=jax.__version__)


def published_peak(device_kind: str, dtype: str) -> float | None:
  """Published dense peak FLOP/s of a GPU/TPU device kind for dtype (None if unknown)."""
  for key, peaks in PEAK_TFLOPS:
    if key.lower() in device_kind.lower():
      peak = peaks.get(dtype)
      return peak * 1e12 if peak else None
  return None


def run_spec(spec: Spec, steps: int = 10, warmup: int = 2, with_torch: bool = True,
             measure_peak: bool = True, backend: str | None = None,
             device_kind: str = '', peak_size: int = MATMUL_SIZE) -> dict[str, Any]:
  """Benchmarks one configuration (jaxseg and torch interleaved); returns a result record."""
  validate(spec)
  if steps < 1 or warmup < 0:
    raise ValueError(f'benchmark: --steps must be >= 1 and --warmup >= 0, got {steps}, {warmup}')
  env = _worker_env()
  record: dict[str, Any] = dict(dataclasses.asdict(spec), steps=steps, warmup=warmup,
                                load_before=load_average())
  workers = {'jax': _Worker('jax', env)}
  if with_torch:
    workers['torch'] = _Worker('torch', env)
  cpu_peak = measure_peak and backend in (None, 'cpu')
  if cpu_peak:
    workers['matmul'] = _Worker('matmul', env)
  try:
    built = {name: w.call('build', spec=dataclasses.asdict(spec),
                          args=[peak_size] if name == 'matmul' else [])
             for name, w in workers.items()}
    for _ in range(warmup):
      for name in ('jax', 'torch'):
        if name in workers:
          workers[name].call('step')
    for name in ('jax', 'torch'):
      if name in workers:
        workers[name].call('reset_peak')
    times: dict[str, list[float]] = {'jax': [], 'torch': [], 'matmul_jax': [], 'matmul_torch': []}
    for i in range(steps):
      order = ['jax', 'torch'] if i % 2 == 0 else ['torch', 'jax']
      for name in order:
        if name in workers:
          times[name].append(workers[name].call('step')['seconds'])
      if cpu_peak:
        for which in (order if with_torch else ['jax']):
          times[f'matmul_{which}'].append(workers['matmul'].call('step', args=[which])['seconds'])
    stats = {name: workers[name].call('stats') for name in ('jax', 'torch') if name in workers}
  finally:
    for w in workers.values():
      w.close()
  record['load_after'] = load_average()
  flops = built['jax']['flops']
  record['flops'] = flops
  record['flops_executed'] = built['jax'].get('flops_executed')
  record['bytes_accessed'] = built['jax'].get('bytes_accessed')
  if cpu_peak:
    matmul_flops = built['matmul']['flops']
    rates = {k: matmul_flops / _median(times[f'matmul_{k}']) for k in ('jax', 'torch')
             if times[f'matmul_{k}']}
    record['matmul_flops_per_s'] = rates
    record['peak_flops_per_s'] = max(rates.values())
    record['peak_source'] = (f'measured {spec.dtype} {peak_size}^2 matmul '
                             '(max of XLA and torch)')
  else:
    record['peak_flops_per_s'] = published_peak(device_kind, spec.dtype)
    record['peak_source'] = f'published peak of {device_kind!r} for {spec.dtype}'
  for name in ('jax', 'torch'):
    if name not in workers:
      continue
    median = _median(times[name])
    peak = record['peak_flops_per_s']
    record[name] = dict(
        step_s=median, step_s_all=times[name], images_per_s=spec.batch / median,
        compile_s=built[name]['compile_s'], flops_counted=built[name]['flops'],
        flops_per_s=flops / median if flops else None,
        fraction_of_peak=flops / median / peak if flops and peak else None,
        peak_rss=stats[name]['peak_rss'], max_rss=stats[name]['max_rss'],
        baseline_rss=built[name]['baseline_rss'], device_peak_bytes=stats[name]['device_peak'])
  if with_torch:
    record['speedup_vs_torch'] = record['torch']['step_s'] / record['jax']['step_s']
  return record


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _gib(n: int | None) -> str:
  return f'{n / 2**30:.2f}' if n else '-'


def _pct(x: float | None) -> str:
  return f'{100 * x:.0f}%' if x is not None else '-'


def format_table(records: Sequence[dict[str, Any]]) -> str:
  """Markdown table: per config, jaxseg and torch step time, img/s, %peak, memory, and ratio."""
  head = ('| config | mode | jaxseg ms/step | img/s | compile s | GFLOP/step | GFLOP/s | %peak '
          '| mem GiB | torch ms/step | img/s | %peak | mem GiB | jaxseg/torch speed |')
  lines = [head, '|' + '---|' * (head.count('|') - 1)]
  for r in records:
    name = f"{r['model'] or r['op']} b{r['batch']} {r['size'][0]}x{r['size'][1]} {r['dtype']}"
    if r.get('width', 1.0) != 1.0:
      name += f" w{r['width']:g}"
    if r.get('conv_impl', 'auto') != 'auto':
      name += f" conv={r['conv_impl']}"
    if 'error' in r:
      lines.append(f"| {name} | {r['mode']} | error: {r['error'][:120]} |")
      continue
    j, t = r['jax'], r.get('torch')
    mem = lambda m: _gib(m['device_peak_bytes'] or m['peak_rss'])
    row = [name, r['mode'], f"{1e3 * j['step_s']:.1f}", f"{j['images_per_s']:.2f}",
           f"{j['compile_s']:.1f}", f"{r['flops'] / 1e9:.1f}",
           f"{(j['flops_per_s'] or 0) / 1e9:.0f}", _pct(j['fraction_of_peak']), mem(j)]
    if t:
      row += [f"{1e3 * t['step_s']:.1f}", f"{t['images_per_s']:.2f}",
              _pct(t['fraction_of_peak']), mem(t), f"{r['speedup_vs_torch']:.2f}x"]
    else:
      row += ['-'] * 5
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)


def format_header(info: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
  peaks = [r['peak_flops_per_s'] for r in records if r.get('peak_flops_per_s')]
  loads = [v for r in records for v in (r.get('load_before', [None])[:1]
                                         + r.get('load_after', [None])[:1]) if v is not None]
  text = (f"backend {info['backend']} ({info['device_kind']}), CPU {info['cpu']}, "
          f"{info['cores']} cores, jax {info['jax']}")
  if peaks:
    text += (f"; peak {min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f} GFLOP/s "
             f"({records[0].get('peak_source', '')})")
  if loads:
    text += f'; 1-min load average {min(loads):.1f}-{max(loads):.1f} during the run'
  return text


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _add_arguments(p: argparse.ArgumentParser) -> None:
  what = p.add_mutually_exclusive_group(required=True)
  what.add_argument('--model', help='model name (fcn32s, fcn16s, fcn8s, deconvnet, pspnet50, '
                    'pspnet101)')
  what.add_argument('--op', help=f'an op alone: {", ".join(OPS)}')
  what.add_argument('--all', action='store_true',
                    help='every model in train and infer mode, then every op')
  p.add_argument('--mode', choices=MODES, help='train or infer (default: infer; --all: both)')
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--size', type=int, nargs=2, default=(320, 320), metavar=('H', 'W'))
  p.add_argument('--dtype', choices=DTYPES, default='float32',
                 help='compute dtype (torch: autocast); parameters stay float32')
  p.add_argument('--steps', type=int, default=10, help='timed steps (median reported)')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps after compilation')
  p.add_argument('--width', type=float, default=1.0, help='channel multiplier (tiny smoke runs)')
  p.add_argument('--threads', type=int, default=0,
                 help='cores for both frameworks (CPU affinity + torch threads; 0 = all)')
  p.add_argument('--torch', action=argparse.BooleanOptionalAction, default=True,
                 help='also run the PyTorch eager twin, interleaved (default: on)')
  p.add_argument('--channels_last', '--channels-last', action='store_true',
                 help='torch in channels_last memory format (default: contiguous NCHW)')
  p.add_argument('--conv_impl', '--conv-impl', choices=('auto', 'lax'), default='auto',
                 help="jaxseg's convolution formulation: auto (matmul forms on the CPU) or lax "
                 "(XLA's convolutions everywhere, as before the CPU work)")
  p.add_argument('--no_peak', '--no-peak', action='store_true',
                 help='skip the matmul peak measurement on the CPU')
  p.add_argument('--peak_size', '--peak-size', type=int, default=MATMUL_SIZE,
                 help='side of the float32 matmul that measures the CPU peak')
  p.add_argument('--json', help='write every record (with per-step times) to this JSON file')


def specs_from_args(args: argparse.Namespace) -> list[Spec]:
  common = dict(batch=args.batch, size=tuple(args.size), dtype=args.dtype, width=args.width,
                threads=args.threads, channels_last=args.channels_last,
                conv_impl=args.conv_impl)
  if args.all:
    from jaxseg.models import MODEL_NAMES

    modes = [args.mode] if args.mode else list(MODES)
    specs = [Spec(model=m, mode=mode, **common) for m in MODEL_NAMES for mode in modes]
    specs += [Spec(op=o, mode=mode, **common) for o in OPS for mode in modes]
  else:
    specs = [Spec(model=args.model or '', op=args.op or '', mode=args.mode or 'infer', **common)]
  for spec in specs:
    validate(spec)
  return specs


def cmd_benchmark(args: argparse.Namespace) -> int:
  specs = specs_from_args(args)
  if args.steps < 1 or args.warmup < 0 or args.peak_size < 1:
    raise ValueError(f'benchmark: --steps and --peak-size must be >= 1 and --warmup >= 0, got '
                     f'{args.steps}, {args.peak_size}, {args.warmup}')
  if args.json:
    parent = os.path.dirname(os.path.abspath(args.json))
    if not os.path.isdir(parent):
      raise FileNotFoundError(f'benchmark: --json folder {parent} does not exist')
  info = device_info()
  records = []
  for spec in specs:
    print(f'[benchmark] {spec.name} {spec.mode} (load {load_average()[:1]})', file=sys.stderr,
          flush=True)
    try:
      record = run_spec(spec, args.steps, args.warmup, args.torch, not args.no_peak,
                        info['backend'], info['device_kind'], args.peak_size)
    except (RuntimeError, ValueError) as e:
      if len(specs) == 1:
        raise
      record = dict(dataclasses.asdict(spec), error=str(e))
    records.append(record)
    if args.json:  # Written after every config, so a long sweep keeps what it measured.
      with open(args.json, 'w') as f:
        json.dump(dict(info=info, command=sys.argv, records=records), f, indent=1)
  print(format_header(info, records))
  print(format_table(records))
  return 1 if any('error' in r for r in records) else 0


def register(subparsers: Any) -> None:
  """Adds the `benchmark` subcommand to jaxseg's CLI."""
  p = subparsers.add_parser('benchmark', help='time every model against PyTorch eager',
                            description=__doc__.split('\n\n')[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
  _add_arguments(p)
  p.set_defaults(func=cmd_benchmark)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ['_worker']:
    _worker_main(argv[1])
    return 0
  parser = argparse.ArgumentParser(prog='python -m jaxseg.benchmark')
  sub = parser.add_subparsers(dest='command', required=True)
  register(sub)
  args = parser.parse_args(['benchmark'] + argv)
  return args.func(args)


if __name__ == '__main__':
  sys.exit(main())
