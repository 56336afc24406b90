"""Tests for jaxseg.ops: parity with PyTorch, gradients, the Linen module and input validation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxseg import ops
from jaxseg.ops import xla_cpu

torch = pytest.importorskip('torch')
F = torch.nn.functional

SIZES = [(7, 9), (13, 11), (8, 8)]
# (window, stride, padding): DeconvNet's 2x2/2, ResNet's overlapping 3x3/2 pad 1, and others.
POOLS = [(2, 2, 0), (2, 2, 1), (3, 2, 0), (3, 2, 1), (3, 1, 1), (3, 3, 1), (2, 3, 0)]


def to_nhwc(t):
  return jnp.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


def to_nchw(a):
  return np.asarray(a).transpose(0, 3, 1, 2)


def random_nchw(rng, shape, ties):
  """Integer-valued inputs with many repeats when `ties`, else distinct floats."""
  if ties:
    return torch.from_numpy(rng.integers(0, 3, shape).astype(np.float32))
  return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


# --- max_pool_with_argmax ----------------------------------------------------------------------


@pytest.mark.parametrize('ceil_mode', [False, True])
@pytest.mark.parametrize('window,stride,pad', POOLS)
def test_max_pool_matches_torch(window, stride, pad, ceil_mode):
  rng = np.random.default_rng(window * 100 + stride * 10 + pad)
  for size in SIZES:
    for ties in (False, True):
      x = random_nchw(rng, (2, 3) + size, ties)
      want, want_idx = F.max_pool2d(x, window, stride, pad, ceil_mode=ceil_mode,
                                    return_indices=True)
      got, got_idx = ops.max_pool_with_argmax(to_nhwc(x), window, stride, pad, ceil_mode)
      assert got_idx.dtype == jnp.int32
      np.testing.assert_array_equal(to_nchw(got), want.numpy(), err_msg=f'{size} ties={ties}')
      np.testing.assert_array_equal(to_nchw(got_idx), want_idx.numpy(),
                                    err_msg=f'{size} ties={ties}')


def test_max_pool_edge_values_match_torch():
  """NaN wins and an all -inf window picks its first real element, as PyTorch's kernel."""
  x = torch.full((1, 2, 5, 7), -float('inf'))
  x[0, 1, 2, 3] = float('nan')
  x[0, 1, 0, 0] = 1.0
  for ceil_mode in (False, True):
    want, want_idx = F.max_pool2d(x, 3, 2, 1, ceil_mode=ceil_mode, return_indices=True)
    got, got_idx = ops.max_pool_with_argmax(to_nhwc(x), 3, 2, 1, ceil_mode)
    np.testing.assert_array_equal(to_nchw(got), want.numpy())
    np.testing.assert_array_equal(to_nchw(got_idx), want_idx.numpy())


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.int32])
def test_max_pool_same_padding_matches_flax(dtype):
  x = jnp.asarray(np.random.default_rng(0).integers(-50, 50, (2, 7, 9, 3)), dtype)
  got, idx = ops.max_pool_with_argmax(x, (3, 3), (2, 2), 'SAME')
  want = nn.max_pool(x, (3, 3), (2, 2), padding='SAME')
  np.testing.assert_array_equal(got, want)
  # The switches point at the pooled values in the input plane.
  flat = x.reshape(2, 63, 3)
  np.testing.assert_array_equal(
      jnp.take_along_axis(flat, idx.reshape(2, -1, 3), axis=1).reshape(got.shape), got)


