"""Tests for jaxseg.ops: parity with PyTorch, gradients, the Linen module and input validation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxseg import ops

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
