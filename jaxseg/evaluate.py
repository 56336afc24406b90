"""Evaluation: inference modes (whole, sliding window, multi-scale + flip) and the eval loop.

Each mode is a pure function of `apply_fn(images) -> logits` with static shapes, so the whole
inference is one compiled program per image size:
  whole       one forward pass over the (padded) image.
  slide       windows of eval.crop_size every eval.stride (the last window of a row/column is
              aligned to the edge; images smaller than the window are padded with zeros, the
              normalised mean), logits averaged where windows overlap.
  multiscale  for each of eval.scales: bilinear resize, predict (whole if the scaled image fits
              in one window, else slide), resize the logits back, softmax; probabilities averaged
              over scales (and horizontal flips when eval.flip).
`evaluate` runs one of them over a split, accumulating one confusion matrix on the devices.
"""
from collections.abc import Callable, Iterable, Sequence
import functools
import json
import math
import pathlib
import re
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg import metrics

ApplyFn = Callable[[jax.Array], jax.Array]
MODES = ('whole', 'slide', 'multiscale')


# ---------------------------------------------------------------- inference modes
def whole(apply_fn: ApplyFn, images: jax.Array) -> jax.Array:
  """Logits of one forward pass."""
  return apply_fn(images)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
  """Window offsets along one axis covering [0, size); the last one ends at the edge."""
  if crop <= 0 or stride <= 0:
    raise ValueError(f'slide window crop {crop} and stride {stride} must be positive')
  if stride > crop:
    raise ValueError(f'slide stride {stride} > crop {crop} would skip pixels')
  if size <= crop:
    return [0]
  count = math.ceil((size - crop) / stride) + 1
  return sorted({min(i * stride, size - crop) for i in range(count)})


def slide(apply_fn: ApplyFn, images: jax.Array, crop: Sequence[int],
          stride: Sequence[int]) -> jax.Array:
  """Sliding-window logits (B, H, W, C), averaged over overlapping windows."""
  batch, height, width, _ = images.shape
  ch, cw = crop
  pad_h, pad_w = max(ch - height, 0), max(cw - width, 0)
  if pad_h or pad_w:  # Smaller than a window: pad bottom/right, crop the logits back below.
    images = jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  full_h, full_w = height + pad_h, width + pad_w
  starts = [(y, x) for y in window_starts(full_h, ch, stride[0])
            for x in window_starts(full_w, cw, stride[1])]
  windows = jnp.stack([images[:, y:y + ch, x:x + cw] for y, x in starts])
  # lax.map: one window batch in memory at a time, one compiled body.
  logits = jax.lax.map(apply_fn, windows)
  total = jnp.zeros((batch, full_h, full_w, logits.shape[-1]), logits.dtype)
  count = np.zeros((full_h, full_w), np.float32)
  for k, (y, x) in enumerate(starts):
    total = total.at[:, y:y + ch, x:x + cw].add(logits[k])
    count[y:y + ch, x:x + cw] += 1
  return (total / count[None, :, :, None])[:, :height, :width]


def _resize(x: jax.Array, height: int, width: int) -> jax.Array:
  # Bilinear with half-pixel centres and no antialiasing, as cv2/PyTorch (align_corners=False).
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), 'linear', antialias=False)


def multiscale(apply_fn: ApplyFn, images: jax.Array, scales: Sequence[float], flip: bool,
               crop: Sequence[int], stride: Sequence[int]) -> jax.Array:
  """Class probabilities (B, H, W, C) averaged over scales and (optionally) flips."""
  if not scales:
    raise ValueError('eval.scales is empty; give at least one scale, e.g. (1.0,)')
  _, height, width, _ = images.shape
  total, terms = None, 0
  for scale in scales:
    sh, sw = max(1, round(height * scale)), max(1, round(width * scale))
    scaled = images if (sh, sw) == (height, width) else _resize(images, sh, sw)
    fits = sh <= crop[0] and sw <= crop[1]
    predict = apply_fn if fits else functools.partial(slide, apply_fn, crop=crop, stride=stride)
    for flipped in ((False, True) if flip else (False,)):
      x = scaled[:, :, ::-1] if flipped else scaled
      logits = predict(x)
      if flipped:
        logits = logits[:, :, ::-1]
      if (sh, sw) != (height, width):
        logits = _resize(logits, height, width)
      probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
      total = probs if total is None else total + probs
      terms += 1
  return total / terms


