"""The eval check: compile time and memory of a multi-scale + flip evaluation, and one run.

PSPNet's test protocol (`jaxseg.inference.inference_fn(..., 'multiscale', crop, stride, scales,
flip=True)` over `model_apply_fn`) on one image of the form's eval size, jitted with the
variables as an argument (as the predictor does) and compiled ahead of time: the compile time and
`memory_analysis()` are what `jaxseg eval` will spend on its first batch. The compiled program
must fit in the device's memory where the device says how much it has, and its output must be
class probabilities: finite, summing to 1 at every pixel.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from jaxseg import inference
from jaxseg import optim
from jaxseg import parallel
from jaxseg import train
from jaxseg.doctor import forms
from jaxseg.doctor import inputs
from jaxseg.doctor import training
from jaxseg.doctor.runner import Context, Outcome

MIB = 2.0**20


def check_multiscale_eval(ctx: Context) -> Outcome:
  """Compiles and runs the multi-scale + flip inference of one eval-size image."""
  form = ctx.form
  config = forms.step_config(form, 1, ctx.data_dir)
  # Inference runs outside shard_map; BatchNorm uses its running statistics.
  model = forms.step_model(form, config).clone(sync_bn_axis=None)
  tx, _ = optim.create_optimizer(config, train.backbone_prefixes(config))
  target = train.create_train_state(config, model, tx, parallel.create_mesh([ctx.device]),
                                    abstract=True)
  variables = inputs.random_tree({'params': target.params, 'batch_stats': target.batch_stats},
                                 seed=2)
  height, width = form.eval_size
  images = jax.device_put(
      np.random.default_rng(3).standard_normal((1, height, width, 3), np.float32), ctx.device)
  sizes = jax.device_put(np.array([[height, width]], np.int32), ctx.device)

  def infer(variables, images, sizes):
    apply_fn = inference.model_apply_fn(model, variables)
    return inference.inference_fn(apply_fn, 'multiscale', form.eval_crop, form.eval_stride,
                                  form.eval_scales, flip=True)(images, sizes)

  start = time.perf_counter()
  compiled = jax.jit(infer).lower(variables, images, sizes).compile()
  compile_s = time.perf_counter() - start
  memory = training.program_bytes(compiled)
  start = time.perf_counter()
  probs = np.asarray(compiled(variables, images, sizes))
  run_s = time.perf_counter() - start
  limit = training.memory_stats(ctx.device).get('bytes_limit')

  problems = []
  expected = (1, height, width, int(config.data.num_classes))
  if probs.shape != expected:
    problems.append(f'output shape {probs.shape}, expected {expected}')
  elif not np.all(np.isfinite(probs)):
    problems.append(f'{int(np.sum(~np.isfinite(probs)))} non-finite probabilities')
  else:
    off = float(np.max(np.abs(probs.sum(-1) - 1.0)))
    if off > 1e-3:
      problems.append(f'probabilities sum to 1 +- {off:.2g} (> 1e-3)')
  if memory is None:
    memory = {'total': 0, 'temp': 0}
    problems.append('the backend reports no memory analysis of the compiled program')
  elif limit and memory['total'] > limit:
    problems.append(f'needs {memory["total"] / MIB:.0f} MiB of the device\'s {limit / MIB:.0f}')
  scales = ', '.join(f'{s:g}' for s in form.eval_scales)
  what = (f'{forms.model_name(config, form.stage_sizes)} {height}x{width} '
          f'{config.model.dtype}, scales {scales} + flip, windows {form.eval_crop[0]} stride '
          f'{form.eval_stride[0]}')
  details = {'model': what, 'compile_s': compile_s, 'run_s': run_s, 'memory_bytes': memory,
             'bytes_limit': limit, 'problems': problems}
  summary = (f'{what}: compile {compile_s:.1f} s, program {memory["total"] / MIB:.0f} MiB '
             f'(temp {memory["temp"] / MIB:.0f}), one image {run_s:.2f} s')
  if problems:
    return Outcome(False, '; '.join(problems) + f' ({summary})', details)
  return Outcome(True, summary, details)
