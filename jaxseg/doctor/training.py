"""The training checks: the bare train step (time, memory, MFU) and the training loop against it.

`measure_step` runs `train.make_train_step` on a random state and batch (jaxseg.doctor.inputs):
one first step (tracing + compilation), `warmup` untimed steps, `timed_steps` steps each ended by
`jax.block_until_ready` (their median is the step time), then as many back to back with one
block at the end (the pipelined throughput, which is what a training loop that never waits on
the host can reach).

- Memory: where the backend reports it (GPU, TPU), the device's `peak_bytes_in_use` after the
  steps (JAX cannot reset it: it is the process's peak so far, which the steps dominate).
  Elsewhere (the CPU) the step is compiled ahead of time and the program's `memory_analysis()`
  is the number: arguments + outputs + temporaries - donated aliases.
- Otherwise the step is called directly, as the trainer calls it, so its program is the very one
  `train_and_evaluate` compiles for the same config and devices: with the persistent
  compilation cache on (jaxseg's default) the loop check's trainer compiles nothing.
- FLOPs: XLA's cost analysis of the step lowered with `ops.set_conv_impl('lax')` (the
  network's conventional count; see jaxseg.benchmark.workloads). MFU = FLOPs / median step time
  / `jaxseg.benchmark.devices.published_peak(device kind, dtype)`; n/a on the CPU, which has no
  published peak.

The loop check runs `train.train_and_evaluate` on the embedded dataset (no evaluation, one save
at the end; resuming from a random state saved as checkpoint 0, see `seed_workdir`) and compares
the images/s of its steady logging intervals (all but the first, which includes compilation)
with the bare step's pipelined images/s at the same config, batch and devices. On an
accelerator the loop must reach LOOP_GOAL of the bare step: below it the input pipeline or the
host is holding training back. On the CPU the pipeline competes with the step for the same
cores, so the ratio is only reported.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from typing import Any

import jax
import ml_collections
from flax import linen as nn
from jax.sharding import Mesh

from jaxseg import checkpoint
from jaxseg import launch
from jaxseg import ops
from jaxseg import optim
from jaxseg import parallel
from jaxseg import train
from jaxseg.benchmark import devices as bench_devices
from jaxseg.doctor import forms
from jaxseg.doctor import inputs
from jaxseg.doctor.runner import Context, Outcome

LOOP_GOAL = 0.97
GIB = 2.0**30


def _flops(cost: Any) -> float | None:
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get('flops')
  return float(flops) if flops else None


def step_flops(train_step: Any, state: Any, batch: Any) -> float | None:
  """FLOPs of one step written with lax's convolutions (lowered only: nothing runs)."""
  previous = ops.conv_impl()
  ops.set_conv_impl('lax')
  try:
    return _flops(jax.jit(train_step).lower(state, batch).cost_analysis())
  finally:
    ops.set_conv_impl(previous)


def memory_stats(device: jax.Device) -> dict[str, Any]:
  """The device's memory statistics ({} where the backend keeps none: the CPU)."""
  return device.memory_stats() or {}