def inference_fn(apply_fn: ApplyFn, mode: str, crop: Sequence[int] = (473, 473),
                 stride: Sequence[int] = (316, 316), scales: Sequence[float] = (1.0,),
                 flip: bool = False) -> ApplyFn:
  """images -> scores (B, H, W, C) whose argmax is the prediction, for one eval mode.

  'whole' and 'slide' return logits (or, with flip, probabilities averaged with the flipped
  pass); 'multiscale' returns probabilities averaged over `scales` and flips.
  """
  crop, stride, scales = tuple(crop), tuple(stride), tuple(scales)
  if mode == 'whole':
    base = apply_fn
  elif mode == 'slide':
    base = functools.partial(slide, apply_fn, crop=crop, stride=stride)
  elif mode == 'multiscale':
    return functools.partial(multiscale, apply_fn, scales=scales, flip=flip, crop=crop,
                             stride=stride)
  else:
    raise ValueError(f'unknown eval.mode {mode!r}; use one of {", ".join(MODES)}')
  if not flip:
    return base
  # Flip in whole/slide mode: a one-scale multiscale whose per-scale predictor is `base`.
  return functools.partial(multiscale, base, scales=(1.0,), flip=True, crop=(1 << 30,) * 2,
                           stride=stride)


def config_inference_fn(apply_fn: ApplyFn, config: ml_collections.ConfigDict) -> ApplyFn:
  """`inference_fn` with the settings of config.eval."""
  return inference_fn(apply_fn, config.eval.mode, config.eval.crop_size, config.eval.stride,
                      config.eval.scales, config.eval.flip)


def model_apply_fn(model: Any, variables: Any) -> ApplyFn:
  """images -> float32 logits of a Flax model in inference mode (running BN statistics)."""
  def apply(images):
    out = model.apply(variables, images, train=False)
    if isinstance(out, (tuple, list)):  # (logits, aux_logits) models.
      out = out[0]
    return out.astype(jnp.float32)
  return apply


# ---------------------------------------------------------------- compiled eval step
@functools.lru_cache(maxsize=16)
def _eval_step(model: Any, mesh: Mesh, mode: str, crop: tuple[int, ...],
               stride: tuple[int, ...], scales: tuple[float, ...], flip: bool, num_classes: int,
               ignore: int) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """jit(shard_map(per-device step)); cached so repeated evals during training compile once."""

  def per_device(variables, images, labels, valid, cm):
    infer = inference_fn(model_apply_fn(model, variables), mode, crop, stride, scales, flip)
    pred = jnp.argmax(infer(images), axis=-1)
    per_image = metrics.per_image_confusion(pred, labels, num_classes, ignore, valid)
    return cm + jax.lax.psum(per_image.sum(0), 'data'), per_image

  step = jax.shard_map(per_device, mesh=mesh,
                       in_specs=(P(), P('data'), P('data'), P('data'), P()),
                       out_specs=(P(), P('data')))
  return jax.jit(step, donate_argnums=(4,))


