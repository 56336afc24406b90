"""The fully connected CRF of Kraehenbuehl & Koltun (2011): mean-field inference, jit-compiled.

DeconvNet refines its ensemble's class probabilities with this CRF (inference/
generate_EDeconvNet_CRF_results.m: a smoothness kernel of position stddev 3 and Potts weight 3, an
appearance kernel of position stddev 20, colour stddev 3 and weight 5, 10 iterations). The math
follows the authors' densecrf v2 code as pydensecrf wraps it (pydensecrf/densecrf/src/...):

- features (densecrf.cpp, DenseCRF2D::addPairwiseGaussian/Bilateral): (column / sxy, row / sxy)
  and, for the bilateral kernel, also (r, g, b) / srgb, in float32;
- the permutohedral lattice of Adams et al. 2010 (permutohedral.cpp, Permutohedral::init, the SSE
  path the x86 build runs): elevation onto the plane sum(y) = 0 with the scale factors
  sqrt(2/3) (d+1) / sqrt((i+1)(i+2)), the nearest 0-coloured point by rounding to multiples of
  d+1 (round half to even), the enclosing simplex by the rank of the remainders, the
  barycentric weights, the d+1 vertex keys rem0 + canonical[remainder][rank];
- filtering (Permutohedral::seqCompute/sseCompute): splat with the barycentric weights, blur
  along each lattice direction j = 0..d in turn with new = old + 0.5 (n1 + n2), where n1/n2 are
  the vertices key - 1 + (d+1) e_j and key + 1 - (d+1) e_j and a vertex not in the lattice gives
  0 (the hash table's -1), slice with the barycentric weights times alpha = 1 / (1 + 2^-d);
- the kernel normalisation (pairwise.cpp, DenseKernel::initLattice/filter): NORMALIZE_SYMMETRIC,
  the default of addPairwise*: norm = 1 / sqrt(K 1 + 1e-20), and K~ Q = norm * K(norm * Q);
  the pixel itself is not left out of K;
- Potts compatibility (labelcompatibility.cpp): the message -w K~ Q;
- mean field (densecrf.cpp, DenseCRF::inference): Q = softmax(-U); then n times
  Q = softmax(-U - sum_k (-w_k K~_k Q)), the kernels in the order gaussian, bilateral.
`dense_crf` takes probabilities with pydensecrf's utils.unary_from_softmax: U = -log(clip(p)).

Why a permutohedral lattice: the bilateral features span 480/20 x 360/20 positions and
(256/3)^3 ~ 85^3 colour cells, so a dense bilateral grid would hold ~10^8 cells; the lattice
keeps only the simplex vertices the pixels touch, at most N (d+1), and filtering is
O(N (d+1)) per class.

The lattice inside jit, with static shapes (N pixels, L = N (d+1) vertex slots):
- keys y (d+1 int32 coordinates, sum 0, all congruent mod d+1). Along lattice direction j a
  neighbour changes y_j by +-d and every other coordinate by -+1, so in the coordinates
  c_i = (y_i - y_k) / (d+1), k = j+1 mod d+1 (integers), it changes only c_j, by +-1, and
  the other c_i identify the lattice line. Sorting the vertices by (the line's c_i, then c_j)
  puts each vertex's two neighbours along j next to it when they exist: one lexicographic sort
  per direction (lax.sort, keys compared exactly) finds them, no hashing or search.
- the first sort (direction 0) over all L pixel-vertex entries also deduplicates: unique ids
  are the cumsum of "differs from the previous entry"; the other d sorts run over the unique
  vertices, padded to L slots by sentinels that sort last and never match.
- each iteration: splat (segment_sum into the unique vertices in direction-0 order), for each
  direction j the blur as two shifted adds in direction-j order and a gather (one permutation)
  into direction j+1's order, and the slice (a gather). The lattice is built once per image and
  kernel; the iterations reuse it.

Padded canvases: a pixel outside its image's `sizes` takes the vertex keys of pixel (0, 0) with
barycentric weight 0, so it adds no vertex and no mass, and the lattice is that of the cropped
image: the result inside equals the cropped image's (up to float summation order); outside it
is 0. Images of a batch are processed one after another (lax.map), so memory is one image's.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_INT_MAX = np.iinfo(np.int32).max


@dataclasses.dataclass(frozen=True)
class CrfParams:
  """Mean-field iterations and the two Potts kernels (stddevs in pixels and 0-255 RGB)."""
  iterations: int = 10
  gaussian_sxy: float = 3.0
  gaussian_compat: float = 3.0
  bilateral_sxy: float = 20.0
  bilateral_srgb: float = 3.0
  bilateral_compat: float = 5.0

  @classmethod
  def from_config(cls, config: Any) -> CrfParams:
    """The params of config.crf.* (experiments/default.py), validated."""
    crf = config.crf
    values = {}
    for field in dataclasses.fields(cls):
      value = getattr(crf, field.name)
      if field.name == 'iterations':
        if isinstance(value, bool) or int(value) != value or value < 0:
          raise ValueError(f'config.crf.iterations={value!r} must be an integer >= 0 (the '
                           'mean-field iterations; DeconvNet uses 10).')
        values[field.name] = int(value)
      else:
        if isinstance(value, bool) or not np.isfinite(float(value)) or float(value) <= 0:
          raise ValueError(f'config.crf.{field.name}={value!r} must be a number > 0 (see '
                           'experiments/default.py; DeconvNet uses gaussian 3/3, bilateral '
                           '20/3/5).')
        values[field.name] = float(value)
    return cls(**values)


# ---------------------------------------------------------------- the permutohedral lattice
@dataclasses.dataclass(frozen=True)
class _Lattice:
  """One image's lattice for one kernel (L = N (d+1) vertex slots, M of them used)."""
  offsets: jax.Array  # (N, d+1) int32: each pixel's vertices as direction-0 positions.
  weights: jax.Array  # (N, d+1) float32: their barycentric weights (0 outside the image).
  perms: tuple[jax.Array, ...]  # d arrays (L,): direction-j order from direction j-1's.
  slice_index: jax.Array  # (N, d+1): each pixel's vertices as direction-d positions.
  has_next: tuple[jax.Array, ...]  # d+1 arrays (L,) bool: position p+1 is p's neighbour.
  has_prev: tuple[jax.Array, ...]  # d+1 arrays (L,) bool: position p-1 is p's neighbour.
  bucket: jax.Array  # int32 index into _bucket_sizes(L): the smallest prefix holding M.