def program_bytes(compiled: Any) -> dict[str, int] | None:
  """A compiled program's memory: arguments + outputs + temporaries - donated aliases."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  parts = {name: int(getattr(stats, f'{name}_size_in_bytes', 0) or 0)
           for name in ('argument', 'output', 'temp', 'alias', 'generated_code')}
  parts['total'] = parts['argument'] + parts['output'] + parts['temp'] - parts['alias']
  return parts


def measure_step(config: ml_collections.ConfigDict, model: nn.Module, mesh: Mesh, warmup: int,
                 timed_steps: int, detail: bool = True) -> dict[str, Any]:
  """Times `train.make_train_step` at config.train.batch_size on `mesh`; see the module doc.

  `detail=False` (the loop check, which needs the throughput only) skips the FLOP count and the
  ahead-of-time compile for memory: the step is called directly on every backend.
  """
  batch_size = int(config.train.batch_size)
  tx, schedule = optim.create_optimizer(config, train.backbone_prefixes(config))
  state = inputs.random_train_state(config, model, tx, mesh)
  batch = inputs.random_batch(config, batch_size, mesh)
  train_step = train.make_train_step(config, model, tx, schedule, mesh)
  flops = step_flops(train_step, state, batch) if detail else None
  device = mesh.devices.flat[0]
  direct = bool(memory_stats(device)) or not detail

  start = time.perf_counter()
  if direct:
    run, program = train_step, None
  else:
    compiled = jax.jit(train_step, donate_argnums=(0,)).lower(state, batch).compile()
    run, program = compiled, program_bytes(compiled)
  compiled_s = time.perf_counter() - start
  state, metrics = run(state, batch)
  jax.block_until_ready(metrics)
  first_s = time.perf_counter() - start
  for _ in range(warmup):
    state, metrics = run(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(timed_steps):
    start = time.perf_counter()
    state, metrics = run(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  start = time.perf_counter()
  for _ in range(timed_steps):
    state, metrics = run(state, batch)
  jax.block_until_ready((state, metrics))
  pipelined_s = (time.perf_counter() - start) / timed_steps
  loss = float(parallel.to_host(metrics['loss']))
  grad_norm = float(parallel.to_host(metrics['grad_norm']))
  step_s = statistics.median(times)
  stats = memory_stats(device)
  peak = bench_devices.published_peak(device.device_kind, str(config.model.dtype))
  return {
      'batch': batch_size,
      'devices': int(mesh.size),
      'compile_s': max(first_s - step_s, 0.0) if direct else compiled_s,
      'step_s': step_s,
      'step_times_s': times,
      'pipelined_step_s': pipelined_s,
      'images_per_sec': batch_size / step_s,
      'pipelined_images_per_sec': batch_size / pipelined_s,
      'flops_per_step': flops,
      'peak_flops': peak,
      'mfu': bench_devices.mfu(flops, step_s, peak),
      'peak_bytes_in_use': stats.get('peak_bytes_in_use'),
      'bytes_limit': stats.get('bytes_limit'),
      'program_bytes': program,
      'loss': loss,
      'grad_norm': grad_norm,
  }


def measured_step(ctx: Context, config: ml_collections.ConfigDict, model: nn.Module,
                  mesh: Mesh, detail: bool = True) -> dict[str, Any]:
  """`measure_step`, measured once per (config, devices, model) in a doctor run: the full
  form's loop check reuses the batch-8 step check's numbers (same config, one device)."""
  key = (config.to_json_best_effort(sort_keys=True), tuple(d.id for d in mesh.devices.flat),
         repr(model))
  if key not in ctx.measured:
    ctx.measured[key] = measure_step(config, model, mesh, ctx.form.warmup, ctx.form.timed_steps,
                                     detail)
  return ctx.measured[key]


def _memory_text(m: dict[str, Any]) -> str:
  if m['peak_bytes_in_use'] is not None:
    limit = f' of {m["bytes_limit"] / GIB:.1f}' if m['bytes_limit'] else ''
    return f'device peak {m["peak_bytes_in_use"] / GIB:.2f}{limit} GiB'
  if m['program_bytes'] is not None:
    return f'program {m["program_bytes"]["total"] / 2**20:.0f} MiB'
  return 'memory n/a'


def check_train_step(ctx: Context, batch: int) -> Outcome:
  """PSPNet's train step at `batch` on the device checked: time, memory, MFU, a finite loss."""
  config = forms.step_config(ctx.form, batch, ctx.data_dir)
  model = forms.step_model(ctx.form, config)
  m = measured_step(ctx, config, model, parallel.create_mesh([ctx.device]))
  mfu = 'MFU n/a' if m['mfu'] is None else f'MFU {100 * m["mfu"]:.1f}%'
  flops = 'n/a' if not m['flops_per_step'] else f'{m["flops_per_step"] / 1e9:.3g} GFLOP'
  message = (f'{forms.describe(config, ctx.form.stage_sizes)} batch {batch}: '
             f'{1e3 * m["step_s"]:.1f} ms/step ({m["images_per_sec"]:.1f} images/s), '
             f'{_memory_text(m)}, {flops}/step, {mfu}; compile {m["compile_s"]:.1f} s')
  finite = math.isfinite(m['loss']) and math.isfinite(m['grad_norm'])
  if not finite:
    message = f'non-finite loss {m["loss"]} / gradient norm {m["grad_norm"]}; ' + message
  return Outcome(finite, message, dict(m, model=forms.describe(config, ctx.form.stage_sizes)))