def _to_host(x: Any) -> np.ndarray:
  """A global array as NumPy on every process (all-gather when multi-host)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _gather_ids(ids_per_batch: Sequence[Sequence[Any]]) -> list[str]:
  """Example ids in global batch order, from each process's host-local ids per batch.

  A global batch holds process 0's rows, then process 1's, ...; every process yields the same
  number of batches of the same local size.
  """
  def text(i):
    return i.decode() if isinstance(i, bytes) else str(i)
  if jax.process_count() == 1:
    return [text(i) for batch in ids_per_batch for i in batch]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  width = 256
  local = max((len(b) for b in ids_per_batch), default=0)
  codes = np.zeros((len(ids_per_batch), local, width), np.uint8)
  for b, batch in enumerate(ids_per_batch):
    for row, i in enumerate(batch):
      raw = text(i).encode()[:width]
      codes[b, row, :len(raw)] = np.frombuffer(raw, np.uint8)
  codes = np.asarray(multihost_utils.process_allgather(codes))  # (processes, batches, rows, w)
  codes = codes.transpose(1, 0, 2, 3).reshape(-1, width)
  return [bytes(row).rstrip(b'\0').decode(errors='replace') for row in codes]


def class_names(config: ml_collections.ConfigDict) -> list[str]:
  """Class names of config.data.dataset (numbers when the dataset has no spec)."""
  try:  # classes.py is light; jaxseg.data itself imports the TFDS builders.
    from jaxseg.data import classes  # pylint: disable=g-import-not-at-top
    names = list(classes.dataset_spec(config.data.dataset).class_names)
  except (ImportError, ValueError):
    names = []
  if len(names) != config.data.num_classes:
    names = [str(i) for i in range(config.data.num_classes)]
  return names


# ---------------------------------------------------------------- evaluation loop
def evaluate(config: ml_collections.ConfigDict, model: Any, variables: Any, mesh: Mesh,
             split: str | None = None, *, workdir: str | pathlib.Path | None = None,
             step: int | None = None, progress: bool = False,
             batches: Iterable[dict[str, Any]] | None = None) -> dict[str, Any]:
  """Scores `model` with `variables` on a split (default config.data.eval_split).

  Runs config.eval.mode over pipeline.eval_iterator (padded examples and label 255 masked out,
  the last batch kept), accumulating one confusion matrix on the devices (psum over 'data',
  hence over hosts too). When `workdir` is given, process 0 writes
  workdir/eval/<split>_step<step>.json. `batches` replaces the eval iterator (same dict
  format: image, label, valid, id), e.g. for tests.

  Returns:
    dict with pixel_accuracy, mean_accuracy, mean_iou, fw_iou (floats, FCN's definitions),
    per_class_iou, per_class_accuracy (lists; NaN where a class is absent, see jaxseg.metrics),
    confusion_matrix (int64 ndarray), class_names, per_image ([{'id', 'iou',
    'pixel_accuracy'}] in dataset order), num_images, split.
  """
  split = split or config.data.eval_split
  num_classes = config.data.num_classes
  if config.eval.mode not in MODES:
    raise ValueError(f'unknown eval.mode {config.eval.mode!r}; use one of {", ".join(MODES)}')
  step_fn = _eval_step(model, mesh, config.eval.mode, tuple(config.eval.crop_size),
                       tuple(config.eval.stride), tuple(float(s) for s in config.eval.scales),
                       bool(config.eval.flip), num_classes, int(config.data.ignore_label))
  replicated = NamedSharding(mesh, P())
  variables = jax.device_put(variables, replicated)
  cm = jax.device_put(np.zeros((num_classes, num_classes), np.int32), replicated)

  per_image, valids, ids = [], [], []
  if batches is None:
    from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TF)
    batches = pipeline.eval_iterator(config, mesh, split)
  if progress and jax.process_index() == 0:
    try:
      import tqdm  # pylint: disable=g-import-not-at-top
      batches = tqdm.tqdm(batches, desc=f'eval {split}', unit='batch', leave=False)
    except ImportError:
      pass
  for batch in batches:
    cm, image_cm = step_fn(variables, batch['image'], batch['label'], batch['valid'], cm)
    per_image.append(image_cm)
    valids.append(batch['valid'])
    ids.append(list(batch['id']))

  total = _to_host(cm).astype(np.int64)
  scores = metrics.scores_from_confusion(total)
  results = dict(scores)
  results['confusion_matrix'] = total
  results['class_names'] = class_names(config)
  results['split'] = split
  results['per_image'] = []
  if per_image:
    image_cm = np.concatenate([_to_host(x) for x in per_image])
    valid = np.concatenate([_to_host(v) for v in valids]).astype(bool)
    all_ids = _gather_ids(ids)
    if len(all_ids) != len(valid):
      all_ids = [str(i) for i in range(len(valid))]  # Ids missing: fall back to positions.
    results['per_image'] = [
        {'id': i, **s} for i, s, v in zip(all_ids, metrics.per_image_scores(image_cm), valid)
        if v]
  results['num_images'] = len(results['per_image'])
  if workdir is not None and jax.process_index() == 0:
    write_results(results, workdir, split, step)
  return results


def results_path(workdir: str | pathlib.Path, split: str, step: int | None) -> pathlib.Path:
  """workdir/eval/<split>_step<N>.json (a sliced split like 'val[:50]' becomes 'val__50_')."""
  suffix = f'_step{step}' if step is not None else ''
  name = re.sub(r'[^\w.+-]', '_', split)
  return pathlib.Path(workdir) / 'eval' / f'{name}{suffix}.json'


def write_results(results: dict[str, Any], workdir: str | pathlib.Path, split: str,
                  step: int | None) -> pathlib.Path:
  """eval/<split>_step<N>.json (strict JSON: NaN written as null)."""
  path = results_path(workdir, split, step)
  path.parent.mkdir(parents=True, exist_ok=True)
  payload = {'step': step, **results}
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(metrics.json_safe(payload), indent=1))
  tmp.replace(path)
  return path
