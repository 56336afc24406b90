"""Segmentation metrics from one confusion matrix, with the FCN paper's definitions.

The confusion matrix `cm[i, j]` counts pixels of ground-truth class i predicted as class j
(rows: truth, columns: prediction), as FCN's `fast_hist`. With n_ij = cm[i, j],
t_i = sum_j n_ij (pixels of class i) and n_cl the number of classes (Long et al. 2015, sec. 5):

  pixel accuracy   sum_i n_ii / sum_i t_i
  mean accuracy    (1/n_cl) sum_i n_ii / t_i
  mean IU          (1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
  frequency-weighted IU  (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

As FCN's `score.py` (np.nanmean), a class whose ratio is 0/0 is NaN and left out of the mean:
for IoU, a class absent from both the ground truth and the predictions; for the class accuracy,
a class absent from the ground truth. A class predicted but absent from the ground truth has IoU 0
and counts. The matrix is accumulated over a whole split before scoring (never an average of
per-batch scores).
"""
from collections.abc import Sequence
import math
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# One-hot matmul accumulates in float32, exact for counts below 2**24 per call; larger inputs
# use a scatter-add (bincount) instead.
_MAX_EXACT_FLOAT32 = 2**24


def confusion_matrix(pred: jax.Array, label: jax.Array, num_classes: int, ignore: int = 255,
                     valid: jax.Array | None = None, axis_name: str | None = None) -> jax.Array:
  """(num_classes, num_classes) int32 counts of (truth, prediction) pairs, on device.

  Args:
    pred: int predictions, any shape (e.g. (B, H, W)), values in [0, num_classes).
    label: int ground truth, same shape; `ignore` (and any value outside [0, num_classes)) is
      not counted.
    num_classes: static number of classes.
    ignore: label value that is skipped.
    valid: optional bool (B,) mask; False rows (batch padding) are not counted.
    axis_name: when called per device (shard_map/pmap), the mesh axis to sum over.
  """
  per_image = per_image_confusion(pred, label, num_classes, ignore, valid)
  cm = per_image.sum(0)
  if axis_name is not None:
    cm = lax.psum(cm, axis_name)
  return cm


def per_image_confusion(pred: jax.Array, label: jax.Array, num_classes: int, ignore: int = 255,
                        valid: jax.Array | None = None) -> jax.Array:
  """(B, num_classes, num_classes) int32 confusion matrix per example of a (B, ...) batch."""
  if pred.shape != label.shape:
    raise ValueError(f'pred shape {pred.shape} != label shape {label.shape}')
  batch = pred.shape[0]
  label = label.reshape(batch, -1).astype(jnp.int32)
  pred = pred.reshape(batch, -1).astype(jnp.int32)
  keep = (label != ignore) & (label >= 0) & (label < num_classes)
  if valid is not None:
    keep &= valid.reshape(batch, 1)
  # Out-of-range indices one-hot to all-zero rows, so -1 drops a pixel.
  label = jnp.where(keep, label, -1)
  if label.shape[1] < _MAX_EXACT_FLOAT32:
    truth = jax.nn.one_hot(label, num_classes, dtype=jnp.float32)
    guess = jax.nn.one_hot(pred, num_classes, dtype=jnp.float32)
    counts = jnp.einsum('bpi,bpj->bij', truth, guess, precision=lax.Precision.HIGHEST,
                        preferred_element_type=jnp.float32)
    return counts.astype(jnp.int32)
  flat = jnp.where(keep, label * num_classes + pred, num_classes * num_classes)
  counts = jax.vmap(lambda f: jnp.bincount(f, length=num_classes * num_classes + 1))(flat)
  return counts[:, :-1].reshape(batch, num_classes, num_classes).astype(jnp.int32)


def scores_from_confusion(cm: Any) -> dict[str, Any]:
  """FCN's four scores plus per-class IoU/accuracy from a confusion matrix (host, float64).

  Returns a dict with floats pixel_accuracy, mean_accuracy, mean_iou, fw_iou and lists
  per_class_iou, per_class_accuracy (NaN where undefined, see module docstring).
  """
  cm = np.asarray(cm, dtype=np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'confusion matrix must be square, got shape {cm.shape}')
  diag = np.diag(cm)
  truth = cm.sum(1)
  union = truth + cm.sum(0) - diag
  total = cm.sum()
  with np.errstate(divide='ignore', invalid='ignore'):
    acc = diag / truth
    iou = diag / union
    pixel_accuracy = diag.sum() / total if total else math.nan
  freq = truth / total if total else np.zeros_like(truth)
  present = freq > 0
  return {
      'pixel_accuracy': float(pixel_accuracy),
      'mean_accuracy': _nanmean(acc),
      'mean_iou': _nanmean(iou),
      'fw_iou': float((freq[present] * iou[present]).sum()) if total else math.nan,
      'per_class_iou': [float(x) for x in iou],
      'per_class_accuracy': [float(x) for x in acc],
  }


def per_image_scores(per_image_cm: Any) -> list[dict[str, float]]:
  """Mean IoU (over classes in the image's truth or prediction) and pixel accuracy per image."""
  return [{'iou': s['mean_iou'], 'pixel_accuracy': s['pixel_accuracy']}
          for s in map(scores_from_confusion, np.asarray(per_image_cm))]


def _nanmean(x: np.ndarray) -> float:
  x = x[~np.isnan(x)]
  return float(x.mean()) if x.size else math.nan


def json_safe(value: Any) -> Any:
  """Recursively turns NaN/inf into None and NumPy values into Python ones, for strict JSON."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return json_safe(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def format_table(scores: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
  """Per-class IoU/accuracy table followed by the four summary scores (percent)."""
  iou = scores['per_class_iou']
  acc = scores.get('per_class_accuracy', [math.nan] * len(iou))
  names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
  if len(names) != len(iou):
    raise ValueError(f'{len(names)} class names for {len(iou)} classes')
  width = max(12, *(len(n) for n in names))

  def pct(x):
    return '     -' if x is None or math.isnan(x) else f'{100 * x:6.2f}'

  lines = [f'{"class":<{width}}    IoU    Acc', '-' * (width + 14)]
  lines += [f'{n:<{width}} {pct(i)} {pct(a)}' for n, i, a in zip(names, iou, acc)]
  lines.append('-' * (width + 14))
  for key, title in (('pixel_accuracy', 'pixel acc'), ('mean_accuracy', 'mean acc'),
                     ('mean_iou', 'mean IoU'), ('fw_iou', 'fw IoU')):
    lines.append(f'{title:<{width}} {pct(scores[key])}')
  lines.append('(- : class absent from truth and prediction, left out of the means)')
  return '\n'.join(lines)
