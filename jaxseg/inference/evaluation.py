"""Evaluation over a dataset split: one compiled step per batch, one confusion matrix.

`evaluate` runs the inference chain of config.eval (jaxseg.inference.chain: the mode, an
ensemble partner, the dense CRF) over pipeline.eval_iterator,
accumulating the confusion matrix on the devices (psum over 'data', hence over hosts too), and
writes workdir/eval/<split>_step<N>.json (a failed write is reported with the scores, not raised:
a read-only workdir can be evaluated).
"""
from collections.abc import Callable, Iterable, Sequence
import functools
import json
import os
import re
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from etils import epath

from jaxseg import metrics
from jaxseg import storage
from jaxseg.data import classes
from jaxseg.inference import chain


# ---------------------------------------------------------------- compiled eval step
@functools.lru_cache(maxsize=16)
def _eval_step(model: Any, partner_model: Any, mesh: Mesh, prediction: chain.Chain,
               num_classes: int, ignore: int) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """jit(shard_map(per-device step)); cached so repeated evals during training compile once.

  step(variables, partner_variables, pixels, labels, valid, heights, widths, windows,
  window_valid, cm) -> (cm, per-image confusion).
  """

  def per_device(variables, partner_variables, pixels, labels, valid, heights, widths, windows,
                 window_valid, cm):
    # Pixels from the input pipeline (uint8): each model normalises them on the device. The
    # canvas past each image is the mean pixel rounded to uint8 (about 0 after normalising);
    # multiscale never reads it, and pads with exactly 0, the normalised mean, as test.py does.
    sizes = jnp.stack([heights, widths], axis=-1).astype(jnp.int32)
    out = prediction(model, variables, pixels, sizes, windows, window_valid, partner_model,
                   partner_variables)
    pred = jnp.argmax(out, axis=-1)
    per_image = metrics.per_image_confusion(pred, labels, num_classes, ignore, valid)
    return cm + jax.lax.psum(per_image.sum(0), 'data'), per_image

  step = jax.shard_map(per_device, mesh=mesh,
                       in_specs=(P(), P(), P('data'), P('data'), P('data'), P('data'), P('data'),
                                 P('data'), P('data'), P()),
                       out_specs=(P(), P('data')))
  return jax.jit(step, donate_argnums=(9,))


def _batch_sizes(batch: dict[str, Any], mesh: Mesh) -> tuple[Any, Any]:
  """The batch's per-image heights and widths; the whole canvas where the batch has none."""
  if 'height' in batch and 'width' in batch:
    return batch['height'], batch['width']
  count, height, width = batch['image'].shape[:3]
  shard = NamedSharding(mesh, P('data'))
  return (jax.device_put(np.full((count,), height, np.int32), shard),
          jax.device_put(np.full((count,), width, np.int32), shard))


def _local_rows(x: Any) -> np.ndarray:
  """This process's rows of a batch array, in order (the whole array on one process)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    rows, seen = [], set()
    for s in shards:
      start = s.index[0].start or 0
      if start not in seen:  # Replicas along other mesh axes hold the same rows.
        seen.add(start)
        rows.append(np.asarray(s.data))
    return np.concatenate(rows)
  return np.asarray(x)


def _global_rows(local: np.ndarray, sharding: NamedSharding, count: int) -> jax.Array:
  """A global batch array from this process's rows (as the eval pipeline builds its batches)."""
  return jax.make_array_from_process_local_data(sharding, local, (count,) + local.shape[1:])


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