jax.tree_util.register_dataclass(
    _Lattice,
    data_fields=['offsets', 'weights', 'perms', 'slice_index', 'has_next', 'has_prev', 'bucket'],
    meta_fields=[])

# The vertices in use (M of L) fill a prefix of every direction's order: the direction sorts
# and the blur run over the smallest of these static prefixes that holds M (lax.switch), L / 4^k
# (CamVid at DeconvNet's settings: M / L ~ 0.21 bilateral, ~ 0.04 gaussian).
# Lattices of fewer slots than _MIN_BUCKETED (small images) take one bucket: it saves compile time.
_BUCKETS = 3
_MIN_BUCKETED = 1 << 17


def _bucket_sizes(size: int) -> list[int]:
  return [-(-size // 4 ** k) for k in range(_BUCKETS if size >= _MIN_BUCKETED else 1)]


def _simplices(features: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Vertex keys (N, d+1, d+1) and barycentric weights (N, d+1) of each feature's simplex.

  Permutohedral::init (permutohedral.cpp), operation for operation in float32.
  """
  n, d = features.shape
  inv_std_dev = float(np.float32(np.sqrt(2.0 / 3.0) * (d + 1)))
  scale = [np.float32(1.0 / np.sqrt((i + 2) * (i + 1)) * inv_std_dev) for i in range(d)]
  down = np.float32(1.0 / (d + 1))
  up = np.float32(d + 1)
  # Elevate (y = E f, p.5 in Adams et al. 2010).
  elevated = [None] * (d + 1)
  sm = jnp.zeros((n,), jnp.float32)
  for j in range(d, 0, -1):
    cf = features[:, j - 1] * scale[j - 1]
    elevated[j] = sm - np.float32(j) * cf
    sm = sm + cf
  elevated[0] = sm
  elevated = jnp.stack(elevated, axis=1)  # (N, d+1)
  # The closest 0-coloured lattice point by rounding (round half to even, as SSE).
  v = jnp.round(down * elevated)
  rem0 = v * up
  total = jnp.sum(v, axis=1).astype(jnp.int32)
  # The rank of each coordinate's remainder: rank[i] counts j > i with di < dj and j < i with
  # not dj < di.
  diff = elevated - rem0
  less = diff[:, :, None] < diff[:, None, :]  # [i, j]: di < dj
  upper = np.triu(np.ones((d + 1, d + 1), bool), 1)
  rank = (jnp.sum(less & upper, axis=2) + jnp.sum(~jnp.swapaxes(less, 1, 2) & upper.T, axis=2))
  # Bring the point back onto the plane.
  rank = rank + total[:, None]
  shift = jnp.where(rank < 0, d + 1, 0) - jnp.where(rank >= d + 1, d + 1, 0)
  rank = rank + shift
  rem0 = rem0 + shift.astype(jnp.float32)
  # Barycentric coordinates (p.10 in Adams et al. 2010).
  w = (elevated - rem0) * down
  slots = np.arange(d + 2)
  plus = jnp.sum(jnp.where((d - rank)[:, :, None] == slots, w[:, :, None], 0.0), axis=1)
  minus = jnp.sum(jnp.where((d - rank + 1)[:, :, None] == slots, w[:, :, None], 0.0), axis=1)
  bary = plus - minus
  bary = bary.at[:, 0].add(1.0 + bary[:, d + 1])[:, :d + 1]
  # The vertices: key = rem0 + canonical[remainder][rank], canonical[r][k] = r if k <= d - r
  # else r - (d+1).
  r = np.arange(d + 1)[None, :, None]
  canonical = jnp.where(rank[:, None, :] <= d - r, r, r - (d + 1))  # (N, remainder, coord)
  keys = rem0.astype(jnp.int32)[:, None, :] + canonical
  return keys, bary


def _direction_coords(keys: jax.Array, j: int) -> list[jax.Array]:
  """Sort keys for lattice direction j: the line's coordinates, then the position along it."""
  d1 = keys.shape[-1]
  k = (j + 1) % d1
  line = [(keys[..., i] - keys[..., k]) // d1 for i in range(d1) if i not in (j, k)]
  return line + [(keys[..., j] - keys[..., k]) // d1]


def _neighbours(coords: list[jax.Array], valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """In a sorted order: whether position p+1 (p-1) is p's neighbour along the direction."""
  same_line = valid[1:] & valid[:-1]
  for c in coords[:-1]:
    same_line = same_line & (c[1:] == c[:-1])
  step = same_line & (coords[-1][1:] == coords[-1][:-1] + 1)
  false = jnp.zeros((1,), bool)
  return jnp.concatenate([step, false]), jnp.concatenate([false, step])


def _pad(x: jax.Array, size: int, value: Any = 0) -> jax.Array:
  return jnp.concatenate([x, jnp.full((size - x.shape[0],), value, x.dtype)])


def _build_lattice(features: jax.Array, inside: jax.Array) -> _Lattice:
  """The lattice of the features (N, d) of the pixels `inside` (N,) bool."""
  n, d = features.shape
  size = n * (d + 1)
  keys, bary = _simplices(features)
  keys = jnp.where(inside[:, None, None], keys, keys[0])  # Outside: pixel 0's vertices ...
  bary = jnp.where(inside[:, None], bary, 0.0)  # ... with no weight.
  keys = keys.reshape(size, d + 1)
  iota = lax.iota(jnp.int32, size)
  # Direction 0: sort all entries, deduplicate.
  *coords, order = lax.sort((*_direction_coords(keys, 0), iota), num_keys=d)
  differs = functools.reduce(jnp.logical_or, [c[1:] != c[:-1] for c in coords])
  uid = jnp.cumsum(jnp.concatenate([jnp.zeros((1,), jnp.int32), differs.astype(jnp.int32)]))
  count = uid[-1] + 1
  offsets = jnp.zeros((size,), jnp.int32).at[order].set(uid).reshape(n, d + 1)
  vertex_keys = jnp.zeros((size, d + 1), jnp.int32).at[uid].set(keys[order])
  valid = iota < count  # In every direction's order the count real vertices come first.
  coords = [jnp.zeros((size,), jnp.int32).at[uid].set(c) for c in coords]
  first_next, first_prev = _neighbours([jnp.where(valid, c, _INT_MAX) for c in coords], valid)
  sizes = _bucket_sizes(size)
  bucket = jnp.sum(jnp.asarray(sizes[1:], jnp.int32) >= count).astype(jnp.int32)

  def directions(prefix):  # Directions 1..d over the first `prefix` slots (>= count).
    vkeys, ok, pos = vertex_keys[:prefix], valid[:prefix], iota[:prefix]
    inverse = pos  # direction-0 position -> position in the current direction's order
    perms, has_next, has_prev = [], [], []
    for j in range(1, d + 1):
      coords = [jnp.where(ok, c, _INT_MAX) for c in _direction_coords(vkeys, j)]
      *coords, order = lax.sort((*coords, pos), num_keys=d)  # order: direction-0 positions
      perms.append(_pad(inverse[order], size))
      inverse = jnp.zeros((prefix,), jnp.int32).at[order].set(pos)
      nxt, prv = _neighbours(coords, ok)
      has_next.append(_pad(nxt, size, False))
      has_prev.append(_pad(prv, size, False))
    return tuple(perms), inverse[offsets], tuple(has_next), tuple(has_prev)

  perms, slice_index, has_next, has_prev = lax.switch(
      bucket, [functools.partial(directions, s) for s in sizes])
  return _Lattice(offsets, bary, perms, slice_index, (first_next, *has_next),
                  (first_prev, *has_prev), bucket)


def _filter(lattice: _Lattice, values: jax.Array) -> jax.Array:
  """Splat, blur, slice of values (N, C): Permutohedral::compute (forward)."""
  n, d1 = lattice.offsets.shape
  size, d = n * d1, d1 - 1
  alpha = np.float32(1.0 / (1.0 + 2.0 ** -d))
  splat = (lattice.weights[:, :, None] * values[:, None, :]).reshape(n * d1, -1)

  def run(prefix, splat):  # Over the first `prefix` vertex slots (>= the M in use).
    grid = jax.ops.segment_sum(splat, lattice.offsets.reshape(-1), num_segments=prefix)
    zero = jnp.zeros_like(grid[:1])
    for j in range(d + 1):
      if j:
        grid = grid[lattice.perms[j - 1][:prefix]]
      after = jnp.where(lattice.has_next[j][:prefix, None], jnp.concatenate([grid[1:], zero]),
                        0.0)
      before = jnp.where(lattice.has_prev[j][:prefix, None], jnp.concatenate([zero, grid[:-1]]),
                         0.0)
      grid = grid + 0.5 * (after + before)
    picked = grid[lattice.slice_index.reshape(-1)].reshape(n, d1, -1)
    return jnp.sum(lattice.weights[:, :, None] * picked * alpha, axis=1)

  return lax.switch(lattice.bucket, [functools.partial(run, s) for s in _bucket_sizes(size)],
                    splat)


# ---------------------------------------------------------------- mean field
def _features(image: jax.Array, sxy: float, srgb: float | None) -> jax.Array:
  """(N, 2) positions / sxy, plus (N, 3) colours / srgb for the bilateral kernel."""
  h, w = image.shape[:2]
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                            indexing='ij')
  sxy = np.float32(sxy)
  feats = [cols.reshape(-1) / sxy, rows.reshape(-1) / sxy]
  if srgb is not None:
    rgb = image.reshape(-1, 3).astype(jnp.float32) / np.float32(srgb)
    feats += [rgb[:, 0], rgb[:, 1], rgb[:, 2]]
  return jnp.stack(feats, axis=1)


def _one_image(unary: jax.Array, image: jax.Array, size: jax.Array,
               params: CrfParams) -> jax.Array:
  h, w, c = unary.shape
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = ((rows < size[0]) & (cols < size[1])).reshape(-1)
  unary = jnp.where(inside[:, None], unary.reshape(-1, c).astype(jnp.float32), 0.0)
  q = jax.nn.softmax(-unary, axis=-1)
  kernels = []
  for sxy, srgb, compat in ((params.gaussian_sxy, None, params.gaussian_compat),
                            (params.bilateral_sxy, params.bilateral_srgb,
                             params.bilateral_compat)):
    lattice = _build_lattice(_features(image, sxy, srgb), inside)
    norm = _filter(lattice, jnp.ones((h * w, 1), jnp.float32))
    norm = jnp.where(inside[:, None], 1.0 / jnp.sqrt(norm + 1e-20), 0.0)
    kernels.append((lattice, norm, np.float32(compat)))

  def step(_, q):
    energy = -unary
    for lattice, norm, compat in kernels:
      message = -compat * (norm * _filter(lattice, q * norm))  # Potts: -w K~ Q
      energy = energy - message
    return jax.nn.softmax(energy, axis=-1)

  q = lax.fori_loop(0, params.iterations, step, q)
  return jnp.where(inside[:, None], q, 0.0).reshape(h, w, c)


def _check(unary: jax.Array, images: jax.Array, sizes: jax.Array | None) -> None:
  if unary.ndim != 4:
    raise ValueError(f'crf: unary must be (B, H, W, C), got shape {unary.shape}')
  if images.shape != unary.shape[:3] + (3,):
    raise ValueError(f'crf: images must be RGB (B, H, W, 3) = {unary.shape[:3] + (3,)} like the '
                     f'unary, got shape {images.shape}')
  if images.dtype != jnp.uint8:
    raise ValueError(f'crf: images must be uint8 RGB (0-255), got dtype {images.dtype}')
  if sizes is not None and tuple(sizes.shape) != (unary.shape[0], 2):
    raise ValueError(f'crf: sizes must be (B, 2) = {(unary.shape[0], 2)} (height, width), got '
                     f'shape {sizes.shape}')


@functools.partial(jax.jit, static_argnames=('params',))
def mean_field(unary: jax.Array, images: jax.Array, sizes: jax.Array | None,
               params: CrfParams) -> jax.Array:
  """Marginals Q (B, H, W, C) float32 after params.iterations mean-field steps.

  Args:
    unary: (B, H, W, C) float energies -log p.
    images: (B, H, W, 3) uint8 RGB: the bilateral kernel's colours.
    sizes: (B, 2) int32 true (height, width) of each image at the top left of its canvas, or
      None for whole canvases. Q is 0 outside each image.
    params: the kernels and the iteration count (static).
  """
  _check(unary, images, sizes)
  b, h, w, _ = unary.shape
  if sizes is None:
    sizes = jnp.broadcast_to(jnp.array([h, w], jnp.int32), (b, 2))
  sizes = jnp.asarray(sizes, jnp.int32)
  return lax.map(lambda args: _one_image(*args, params), (unary, images, sizes))


@functools.partial(jax.jit, static_argnames=('params', 'clip'))
def dense_crf(probs: jax.Array, images: jax.Array, sizes: jax.Array | None, params: CrfParams,
              clip: float = 1e-5) -> jax.Array:
  """`mean_field` on the unary -log(clip(probs, clip, 1)) (pydensecrf's unary_from_softmax).

  probs: (B, H, W, C) class probabilities; the other arguments and the result as `mean_field`.
  """
  unary = -jnp.log(jnp.clip(probs.astype(jnp.float32), clip, 1.0))
  return mean_field(unary, images, sizes, params)