def test_max_pool_grad_matches_torch():
  """With ties the gradient goes to the first maximum, exactly like PyTorch's backward."""
  rng = np.random.default_rng(1)
  for (window, stride, pad), ceil_mode in [((2, 2, 0), True), ((3, 2, 1), False),
                                           ((3, 2, 0), True)]:
    x = random_nchw(rng, (2, 3, 7, 9), ties=True).requires_grad_()
    out, _ = F.max_pool2d(x, window, stride, pad, ceil_mode=ceil_mode, return_indices=True)
    cot = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32))
    out.backward(cot)

    def loss(xj):
      pooled, _ = ops.max_pool_with_argmax(xj, window, stride, pad, ceil_mode)
      return jnp.sum(pooled * to_nhwc(cot))

    grad = jax.jit(jax.grad(loss))(to_nhwc(x))
    np.testing.assert_allclose(to_nchw(grad), x.grad.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize('window,stride,pad,ceil_mode', [(2, 2, 0, True), (3, 2, 1, False)])
def test_max_pool_check_grads(x64, window, stride, pad, ceil_mode):
  # Distinct values 0.1 apart: no ties, so the finite differences see a smooth function.
  x = jnp.asarray(np.random.default_rng(2).permutation(2 * 7 * 9 * 3).reshape(2, 7, 9, 3) * 0.1)
  pooled = lambda v: ops.max_pool_with_argmax(v, window, stride, pad, ceil_mode)[0]
  check_grads(pooled, (x,), order=1, modes=['rev'])


# --- max_pool (no switches; the models' pooling) --------------------------------------------


@pytest.mark.parametrize('window,stride,pad,ceil_mode', [(2, 2, 0, True), (2, 2, 0, False),
                                                         (3, 2, 1, False), (3, 2, 0, True)])
def test_max_pool_values_and_grad_match_torch(window, stride, pad, ceil_mode):
  """Values equal; with ties the gradient goes to the first maximum, as PyTorch's backward."""
  rng = np.random.default_rng(window * 10 + pad)
  for size in SIZES:
    x = random_nchw(rng, (2, 3) + size, ties=True).requires_grad_()
    out = F.max_pool2d(x, window, stride, pad, ceil_mode=ceil_mode)
    cot = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32))
    out.backward(cot)
    got, vjp = jax.vjp(lambda v: ops.max_pool(v, window, stride, pad, ceil_mode), to_nhwc(x))
    np.testing.assert_array_equal(to_nchw(got), out.detach().numpy(), err_msg=str(size))
    grad, = jax.jit(vjp)(to_nhwc(cot))
    # Overlapping windows add into one cell in a different order: float rounding only.
    np.testing.assert_allclose(to_nchw(grad), x.grad.numpy(), rtol=0, atol=1e-6,
                               err_msg=str(size))


