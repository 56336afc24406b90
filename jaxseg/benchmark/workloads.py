"""What the jaxseg worker runs: one model or op step (`JaxWorkload`), and the CPU's matmul peak.

- train = forward + backward + SGD (momentum 0.9, weight decay 1e-4) update on the real model
  with jaxseg's loss, jitted with the train state donated; infer = forward in eval mode. An op's
  train step is its forward and the gradient to every float input for a fixed cotangent.
- Compile time (lower + compile) is reported apart from the step times.
- FLOPs per step come from XLA's cost analysis of the step lowered with lax convolutions
  (`ops.set_conv_impl('lax')`): the network's conventional count (train: forward + backward +
  update, as the analysis counts them), used for both frameworks (same network, same work) and
  for MFU. The program that runs may write some convolutions as matmuls inside loops (jaxseg's
  CPU formulations), which cost analysis counts once per loop; that count is kept apart as
  'flops_executed'.
- The CPU has no published peak to divide by: `MatmulWorkload` times a square matmul in the run's
  dtype in XLA and in torch, and the faster is the peak (the CPU's peak depends on the dtype:
  AMX units multiply bfloat16 several times faster than float32 where the library uses them).

JAX is imported inside the classes: this module is loaded only in worker processes.
"""
from __future__ import annotations

import time
from typing import Any

from jaxseg.benchmark.spec import LEARNING_RATE, NUM_CLASSES, Spec, available_cores, op_geometry


def device_info() -> dict[str, Any]:
  """The platform ('cpu', 'gpu', 'tpu'), kind and count of the devices this process's JAX got."""
  import jax  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  return dict(platform=device.platform, device_kind=device.device_kind,
              device_count=jax.device_count(), jax=jax.__version__)


def _cost(cost) -> dict[str, float]:
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost or {}


class JaxWorkload:
  """Builds and compiles the jaxseg step of a Spec; `step()` runs it once (blocking)."""

  def __init__(self, spec: Spec):
    # pylint: disable=g-import-not-at-top
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxseg import ops

    self.jax = jax
    self.device = jax.devices()[0].platform
    ops.set_conv_impl(spec.conv_impl)
    rng = np.random.default_rng(0)
    dtype = jnp.dtype(spec.dtype)
    build = self._model_step if spec.model else self._op_step
    fn, args, donate = build(spec, rng, dtype)
    start = time.perf_counter()
    self.compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    self.compile_s = time.perf_counter() - start
    cost = _cost(self.compiled.cost_analysis())
    self.flops_executed = float(cost.get('flops', 0.0))
    self.bytes_accessed = float(cost.get('bytes accessed', 0.0))
    # The network's FLOPs: XLA's count of the step written with lax convolutions.
    ops.set_conv_impl('lax')
    try:
      self.flops = float(_cost(jax.jit(lambda *a: fn(*a)).lower(*args).cost_analysis())
                         .get('flops', 0.0))
    finally:
      ops.set_conv_impl(spec.conv_impl)
    self.args = args
    self.donate = donate

  @staticmethod
  def _model_step(spec, rng, dtype):
    # pylint: disable=g-import-not-at-top
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

  @staticmethod
  def _op_step(spec, rng, dtype):
    # pylint: disable=g-import-not-at-top
    import jax
    import jax.numpy as jnp

    from jaxseg import ops

    g = op_geometry(spec)
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

  def reset_device_peak(self) -> None:
    """JAX has no way to reset its peak: the device peak includes compilation and warm-up."""

  def device_peak_bytes(self) -> int | None:
    stats = self.jax.devices()[0].memory_stats()
    return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


class MatmulWorkload:
  """A size^2 matmul in the run's dtype, in XLA and in torch, on the CPU: its attainable peak."""

  device = 'cpu'
  compile_s = 0.0

  def __init__(self, spec: Spec, size: int):
    # pylint: disable=g-import-not-at-top
    import jax
    import jax.numpy as jnp
    import torch

    torch.set_num_threads(spec.threads or available_cores())
    self.torch = torch
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
