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
- keys y (d+1 int32 coordinates, sum 0, all congruent mod d+1) are the d integers
  c_i = (y_i - y_1) / (d+1), i != 1, whose ranges follow here, in Python, from the feature
  bounds (W-1)/sxy, (H-1)/sxy, 255/srgb. They pack in mixed radix into uint32 words: one word
  for CamVid and VOC sizes at DeconvNet's settings (480x360: 31.3 bits bilateral, 15.4 gaussian).
  The neighbour key +- (1 - (d+1) e_j) adds a constant to the words (c_j -+ 1, or every c_i +- 1
  for j = 1).
- one sort of the L packed keys (a single uint32 operand: XLA:CPU's fast path, ~6x faster than
  a sort carrying an index), deduplicated into a sorted table of the M vertices (cumsum of
  "differs from the previous", one scatter). Each vertex's neighbour along j is found by binary
  search of its neighbour key in the table; the reverse neighbour by inverting that map. Each
  pixel's vertex 0 is found by binary search; vertex r+1 is vertex r's neighbour along the
  direction of rank d - r (Permutohedral::init's canonical simplex), so no other entry is
  searched.
- each iteration: splat (segment_sum into the table's order), the blur as d+1 steps in a
  fori_loop (two row gathers each: a loop, since XLA:CPU otherwise fuses the chain of gathers
  into one loop that recomputes every gathered row, ~6x slower), slice (a row gather). The
  lattice is built once per image and kernel; the iterations reuse it.

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
  offsets: jax.Array  # (N, d+1) int32: each pixel's vertices (positions in the sorted order).
  weights: jax.Array  # (N, d+1) float32: their barycentric weights (0 outside the image).
  nexts: jax.Array  # (d+1, L) int32: the position of key + 1 - (d+1) e_j, or P if absent.
  prevs: jax.Array  # (d+1, L) int32: the position of key - 1 + (d+1) e_j, or P if absent.
  bucket: jax.Array  # int32 index into _bucket_sizes(L): the smallest prefix P holding M.


jax.tree_util.register_dataclass(
    _Lattice, data_fields=['offsets', 'weights', 'nexts', 'prevs', 'bucket'], meta_fields=[])

# The M vertices in use fill a prefix of the sorted table: the neighbour searches and the
# filtering run over the smallest of these static prefixes that holds M (lax.switch), L / 4^k
# (CamVid at DeconvNet's settings: M / L ~ 0.21 bilateral, ~ 0.04 gaussian).
# Lattices of fewer slots than _MIN_BUCKETED (small images) take one bucket: it saves compile time.
_BUCKETS = 3
_MIN_BUCKETED = 1 << 17
_SENTINEL = np.uint32(0xFFFFFFFF)  # Sorts after every packed key.


def _bucket_sizes(size: int) -> list[int]:
  return [-(-size // 4 ** k) for k in range(_BUCKETS if size >= _MIN_BUCKETED else 1)]


def _scales(d: int) -> list[np.float32]:
  """Permutohedral::init's elevation scale factors sqrt(2/3) (d+1) / sqrt((i+1)(i+2))."""
  inv_std_dev = float(np.float32(np.sqrt(2.0 / 3.0) * (d + 1)))
  return [np.float32(1.0 / np.sqrt((i + 2) * (i + 1)) * inv_std_dev) for i in range(d)]


def _simplices(features: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Vertex keys (N, d+1, d+1), barycentric weights (N, d+1) and ranks (N, d+1) of each feature's
  simplex.

  Permutohedral::init (permutohedral.cpp), operation for operation in float32.
  """
  n, d = features.shape
  scale = _scales(d)
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
  return keys, bary, rank


def _packing(bounds: tuple[float, ...]) -> list[list[tuple[int, int, int]]]:
  """How a vertex key packs into uint32 words: per word its fields (i, lowest value, radix).

  A key y (sum 0, coordinates congruent mod d+1) is the integers c_i = (y_i - y_1) / (d+1),
  i != 1. For features in [0, bounds], the elevated point's c_i is a linear function of them, so
  its range is known here; a vertex of the enclosing simplex differs from it by at most 1 (the
  point is a convex combination of the simplex's vertices, whose canonical offsets differ by 0 or
  d+1 between coordinates), a lattice neighbour by 1 more, and 1 more covers float32 rounding.
  The fields go into mixed-radix words, most significant first, each word's radices' product
  under 2^32 - 1 (the sentinel).
  """
  d = len(bounds)
  scale = np.asarray(_scales(d), np.float64)
  lift = np.zeros((d + 1, d))  # elevated = lift @ features
  lift[0] = scale
  for j in range(1, d + 1):
    lift[j, j:] = scale[j:]
    lift[j, j - 1] = -j * scale[j - 1]
  top = np.asarray(bounds, np.float64)
  words, word, product = [], [], 1
  for i in [0] + list(range(2, d + 1)):
    a = (lift[i] - lift[1]) / (d + 1)
    lo = int(np.floor(np.sum(np.minimum(a, 0.0) * top))) - 3
    hi = int(np.ceil(np.sum(np.maximum(a, 0.0) * top))) + 3
    radix = hi - lo + 1
    if radix >= 1 << 32:
      raise ValueError(f'crf: features up to {bounds} span {radix} lattice positions along one '
                       'axis, more than 2^32; use larger kernel stddevs (config.crf.*_sxy/srgb).')
    if product * radix >= 1 << 32:
      words.append(word)
      word, product = [], 1
    word.append((i, lo, radix))
    product *= radix
  words.append(word)
  return words


def _pack(keys: jax.Array, packing: list[list[tuple[int, int, int]]]) -> list[jax.Array]:
  """The uint32 words of keys (..., d+1)."""
  d1 = keys.shape[-1]
  words = []
  for word in packing:
    acc = None
    for i, lo, radix in word:
      field = ((keys[..., i] - keys[..., 1]) // d1 - lo).astype(jnp.uint32)
      acc = field if acc is None else acc * np.uint32(radix) + field
    words.append(acc)
  return words


def _deltas(packing: list[list[tuple[int, int, int]]], d: int) -> np.ndarray:
  """(d+1, words) uint32: what key + 1 - (d+1) e_j adds to each word (mod 2^32): c_j - 1, or all
  c_i + 1 for j = 1."""
  deltas = np.zeros((d + 1, len(packing)), np.uint32)
  for j in range(d + 1):
    for w, word in enumerate(packing):
      delta, stride = 0, 1
      for i, _, radix in reversed(word):
        delta += stride * (1 if j == 1 else -1 if i == j else 0)
        stride *= radix
      deltas[j, w] = delta % (1 << 32)
  return deltas


def _less(a: list[jax.Array], b: list[jax.Array]) -> jax.Array:
  """Lexicographic a < b over the words."""
  result = a[-1] < b[-1]
  for x, y in zip(a[-2::-1], b[-2::-1]):
    result = (x < y) | ((x == y) & result)
  return result


def _lower_bound(table: list[jax.Array], queries: list[jax.Array]) -> jax.Array:
  """How many (sorted) table entries are below each query: a branchless binary search."""
  size = table[0].shape[0]
  top = size.bit_length() - 1

  def step(k, pos):
    cand = pos + (1 << (top - k))
    at = jnp.minimum(cand, size) - 1
    return jnp.where((cand <= size) & _less([t[at] for t in table], queries), cand, pos)

  # zeros_like: the carry keeps the queries' device variance inside shard_map.
  return lax.fori_loop(0, top + 1, step, jnp.zeros_like(queries[0], jnp.int32))


def _build_lattice(features: jax.Array, inside: jax.Array, bounds: tuple[float, ...]) -> _Lattice:
  """The lattice of the features (N, d) in [0, bounds] of the pixels `inside` (N,) bool."""
  n, d = features.shape
  size = n * (d + 1)
  keys, bary, rank = _simplices(features)
  keys = jnp.where(inside[:, None, None], keys, keys[0])  # Outside: pixel 0's vertices ...
  rank = jnp.where(inside[:, None], rank, rank[0])
  bary = jnp.where(inside[:, None], bary, 0.0)  # ... with no weight.
  packing = _packing(bounds)
  words = _pack(keys, packing)  # (N, d+1) each
  # Sort all entries' packed keys (one operand sorts fastest), deduplicate into a sorted table.
  flat = [w.reshape(-1) for w in words]
  if len(flat) == 1:
    ordered = [lax.sort(flat[0])]
  else:
    ordered = list(lax.sort(tuple(flat), num_keys=len(flat)))
  first = jnp.concatenate([jnp.ones((1,), bool),
                           functools.reduce(jnp.logical_or,
                                            [w[1:] != w[:-1] for w in ordered])])
  count = jnp.sum(first, dtype=jnp.int32)
  slot = jnp.where(first, jnp.cumsum(first, dtype=jnp.int32) - 1, size)
  unique = [jnp.full((size,), _SENTINEL).at[slot].set(w, mode='drop') for w in ordered]
  sizes = _bucket_sizes(size)
  bucket = jnp.sum(jnp.asarray(sizes[1:], jnp.int32) >= count).astype(jnp.int32)
  deltas = jnp.asarray(_deltas(packing, d))
  # Vertex r+1 of a simplex is vertex r + 1 - (d+1) e_j, j the coordinate of rank d - r.
  walk = jnp.argmax(rank[:, None, :] == d - np.arange(d)[None, :, None], axis=2)  # (N, d)

  def lookups(prefix):  # Over the first `prefix` table slots (>= count).
    table = [u[:prefix] for u in unique]
    pos = lax.iota(jnp.int32, prefix)
    valid = pos < count

    def neighbours(j):  # Positions of key + 1 - (d+1) e_j and key - 1 + (d+1) e_j, or prefix.
      query = [t + deltas[j, w] for w, t in enumerate(table)]
      at = _lower_bound(table, query)
      atc = jnp.minimum(at, prefix - 1)
      found = functools.reduce(jnp.logical_and, [t[atc] == q for t, q in zip(table, query)],
                               valid & (at < prefix))
      nxt = jnp.where(found, at, prefix)
      return nxt, jnp.full((prefix,), prefix, jnp.int32).at[nxt].set(pos, mode='drop')

    nexts, prevs = lax.map(neighbours, jnp.arange(d + 1))  # (d+1, prefix) each
    vertex = _lower_bound(table, [w[:, 0] for w in words])  # Each pixel's vertex 0 ...
    offsets = [vertex]
    flat_nexts = nexts.reshape(-1)
    for r in range(d):  # ... and the others by walking along the simplex's edges.
      vertex = flat_nexts[walk[:, r] * prefix + vertex]
      offsets.append(vertex)
    return (jnp.stack(offsets, axis=1), _pad(nexts, size, prefix), _pad(prevs, size, prefix))

  offsets, nexts, prevs = lax.switch(bucket, [functools.partial(lookups, s) for s in sizes])
  return _Lattice(offsets, bary, nexts, prevs, bucket)


def _pad(x: jax.Array, size: int, value: int) -> jax.Array:
  return jnp.concatenate([x, jnp.full(x.shape[:-1] + (size - x.shape[-1],), value, x.dtype)],
                         axis=-1)


def _filter(lattice: _Lattice, values: jax.Array) -> jax.Array:
  """Splat, blur, slice of values (N, C): Permutohedral::compute (forward)."""
  n, d1 = lattice.offsets.shape
  size, d = n * d1, d1 - 1
  alpha = np.float32(1.0 / (1.0 + 2.0 ** -d))
  splat = (lattice.weights[:, :, None] * values[:, None, :]).reshape(n * d1, -1)

  def run(prefix, splat):  # Over the first `prefix` vertex slots (>= the M in use).
    grid = jax.ops.segment_sum(splat, lattice.offsets.reshape(-1), num_segments=prefix)
    zero = jnp.zeros_like(grid[:1])
    nexts, prevs = lattice.nexts[:, :prefix], lattice.prevs[:, :prefix]

    # A loop, so that each direction reads the previous one's stored grid: XLA:CPU would fuse
    # the chain of gathers into one loop that recomputes every gathered row.
    def blur(j, grid):
      padded = jnp.concatenate([grid, zero])  # Row `prefix`: a missing neighbour.
      return grid + 0.5 * (padded[nexts[j]] + padded[prevs[j]])

    grid = lax.fori_loop(0, d + 1, blur, grid)
    picked = grid[lattice.offsets.reshape(-1)].reshape(n, d1, -1)
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
    bounds = ((w - 1) / sxy, (h - 1) / sxy) + (() if srgb is None else (255.0 / srgb,) * 3)
    lattice = _build_lattice(_features(image, sxy, srgb), inside, bounds)
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