def test_max_pool_grad_equals_jax_rule_for_models_pools():
  """The models' 2x2/2 ceil-mode pool: bitwise the value and gradient of nn.max_pool's rule."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(np.round(rng.standard_normal((2, 9, 11, 4)), 1), jnp.float32)  # Many ties.
  cot = jnp.asarray(rng.standard_normal((2, 5, 6, 4)), jnp.float32)
  ref = lambda v: nn.max_pool(v, (2, 2), (2, 2), padding=((0, 1), (0, 1)))
  ours = lambda v: ops.max_pool(v, 2, 2, 'VALID', ceil_mode=True)
  np.testing.assert_array_equal(ours(x), ref(x))
  np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(ours(v) * cot))(x),
                                jax.grad(lambda v: jnp.sum(ref(v) * cot))(x))


def test_max_pool_check_grads_and_errors(x64):
  x = jnp.asarray(np.random.default_rng(2).permutation(2 * 7 * 9 * 3).reshape(2, 7, 9, 3) * 0.1)
  check_grads(lambda v: ops.max_pool(v, 3, 2, 1), (x,), order=1, modes=['rev'])
  with pytest.raises(ValueError, match='max_pool: x must be NHWC'):
    ops.max_pool(x[0], 2)
  with pytest.raises(ValueError, match='half the window'):
    ops.max_pool(x, 2, 2, 3)


# --- max_unpool --------------------------------------------------------------------------------


@pytest.mark.parametrize('window,stride,pad', [(2, 2, 0), (2, 2, 1), (3, 3, 0), (3, 3, 1),
                                               (2, 3, 0)])
@pytest.mark.parametrize('ceil_mode', [False, True])
def test_max_unpool_matches_torch(window, stride, pad, ceil_mode):
  rng = np.random.default_rng(3)
  for size in SIZES:
    for ties in (False, True):
      x = random_nchw(rng, (2, 3) + size, ties)
      pooled, idx = F.max_pool2d(x, window, stride, pad, ceil_mode=ceil_mode, return_indices=True)
      want = F.max_unpool2d(pooled, idx, window, stride, pad, output_size=size)
      got = ops.max_unpool(to_nhwc(pooled), to_nhwc(idx).astype(jnp.int32), size, window,
                           stride, pad)
      np.testing.assert_array_equal(to_nchw(got), want.numpy(), err_msg=f'{size} ties={ties}')
      # And the round trip through our own pool.
      p, s = ops.max_pool_with_argmax(to_nhwc(x), window, stride, pad, ceil_mode)
      np.testing.assert_array_equal(to_nchw(ops.max_unpool(p, s, size, window, stride, pad)),
                                    want.numpy())


def test_max_unpool_grad(x64):
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 7, 9, 3)))
  pooled, switches = ops.max_pool_with_argmax(x, 2, 2, ceil_mode=True)
  check_grads(lambda p: ops.max_unpool(p, switches, (7, 9)), (pooled,), order=1, modes=['rev'])
  # The gradient of each pooled value is the cotangent read at its switch.
  cot = jnp.asarray(np.random.default_rng(5).standard_normal(x.shape))
  grad = jax.grad(lambda p: jnp.sum(ops.max_unpool(p, switches, (7, 9)) * cot))(pooled)
  want = jnp.take_along_axis(cot.reshape(2, 63, 3), switches.reshape(2, -1, 3), axis=1)
  np.testing.assert_allclose(grad, want.reshape(pooled.shape))


def test_pool_unpool_under_outer_jit():
  x = jnp.asarray(np.random.default_rng(6).standard_normal((1, 13, 11, 2)), jnp.float32)

  @jax.jit
  def roundtrip(v):
    p, s = ops.max_pool_with_argmax(v, ceil_mode=True)
    return ops.max_unpool(p, s, v.shape[1:3])

  out = roundtrip(x)
  kept = out != 0
  np.testing.assert_array_equal(out[kept], x[kept])
  assert int(kept.sum()) == 7 * 6 * 2  # One survivor per (ceil-mode) window and channel.


# --- atrous_conv / AtrousConv ------------------------------------------------------------------


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('rate', [1, 2, 4])
def test_atrous_conv_matches_torch(rate, stride):
  rng = np.random.default_rng(rate * 10 + stride)
  for size in [(7, 9), (13, 11)]:
    for k in (3, 1, 5):
      x = torch.from_numpy(rng.standard_normal((2, 4) + size).astype(np.float32))
      w = torch.from_numpy(rng.standard_normal((6, 4, k, k)).astype(np.float32))
      b = torch.from_numpy(rng.standard_normal(6).astype(np.float32))
      want = F.conv2d(x, w, b, stride=stride, padding=rate * (k - 1) // 2, dilation=rate)
      kernel = jnp.asarray(w.numpy().transpose(2, 3, 1, 0))  # OIHW -> HWIO
      got = ops.atrous_conv(to_nhwc(x), kernel, rate, jnp.asarray(b.numpy()), stride)
      assert got.shape[1:3] == tuple(-(-n // stride) for n in size)
      np.testing.assert_allclose(to_nchw(got), want.numpy(), rtol=1e-5, atol=1e-5,
                                 err_msg=f'size={size} k={k}')


def test_atrous_conv_check_grads(x64):
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.standard_normal((1, 7, 9, 2)))
  kernel = jnp.asarray(rng.standard_normal((3, 3, 2, 3)))
  bias = jnp.asarray(rng.standard_normal(3))
  for rate, stride in [(2, 1), (4, 2)]:
    check_grads(lambda *a: ops.atrous_conv(*a[:2], rate, a[2], stride), (x, kernel, bias),
                order=1, modes=['rev'])


@pytest.mark.parametrize('rate', [1, 2, 4, 8])
def test_atrous_conv_module(rate):
  x = jnp.asarray(np.random.default_rng(8).standard_normal((2, 7, 9, 4)), jnp.float32)
  layer = ops.AtrousConv(8, rate=rate)
  params = layer.init(jax.random.key(0), x)['params']
  assert jax.tree.map(jnp.shape, params) == {'kernel': (3, 3, 4, 8), 'bias': (8,)}
  out = layer.apply({'params': params}, x)
  assert out.shape == (2, 7, 9, 8)
  np.testing.assert_array_equal(out, ops.atrous_conv(x, params['kernel'], rate, params['bias']))
  # Same params, same numbers as flax's own dilated conv: the param trees are interchangeable.
  ref = nn.Conv(8, (3, 3), padding=rate, kernel_dilation=rate).apply({'params': params}, x)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_atrous_conv_module_dtypes():
  x = jnp.ones((1, 5, 5, 3), jnp.float32)
  layer = ops.AtrousConv(4, rate=2, strides=2, dtype=jnp.bfloat16, use_bias=False)
  variables = layer.init(jax.random.key(0), x)
  assert jax.tree.map(lambda p: p.dtype, variables['params']) == {'kernel': jnp.float32}
  out = layer.apply(variables, x)
  assert out.dtype == jnp.bfloat16 and out.shape == (1, 3, 3, 4)


# --- bad inputs --------------------------------------------------------------------------------


def test_bad_inputs_raise():
  x = jnp.zeros((1, 8, 8, 3))
  pooled, switches = ops.max_pool_with_argmax(x)
  with pytest.raises(ValueError, match=r'max_pool_with_argmax: x must be NHWC \(rank 4\)'):
    ops.max_pool_with_argmax(x[0])
  with pytest.raises(ValueError, match='between 0 and half the window'):
    ops.max_pool_with_argmax(x, 2, 2, padding=2)
  with pytest.raises(ValueError, match="ceil_mode=True needs 'VALID'"):
    ops.max_pool_with_argmax(x, ceil_mode=True, padding='SAME')
  with pytest.raises(ValueError, match='window .* is larger than the padded input'):
    ops.max_pool_with_argmax(x, 9, 1)
  with pytest.raises(ValueError, match=r'max_unpool: pooled must be NHWC \(rank 4\)'):
    ops.max_unpool(pooled[0], switches[0], (8, 8))
  with pytest.raises(ValueError, match='switches shape .* must equal pooled shape'):
    ops.max_unpool(pooled, switches[:, :3], (8, 8))
  with pytest.raises(ValueError, match='switches must be integers'):
    ops.max_unpool(pooled, switches.astype(jnp.float32), (8, 8))
  with pytest.raises(ValueError, match=r'does not come from output_shape \(12, 8\)'):
    ops.max_unpool(pooled, switches, (12, 8))
  with pytest.raises(ValueError, match=r'output_shape must be \(H, W\)'):
    ops.max_unpool(pooled, switches, (1, 8, 8, 3))
  with pytest.raises(ValueError, match='overlapping pooling .* not supported'):
    ops.max_unpool(pooled, switches, (8, 8), window=3, strides=2)
  with pytest.raises(ValueError, match=r'atrous_conv: x must be NHWC \(rank 4\)'):
    ops.atrous_conv(x[0], jnp.zeros((3, 3, 3, 4)))
  with pytest.raises(ValueError, match='kernel expects 2 input channels'):
    ops.atrous_conv(x, jnp.zeros((3, 3, 2, 4)))
  with pytest.raises(ValueError, match='rate must be a positive int'):
    ops.atrous_conv(x, jnp.zeros((3, 3, 3, 4)), rate=0)


# --- conv2d / conv_transpose / Conv / ConvTranspose (matmul formulations on the CPU) ----------

# (x shape, kernel shape, strides, padding, rates): 1x1 (dot), strided 1x1, 3x3, strided,
# dilated, 7x7 'same' and valid on a small map (im2col), asymmetric padding, narrowing 3x3.
CONVS = [((2, 9, 11, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)), (1, 1)),
         ((2, 9, 11, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (1, 1)), (1, 1)),
         ((1, 13, 10, 2), (3, 3, 2, 5), (1, 1), ((2, 2), (2, 2)), (2, 2)),
         ((2, 8, 8, 4), (1, 1, 4, 6), (1, 1), ((0, 0), (0, 0)), (1, 1)),
         ((2, 9, 9, 4), (1, 1, 4, 6), (2, 2), ((0, 0), (0, 0)), (1, 1)),
         ((2, 10, 10, 3), (7, 7, 3, 5), (1, 1), ((3, 3), (3, 3)), (1, 1)),
         ((2, 10, 10, 3), (7, 7, 3, 5), (1, 1), ((0, 0), (0, 0)), (1, 1)),
         ((1, 16, 15, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3)), (1, 1)),
         ((2, 7, 9, 3), (3, 3, 3, 2), (1, 1), ((0, 1), (2, 0)), (1, 1)),
         # Channel-narrowing 3x3 (C >= 8 O: output-tap matmul; C >= 4 O: dy-patch gradients),
         # dilated, with symmetric and asymmetric padding, as PSPNet's heads.
         ((2, 8, 9, 16), (3, 3, 16, 2), (1, 1), ((1, 1), (1, 1)), (1, 1)),
         ((1, 9, 7, 16), (3, 3, 16, 2), (1, 1), ((2, 1), (0, 2)), (2, 2)),
         ((2, 6, 7, 8), (3, 3, 8, 2), (1, 1), ((1, 1), (1, 1)), (1, 1))]


@pytest.fixture
def small_blocks(monkeypatch):
  """Tiny kernel-gradient blocks, so tiny inputs take the multi-block loop (with a ragged end)."""
  monkeypatch.setattr(xla_cpu, 'BLOCK_BYTES', 1)


@pytest.mark.parametrize('x_shape,k_shape,strides,pads,rates', CONVS)
def test_conv2d_matches_lax_values_and_gradients(x64, small_blocks, x_shape, k_shape, strides,
                                                 pads, rates):
  rng = np.random.default_rng(sum(x_shape) + sum(k_shape))
  x, kernel = jnp.asarray(rng.standard_normal(x_shape)), jnp.asarray(rng.standard_normal(k_shape))
  ref = lambda x, k: jax.lax.conv_general_dilated(
      x, k, strides, pads, rhs_dilation=rates, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ours = lambda x, k: ops.conv2d(x, k, strides, pads, rates)
  want = ref(x, kernel)
  np.testing.assert_allclose(ours(x, kernel), want, rtol=1e-10, atol=1e-10)
  cotangent = jnp.asarray(rng.standard_normal(want.shape))
  grads = [jax.jit(jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * cotangent), (0, 1)))(x, kernel)
           for f in (ours, ref)]
  for got, expected in zip(*grads):
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('x_shape,kernel,stride,pad', [
    ((2, 4, 4, 6), 7, 1, 0), ((2, 5, 6, 4), 3, 1, 1), ((1, 5, 5, 3), 4, 2, 0),
    ((2, 6, 5, 3), 16, 8, 0), ((1, 5, 5, 2), 5, 2, 1), ((1, 5, 4, 2), 3, 3, 0)])
def test_conv_transpose_matches_torch_and_lax(x64, x_shape, kernel, stride, pad):
  """Fold (strided / big kernel) and flipped-conv formulations = torch conv_transpose2d, with
  the same gradients as lax's (JAXSEG_CONV_IMPL=lax) formulation."""
  rng = np.random.default_rng(kernel * 10 + stride)
  x = rng.standard_normal(x_shape)
  k = rng.standard_normal((kernel, kernel, 3, x_shape[-1]))  # (kh, kw, out, in).
  want = F.conv_transpose2d(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                            torch.from_numpy(k.transpose(3, 2, 0, 1).copy()), stride=stride,
                            padding=pad).numpy().transpose(0, 2, 3, 1)
  fn = lambda x, k: ops.conv_transpose(x, k, (stride, stride), ((pad, pad), (pad, pad)))
  x, k = jnp.asarray(x), jnp.asarray(k)
  np.testing.assert_allclose(fn(x, k), want, rtol=1e-10, atol=1e-10)
  cotangent = jnp.asarray(rng.standard_normal(want.shape))
  loss = lambda x, k: jnp.sum(fn(x, k) * cotangent)
  ours = jax.grad(loss, (0, 1))(x, k)
  ops.set_conv_impl('lax')
  try:
    np.testing.assert_allclose(fn(x, k), want, rtol=1e-10, atol=1e-10)
    theirs = jax.grad(loss, (0, 1))(x, k)
  finally:
    ops.set_conv_impl('auto')
  for got, expected in zip(ours, theirs):
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('kwargs', [
    dict(features=4, kernel_size=(3, 3)), dict(features=4, kernel_size=(7, 7), padding='VALID'),
    dict(features=4, kernel_size=(1, 1), strides=2),
    dict(features=4, kernel_size=(7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False)])
def test_conv_module_is_nn_conv(kwargs):
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 9, 10, 3)), jnp.float32)
  variables = nn.Conv(**kwargs).init(jax.random.key(0), x)
  ours = ops.Conv(**kwargs).init(jax.random.key(0), x)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), variables, ours))
  np.testing.assert_allclose(ops.Conv(**kwargs).apply(variables, x),
                             nn.Conv(**kwargs).apply(variables, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kernel,stride,pad', [(4, 2, 0), (3, 1, 1), (7, 1, 0)])
def test_conv_transpose_module_is_nn_conv_transpose(kernel, stride, pad):
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 5, 6, 3)), jnp.float32)
  theirs = nn.ConvTranspose(4, (kernel, kernel), (stride, stride), transpose_kernel=True,
                            padding='VALID' if pad == 0 else ((kernel - 1 - pad,) * 2,) * 2)
  ours = ops.ConvTranspose(4, (kernel, kernel), (stride, stride), padding=pad)
  variables = theirs.init(jax.random.key(0), x)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), variables,
                                   ours.init(jax.random.key(0), x)))
  np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), rtol=1e-5,
                             atol=1e-5)


