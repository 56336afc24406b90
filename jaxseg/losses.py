"""Pixel-wise cross-entropy for segmentation, written for the per-device (pmap-style) step.

Labels equal to `ignore_label` (255) contribute nothing. Losses are computed in float32 whatever
the model's compute dtype. Under data parallelism the loss is the *global* mean over every valid
pixel of the global batch (sums and valid counts are summed across devices), so a step on 8
devices equals the same batch on 1 device, even when devices hold different numbers of valid
pixels.
"""
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax


def cross_entropy_sums(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_label: int = 255,
    class_weights: Sequence[float] | jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Local sums of the (weighted) pixel cross-entropy and of its normaliser.

  Args:
    logits: (..., num_classes) scores, any float dtype (cast to float32).
    labels: (...) integer class indices; `ignore_label` marks pixels to skip.
    ignore_label: label value excluded from the loss.
    class_weights: optional per-class weights; as PyTorch's CrossEntropyLoss, a pixel of class c
      counts w[c] in both the sum and the normaliser.

  Returns:
    (loss_sum, weight_sum): sum over valid pixels of w[y] * -log p(y), and sum of w[y] (the
    number of valid pixels when unweighted). Both float32 scalars.
  """
  num_classes = logits.shape[-1]
  if logits.shape[:-1] != labels.shape:
    raise ValueError(f'logits {logits.shape} and labels {labels.shape} disagree: expected logits '
                     'of shape labels.shape + (num_classes,).')
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.int32)
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  # A one-hot select rather than take_along_axis: its gradient is elementwise (fused), where
  # take_along_axis's is a scatter-add. The sum adds exact zeros, so the value is the same.
  picked = jnp.arange(num_classes) == safe[..., None]
  nll = -jnp.sum(jnp.where(picked, log_probs, 0.0), axis=-1)
  weight = _pixel_weights(labels, num_classes, ignore_label, class_weights)
  return jnp.sum(weight * nll), jnp.sum(weight)


def _pixel_weights(labels: jax.Array, num_classes: int, ignore_label: int,
                   class_weights: Sequence[float] | jax.Array | None) -> jax.Array:
  """float32 weight of every pixel: w[label] (1 without class weights), 0 where ignored."""
  labels = labels.astype(jnp.int32)
  valid = labels != ignore_label
  if class_weights is None or len(class_weights) == 0:
    return valid.astype(jnp.float32)
  class_weights = jnp.asarray(class_weights, jnp.float32)
  if class_weights.shape != (num_classes,):
    raise ValueError(f'config.loss.class_weights has {class_weights.shape[0]} entries; the model '
                     f'predicts {num_classes} classes: give one weight per class or none.')
  return jnp.where(valid, class_weights[jnp.where(valid, labels, 0)], 0.0)


def pixel_weight_sum(labels: jax.Array, num_classes: int, ignore_label: int = 255,
                     class_weights: Sequence[float] | jax.Array | None = None) -> jax.Array:
  """The local normaliser of `cross_entropy_sums` from the labels alone (no logits needed)."""
  return jnp.sum(_pixel_weights(labels, num_classes, ignore_label, class_weights))


def segmentation_loss(
    outputs: jax.Array | tuple[jax.Array, jax.Array],
    labels: jax.Array,
    *,
    normalize: bool = True,
    aux_weight: float = 0.4,
    ignore_label: int = 255,
    class_weights: Sequence[float] | None = None,
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
  """The training loss of one device's share of the batch.

  Args:
    outputs: logits, or (logits, aux_logits) for models with an auxiliary head (PSPNet).
    labels: int labels matching the logits' spatial shape.
    normalize: True = mean over valid pixels of the global batch; False = FCN's unnormalised sum
      over the global batch.
    aux_weight: weight of the auxiliary loss (total = main + aux_weight * aux).
    ignore_label: label to skip.
    class_weights: optional per-class weights.
    axis_name: the mapped device axis ('data') inside shard_map, or None on a single device.

  Returns:
    (device_loss, metrics). `device_loss` is this device's term scaled so that its mean over
    devices (what `lax.pmean` of the gradients differentiates) is the global loss; metrics hold
    the global 'loss' and 'main_loss' (plus 'aux_loss' with an aux head), identical on every
    device.
  """
  if isinstance(outputs, (tuple, list)):
    logits, aux_logits = outputs
  else:
    logits, aux_logits = outputs, None
  kwargs = dict(ignore_label=ignore_label, class_weights=class_weights)
  main_sum, weight_sum = cross_entropy_sums(logits, labels, **kwargs)
  sums = {'main_loss': main_sum}
  if aux_logits is not None:
    sums['aux_loss'] = cross_entropy_sums(aux_logits, labels, **kwargs)[0]

  # The normaliser does not depend on the parameters: sum it across devices, stop its gradient.
  num_devices = 1
  if axis_name is not None:
    weight_sum = lax.psum(weight_sum, axis_name)
    num_devices = lax.psum(1, axis_name)
  weight_sum = lax.stop_gradient(weight_sum)
  # All-ignore batches give 0 loss rather than 0/0.
  denominator = jnp.maximum(weight_sum, 1e-12) if normalize else jnp.float32(1.0)

  # Per-device term: mean over devices of (local_sum * num_devices / global_denominator) is
  # sum(local_sums) / global_denominator, the global mean.
  device_terms = {k: v * num_devices / denominator for k, v in sums.items()}
  device_loss = device_terms['main_loss']
  if 'aux_loss' in device_terms:
    device_loss = device_loss + aux_weight * device_terms['aux_loss']
  metrics = dict(device_terms, loss=device_loss)
  if axis_name is not None:
    metrics = {k: lax.pmean(v, axis_name) for k, v in metrics.items()}
  return device_loss, metrics
