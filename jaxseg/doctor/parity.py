"""The op-parity check: jaxseg's ops give the same numbers on the device checked as a reference.

Cases are the layers the papers' networks are made of, each with its gradients (a random
cotangent): atrous 3x3 convs at PSPNet's rates (rate 2, and rate 4 narrowing 64 -> 8 channels as
PSPNet's head), a strided 4x4 transposed conv (FCN/DeconvNet upsampling), ResNet's 3x3/2 max
pool, and DeconvNet's 2x2 ceil-mode pool with switches followed by the unpool.

Full form (an accelerator): every case runs on the accelerator and on `jax.devices('cpu')[0]`
from the same inputs. Reduced form (the CPU backend): the ops run with `set_conv_impl('auto')`,
i.e. jaxseg's XLA:CPU matmul formulations with their custom gradients, against independent
formulations of the same numbers (lax's convolution, reduce_window and JAX's own gradients,
reshape-argmax and scatter) — what `set_conv_impl('lax')` computes, written without jaxseg's ops.

Tolerances, as max |a - b| / max |reference| per output:
  float32 (under jax.default_matmul_precision('highest'), so no TF32 on GPUs and no bfloat16
    passes on TPUs): 1e-5, ~80 float32 ulps at the largest value. Sums here run over at most
    ~2,000 products, whose rounding in another order moves the result by a few ulps of the
    largest partial sum.
  bfloat16 inputs and outputs: 2e-2. bfloat16 keeps 8 significant bits (an ulp is up to 2^-7
    = 0.8% of a value); two back-ends that accumulate in float32 and round once differ by about
    one ulp per output, and a gradient that goes through a rounded bfloat16 cotangent by one or
    two more; 2e-2 is 2.5 ulps at the largest value.
Max-pool values, switches (argmax indices) and unpooled maps, and the gradient routed through
pool + unpool, select or move values without arithmetic: they must agree bitwise. The max-pool
gradient adds the cotangents of overlapping windows, in an order each back-end picks: tolerance.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseg import ops
from jaxseg.doctor.runner import Context, Outcome

TOLERANCE = {'float32': 1e-5, 'bfloat16': 2e-2}
_DN = ('NHWC', 'HWIO', 'NHWC')


@dataclasses.dataclass(frozen=True)
class Case:
  """One op and its reference.

  Attributes:
    name: what it is, for the report.
    inputs: (name, shape) of each float input; 'kernel' is scaled by 1/sqrt(fan-in) and the last
      input is the cotangent of the main output.
    run: (*inputs) -> {output name: array}, with jaxseg's ops.
    reference: the same outputs by an independent formulation (reduced form).
    exact: outputs that must agree bitwise.
  """
  name: str
  inputs: tuple[tuple[str, tuple[int, ...]], ...]
  run: Callable[..., dict[str, jax.Array]]
  reference: Callable[..., dict[str, jax.Array]]
  exact: frozenset[str] = frozenset()


def _value_and_grads(f: Callable[..., jax.Array], names: tuple[str, ...], *args
                     ) -> dict[str, jax.Array]:
  """{'out': f(*args[:-1]), 'd_<name>': gradient of sum(out * cotangent)} (cotangent args[-1])."""
  *inputs, cotangent = args
  out, vjp = jax.vjp(f, *inputs)
  grads = vjp(cotangent.astype(out.dtype))
  return {'out': out, **{f'd_{n}': g for n, g in zip(names, grads)}}


# ------------------------------------------------------------------ convolutions
def _atrous(rate: int, with_bias: bool) -> tuple[Callable, Callable]:
  names = ('x', 'kernel', 'bias') if with_bias else ('x', 'kernel')

  def run(*args):
    return _value_and_grads(lambda x, k, *b: ops.atrous_conv(x, k, rate, *b), names, *args)

  def reference(*args):
    def conv(x, k, *b):
      pad = rate * (k.shape[0] - 1) // 2  # 'Same' output for the odd kernel.
      y = lax.conv_general_dilated(x, k, (1, 1), ((pad, pad), (pad, pad)),
                                   rhs_dilation=(rate, rate), dimension_numbers=_DN)
      return y + b[0] if b else y
    return _value_and_grads(conv, names, *args)
  return run, reference


def _transposed(stride: int, pad: int) -> tuple[Callable, Callable]:
  def run(x, kernel, cotangent):
    return _value_and_grads(
        lambda x, k: ops.conv_transpose(x, k, (stride, stride), ((pad, pad), (pad, pad))),
        ('x', 'kernel'), x, kernel, cotangent)

  def reference(x, kernel, cotangent):
    # torch's conv_transpose2d: the input dilated by the stride, convolved with the flipped,
    # in/out-swapped kernel, padded k - 1 - pad.
    def conv(x, k):
      edge = k.shape[0] - 1 - pad
      return lax.conv_general_dilated(x, jnp.flip(k, (0, 1)).swapaxes(2, 3), (1, 1),
                                      ((edge, edge), (edge, edge)),
                                      lhs_dilation=(stride, stride), dimension_numbers=_DN)
    return _value_and_grads(conv, ('x', 'kernel'), x, kernel, cotangent)
  return run, reference


# ------------------------------------------------------------------ pooling
def _max_pool_3x3(x, cotangent):
  return _value_and_grads(lambda x: ops.max_pool(x, 3, 2, 1), ('x',), x, cotangent)


def _max_pool_3x3_reference(x, cotangent):
  lowest = np.array(-np.inf, x.dtype)  # Concrete: lax picks its differentiable max pool.
  return _value_and_grads(
      lambda x: lax.reduce_window(x, lowest, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                  ((0, 0), (1, 1), (1, 1), (0, 0))), ('x',), x, cotangent)


def _pool_unpool(x, cotangent):
  h, w = x.shape[1:3]
  pooled, switches = ops.max_pool_with_argmax(x, 2, 2, 'VALID', ceil_mode=True)
  routed = _value_and_grads(
      lambda x: ops.max_unpool(*ops.max_pool_with_argmax(x, 2, 2, 'VALID', ceil_mode=True),
                               (h, w), 2, 2), ('x',), x, cotangent)
  return {'pooled': pooled, 'switches': switches, 'unpooled': routed['out'],
          'd_x': routed['d_x']}


def _argmax_pool_reference(x):
  """2x2/2 ceil-mode max pool and switches by reshaping windows (first maximum wins)."""
  n, h, w, c = x.shape
  oh, ow = -(-h // 2), -(-w // 2)
  padded = jnp.pad(x, ((0, 0), (0, 2 * oh - h), (0, 2 * ow - w), (0, 0)),
                   constant_values=np.array(-np.inf, x.dtype))
  windows = padded.reshape(n, oh, 2, ow, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(
      n, oh, ow, c, 4)
  pick = jnp.argmax(windows, axis=-1)
  rows = 2 * jnp.arange(oh)[None, :, None, None] + pick // 2
  cols = 2 * jnp.arange(ow)[None, None, :, None] + pick % 2
  # Taking the picked value (not windows.max, whose gradient splits among ties) sends the
  # gradient to the switch alone, as the op promises.
  pooled = jnp.take_along_axis(windows, pick[..., None], axis=-1)[..., 0]
  return pooled, (rows * w + cols).astype(jnp.int32)


def _unpool_reference(pooled, switches, h, w):
  """Every pooled value scattered to its switch in a zero (H * W) plane."""
  n, _, _, c = pooled.shape
  flat = jnp.zeros((n, h * w, c), pooled.dtype)
  batch = jnp.arange(n)[:, None, None, None]
  channel = jnp.arange(c)[None, None, None, :]
  return flat.at[batch, switches, channel].set(pooled).reshape(n, h, w, c)


def _pool_unpool_reference(x, cotangent):
  h, w = x.shape[1:3]
  pooled, switches = _argmax_pool_reference(x)
  routed = _value_and_grads(lambda x: _unpool_reference(*_argmax_pool_reference(x), h, w),
                            ('x',), x, cotangent)
  return {'pooled': pooled, 'switches': switches, 'unpooled': routed['out'],
          'd_x': routed['d_x']}


_R2_RUN, _R2_REF = _atrous(2, with_bias=True)
_R4_RUN, _R4_REF = _atrous(4, with_bias=False)
_T2_RUN, _T2_REF = _transposed(2, 1)

CASES = (
    Case('atrous_conv 3x3 rate 2, 16->32 + bias',
         (('x', (2, 15, 17, 16)), ('kernel', (3, 3, 16, 32)), ('bias', (32,)),
          ('cotangent', (2, 15, 17, 32))), _R2_RUN, _R2_REF),
    Case('atrous_conv 3x3 rate 4, 64->8',
         (('x', (2, 13, 13, 64)), ('kernel', (3, 3, 64, 8)), ('cotangent', (2, 13, 13, 8))),
         _R4_RUN, _R4_REF),
    Case('conv_transpose 4x4 stride 2 pad 1, 16->8',
         (('x', (2, 7, 9, 16)), ('kernel', (4, 4, 8, 16)), ('cotangent', (2, 14, 18, 8))),
         _T2_RUN, _T2_REF),
    Case('max_pool 3x3 stride 2 pad 1', (('x', (2, 15, 17, 8)), ('cotangent', (2, 8, 9, 8))),
         _max_pool_3x3, _max_pool_3x3_reference, frozenset({'out'})),
    Case('max_pool_with_argmax 2x2 ceil + max_unpool',
         (('x', (2, 9, 11, 8)), ('cotangent', (2, 9, 11, 8))), _pool_unpool,
         _pool_unpool_reference, frozenset({'pooled', 'switches', 'unpooled', 'd_x'})),
)


# ------------------------------------------------------------------ running and comparing
def case_inputs(case: Case, dtype: str, seed: int) -> tuple[np.ndarray, ...]:
  """Host inputs of a case: N(0, 1) (kernels N(0, 1/fan-in)), in `dtype`."""
  rng = np.random.default_rng(seed)
  out = []
  for name, shape in case.inputs:
    value = rng.standard_normal(shape, np.float32)
    if name == 'kernel':
      value /= np.sqrt(np.prod(shape[:3]))
    out.append(value.astype(jnp.dtype(dtype)))
  return tuple(out)


def _evaluate(fns: dict[str, Callable[..., dict]], inputs: dict[str, tuple[np.ndarray, ...]],
              device: jax.Device, dtype: str) -> dict[str, dict[str, np.ndarray]]:
  """Every case in one program on `device`; host copies of the outputs."""
  placed = jax.device_put(inputs, device)
  program = jax.jit(lambda inputs: {name: fn(*inputs[name]) for name, fn in fns.items()})
  if dtype == 'float32':
    with jax.default_matmul_precision('highest'):
      return jax.device_get(program(placed))
  return jax.device_get(program(placed))


def compare(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray],
            exact: frozenset[str], tolerance: float) -> dict[str, dict[str, Any]]:
  """{output: {'ok', 'exact', 'error' | 'differing'}}: the number of elements that differ (exact
  outputs), else the error max |a - b| / max |reference|."""
  results = {}
  for key, ref in reference.items():
    got = np.asarray(candidate[key])
    ref = np.asarray(ref)
    if got.shape != ref.shape or got.dtype != ref.dtype:
      results[key] = {'ok': False, 'error': None, 'exact': key in exact,
                      'mismatch': f'{got.dtype}{list(got.shape)} vs {ref.dtype}{list(ref.shape)}'}
      continue
    if key in exact:
      differ = int(np.sum(got != ref))
      results[key] = {'ok': differ == 0, 'exact': True, 'error': None, 'differing': differ}
      continue
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    scale = float(np.max(np.abs(ref64))) or 1.0
    error = float(np.max(np.abs(got64 - ref64))) / scale
    results[key] = {'ok': bool(error <= tolerance), 'exact': False, 'error': error}
  return results


def check_op_parity(ctx: Context) -> Outcome:
  """float32 and bfloat16 parity of every case; see the module docstring for the pairs."""
  quick = ctx.form.quick
  try:
    cpu = jax.devices('cpu')[0]
  except RuntimeError as e:
    raise RuntimeError(f'no CPU device to compare with ({e}); include cpu in JAX_PLATFORMS, '
                       'e.g. JAX_PLATFORMS=cuda,cpu') from e
  previous = ops.conv_impl()
  per_case: dict[str, dict[str, Any]] = {}
  worst = {}
  try:
    if quick:
      ops.set_conv_impl('auto')  # XLA:CPU's matmul formulations: what CPU training runs.
    for dtype, tolerance in TOLERANCE.items():
      inputs = {c.name: case_inputs(c, dtype, seed) for seed, c in enumerate(CASES)}
      candidate = _evaluate({c.name: c.run for c in CASES}, inputs, ctx.device, dtype)
      reference = _evaluate({c.name: (c.reference if quick else c.run) for c in CASES}, inputs,
                            cpu, dtype)
      results = {c.name: compare(candidate[c.name], reference[c.name], c.exact, tolerance)
                 for c in CASES}
      worst[dtype] = max(r['error'] for outputs in results.values() for r in outputs.values()
                         if not r['exact'] and r['error'] is not None)
      per_case.update({f'{name} [{dtype}]': outputs for name, outputs in results.items()})
  finally:
    ops.set_conv_impl(previous)
  failures = [f'{name}: {key} ' + (r.get('mismatch') or
                                   (f'{r["differing"]} elements differ' if r['exact'] else
                                    f'error {r["error"]:.2g}'))
              for name, outputs in per_case.items() for key, r in outputs.items() if not r['ok']]
  pair = ('jaxseg XLA:CPU formulations vs lax reference on the CPU' if quick else
          f'{ctx.device.platform} vs cpu')
  details = {'pair': pair, 'tolerance': TOLERANCE, 'worst_error': worst, 'cases': per_case}
  if failures:
    return Outcome(False, f'{len(failures)} outputs off ({pair}): ' + '; '.join(failures[:4])
                   + (' ...' if len(failures) > 4 else ''), details)
  return Outcome(True, f'{len(CASES)} ops x 2 dtypes with gradients, {pair}: worst float32 '
                 f'{worst["float32"]:.1e} (tol {TOLERANCE["float32"]:g}), bfloat16 '
                 f'{worst["bfloat16"]:.1e} (tol {TOLERANCE["bfloat16"]:g}); pooled values, '
                 'switches and unpooling bitwise',
                 details)