def test_conv_bfloat16_kernel_gradient_is_close(small_blocks):
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((2, 12, 12, 8)), jnp.bfloat16)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 8, 8)), jnp.bfloat16)
  loss = lambda k, f: jnp.sum(f(x, k).astype(jnp.float32))
  ours = jax.grad(loss)(kernel, lambda x, k: ops.conv2d(x, k, padding=((1, 1), (1, 1))))
  assert ours.dtype == jnp.bfloat16
  want = jax.grad(loss)(kernel.astype(jnp.float32), lambda x, k: ops.conv2d(
      x.astype(jnp.float32), k, padding=((1, 1), (1, 1))))
  np.testing.assert_allclose(np.asarray(ours, np.float32), want, rtol=2e-2, atol=0.5)


def test_conv_impl_and_padding_errors():
  with pytest.raises(ValueError, match="conv impl must be one of .*'lax'"):
    ops.set_conv_impl('eigen')
  x = jnp.zeros((1, 4, 4, 2))
  with pytest.raises(ValueError, match='padding must be'):
    ops.Conv(3, (3, 3), padding='FULL').init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="padding is torch's crop"):
    ops.ConvTranspose(3, (3, 3), padding='SAME').init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='must be >= 0 and leave a non-empty output'):
    ops.conv_transpose(x, jnp.zeros((3, 3, 3, 2)), padding=((4, 4), (0, 0)))


def test_set_conv_impl_retraces_functions_jit_has_seen():
  conv = lambda x, k: ops.conv2d(x, k)  # A 1x1 conv: a dot with 'auto' on the CPU.
  x, k = jnp.ones((1, 4, 4, 2)), jnp.ones((1, 1, 2, 3))
  auto_hlo = jax.jit(conv).lower(x, k).as_text()
  ops.set_conv_impl('lax')
  try:
    lax_hlo = jax.jit(conv).lower(x, k).as_text()
  finally:
    ops.set_conv_impl('auto')
  assert 'convolution' in lax_hlo and 'convolution' not in auto_hlo
  assert 'convolution' not in jax.jit(conv).lower(x, k).as_text()