# ---------------------------------------------------------------- evaluation loop
def evaluate(config: ml_collections.ConfigDict, model: Any, variables: Any, mesh: Mesh,
             split: str | None = None, *, workdir: str | os.PathLike | None = None,
             step: int | None = None, progress: bool = False,
             batches: Iterable[dict[str, Any]] | None = None) -> dict[str, Any]:
  """Scores `model` with `variables` on a split (default config.data.eval_split).

  Runs config.eval's chain (mode, ensemble partner, CRF; jaxseg.inference.chain) over
  pipeline.eval_iterator (padded examples and label 255 masked out,
  the last batch kept), accumulating one confusion matrix on the devices (psum over 'data',
  hence over hosts too). When `workdir` is given, process 0 writes
  workdir/eval/<split>_step<step>.json and returns its path as 'results_file'; when it cannot be
  written (a read-only workdir, a full disk) nothing is raised: the scores are returned with
  'results_file_error' saying which file and why. `batches` replaces the eval iterator (same dict
  format: image, label, valid, id, and height/width: each image's true size, which multiscale
  needs; without them every image fills its canvas), e.g. for tests.

  Returns:
    dict with pixel_accuracy, mean_accuracy, mean_iou, fw_iou (floats, FCN's definitions),
    per_class_iou, per_class_accuracy (lists; NaN where a class is absent, see jaxseg.metrics),
    confusion_matrix (int64 ndarray), class_names, per_image ([{'id', 'iou',
    'pixel_accuracy'}] in dataset order), num_images, split, inference (the chain's tag); with a
    workdir on process 0 also results_file (str) or results_file_error (str).
  """
  split = split or config.data.eval_split
  num_classes = config.data.num_classes
  partner = chain.load_partner(config)
  prediction = chain.Chain.from_config(config, partner.config if partner else None)
  step_fn = _eval_step(model, partner.model if partner else None, mesh, prediction, num_classes,
                       int(config.data.ignore_label))
  windows_of = chain.WindowSource(config) if prediction.needs_windows else None
  replicated = NamedSharding(mesh, P())
  shard = NamedSharding(mesh, P('data'))
  variables = jax.device_put(variables, replicated)
  partner_variables = jax.device_put(partner.variables if partner else {}, replicated)
  cm = jax.device_put(np.zeros((num_classes, num_classes), np.int32), replicated)

  per_image, valids, ids = [], [], []
  if batches is None:
    from jaxseg.data import pipeline as data_pipeline  # pylint: disable=g-import-not-at-top
    batches = data_pipeline.eval_iterator(config, mesh, split)
  if progress and jax.process_index() == 0:
    batches = tqdm.tqdm(batches, desc=f'eval {split}', unit='batch', leave=False)
  for batch in batches:
    heights, widths = _batch_sizes(batch, mesh)
    count = batch['image'].shape[0]
    if windows_of is not None:
      local = [_local_rows(batch[k]) for k in ('image', 'valid')]
      windows, window_valid = windows_of.batch(list(batch['id']), local[0], _local_rows(heights),
                                               _local_rows(widths), local[1])
    else:
      windows, window_valid = chain.no_windows(len(batch['id']))
    windows = _global_rows(windows, shard, count)
    window_valid = _global_rows(window_valid, shard, count)
    cm, image_cm = step_fn(variables, partner_variables, batch['image'], batch['label'],
                           batch['valid'], heights, widths, windows, window_valid, cm)
    per_image.append(image_cm)
    valids.append(batch['valid'])
    ids.append(list(batch['id']))

  total = _to_host(cm).astype(np.int64)
  scores = metrics.scores_from_confusion(total)
  results = dict(scores)
  results['confusion_matrix'] = total
  names = list(classes.spec_for_data(config.data).class_names)
  n = int(config.data.num_classes)
  results['class_names'] = names if len(names) == n else [str(i) for i in range(n)]
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
  results['inference'] = prediction.tag
  if workdir is not None and jax.process_index() == 0:
    path = results_path(workdir, split, step, prediction.tag)
    try:
      write_results(results, workdir, split, step, prediction.tag)
    except OSError as e:  # The scores cost a whole evaluation: return them, say what failed.
      reason = f'{e.strerror}: {e.filename}' if e.strerror and e.filename else str(e)
      results['results_file_error'] = f'{path} could not be written ({reason})'
    else:
      results['results_file'] = str(path)
  return results


def results_path(workdir: str | os.PathLike, split: str, step: int | None,
                 tag: str = '') -> epath.Path:
  """workdir/eval/<split>_step<N>[_<tag>].json (a sliced split like 'val[:50]' becomes
  'val__50_'); `tag` names the chain's extras (chain.Chain.tag: proposals, ensemble, crf), so an
  evaluation with them never replaces the plain one."""
  suffix = f'_step{step}' if step is not None else ''
  suffix += f'_{tag}' if tag else ''
  name = re.sub(r'[^\w.+-]', '_', split)
  return storage.resolve(workdir) / 'eval' / f'{name}{suffix}.json'


def write_results(results: dict[str, Any], workdir: str | os.PathLike, split: str,
                  step: int | None, tag: str = '') -> epath.Path:
  """eval/<split>_step<N>[_<tag>].json (strict JSON: NaN written as null)."""
  path = results_path(workdir, split, step, tag)
  storage.write_text_atomic(path, json.dumps(metrics.json_safe({'step': step, **results}),
                                             indent=1))
  return path