def _steady_images_per_sec(workdir: Any) -> tuple[list[float], list[dict]]:
  """images/s of the logged train intervals after the first, and every train record."""
  path = os.path.join(workdir, train.METRICS_FILE)
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  records = [r for r in records if r.get('split') == 'train']
  return [r['images_per_sec'] for r in records[1:] if r.get('images_per_sec')], records


def seed_workdir(config: ml_collections.ConfigDict, model: nn.Module, mesh: Mesh,
                 workdir: Any) -> None:
  """Saves a random train state as checkpoint 0 of `workdir`, with `config`.

  `train_and_evaluate` then resumes from it (its restore path) instead of initialising: the loop
  runs the same steps, without the initialisers' compilation (tens of seconds on XLA:CPU even
  for the smallest network; see jaxseg.doctor.inputs).
  """
  tx, _ = optim.create_optimizer(config, train.backbone_prefixes(config))
  state = inputs.random_train_state(config, model, tx, mesh)
  checkpointer = checkpoint.Checkpointer(workdir, keep=1)
  try:
    checkpointer.save(0, state, config)
    checkpointer.wait()
  finally:
    checkpointer.close()


def check_train_loop(ctx: Context) -> Outcome:
  """`train_and_evaluate`'s images/s against the bare step's at the same config and batch."""
  if launch.plan_from_environment(os.environ) is not None:
    raise RuntimeError('this process was started by a multi-process launcher; the doctor checks '
                       'one process: run it outside the launch (or with JAXSEG_LAUNCHER=none)')
  config = forms.loop_config(ctx.form, ctx.data_dir, jax.device_count())
  mesh = parallel.create_mesh()  # All devices, as train_and_evaluate.
  model = train.build_model(config)
  bare = measured_step(ctx, config, model, mesh, detail=False)
  workdir = ctx.tmp / 'train_loop'
  seed_workdir(config, model, mesh, workdir)
  start = time.perf_counter()
  train.train_and_evaluate(config, workdir)
  loop_s = time.perf_counter() - start
  steady, records = _steady_images_per_sec(workdir)
  if not steady:
    raise RuntimeError(f'{workdir / train.METRICS_FILE} has no steady train interval '
                       f'({len(records)} train records)')
  loop_ips = statistics.median(steady)
  ratio = loop_ips / bare['pipelined_images_per_sec']
  on_cpu = jax.default_backend() == 'cpu'
  ok = on_cpu or ratio >= LOOP_GOAL
  details = {'model': forms.describe(config), 'dataset': config.data.dataset,
             'batch': int(config.train.batch_size), 'devices': int(mesh.size),
             'steps': int(config.train.num_steps), 'log_every': int(config.train.log_every),
             'loop_images_per_sec': loop_ips, 'loop_intervals_images_per_sec': steady,
             'bare_pipelined_images_per_sec': bare['pipelined_images_per_sec'],
             'bare_images_per_sec': bare['images_per_sec'], 'ratio': ratio,
             'goal': None if on_cpu else LOOP_GOAL, 'train_and_evaluate_s': loop_s,
             'final_loss': records[-1].get('loss')}
  goal = ('(CPU: reported only, the input pipeline shares the cores)' if on_cpu else
          f'(goal >= {LOOP_GOAL:.2f})')
  message = (f'{details["model"]} batch {details["batch"]} on {config.data.dataset}: loop '
             f'{loop_ips:.1f} images/s vs bare step {bare["pipelined_images_per_sec"]:.1f} = '
             f'{ratio:.2f} {goal}')
  if not ok:
    message += ': the input pipeline or the host holds training back'
  return Outcome(ok, message, details)

