"""DeconvNet's two-stage training examples: object-centred windows, then proposal windows.

Noh, Hong & Han (ICCV 2015), sec. 4.2 and 5.1 train in two stages on windows cut from each image
rather than on whole images (config.data.windows):
- 'objects' (stage 1, `object_window`): for each annotated object, its tight bounding box
  enlarged `config.data.window_context` (1.2) times about its centre "to include context" and made
  square by its longer side (the paper's wording: a square window); the label keeps only that
  object, whose pixels get its class, every other pixel is background (0) except the ignore band
  (255). The original's IMAGE_SEG_DATA layer read these pre-cut crops (data/get_data.sh:
  VOC_OBJECT.tar.gz, training/001_stage_1/stage_1_train.prototxt).
- 'proposals' (stage 2, `proposal_window`): windows from object proposals that overlap a
  ground-truth object sufficiently, every class label kept, the same 1.2 enlargement (not made
  square: a proposal window is resized to the input size whatever its aspect, as the original's
  WINDOW_SEG_DATA layer in training/002_stage_2/stage_2_train.prototxt and its inference code,
  inference/util/preprocess_image_bb.m). The original's proposal lists (stage_2_train_imgset) are
  not public; here proposals are sampled (`sample_proposal`): boxes jittered around an object's
  box in position (+-SHIFT_JITTER of its size) and size (each side x a log-uniform factor in
  [1/SCALE_JITTER, SCALE_JITTER]), clipped to the image, kept when their IoU with some object's
  box is >= config.data.proposal_min_iou; PROPOSALS_PER_OBJECT per object per epoch, redrawn
  every epoch from the example's stateless seed.
Each window is then resized to config.data.window_resize (250x250: image bilinear, label nearest
neighbour, half-pixel centres) and goes through the usual train transform (the original's
transform_param: random 224x224 crop and mirror).

Pixels of a window outside the image: the original's prepared crops are not public. Its
inference code pads each image on every side before cutting its (enlarged) proposal windows
(inference/generate_EDeconvNet_CRF_results.m), so windows crossing the border were used. We fill
them with the mean pixel (0 after normalisation, as every invented pixel in jaxseg) and label 255,
so the object stays centred with its aspect ratio and the invented area is left out of the loss.

Class balancing (config.data.balance_classes, both stages): every window of class c (the class of
the object it is cut around) is repeated `repeat_factors(counts)[c]` = round(n_max / n_c) times
per epoch, so each class has about as many windows as the commonest; the counts come from the
split's objects (`plan_windows`, computed once on the host from a pass that reads only 'objects').
With VOC train_aug's ~20 classes balanced to the person class this gives the paper's orders of
magnitude: ~0.2M stage-1 and ~2.7M stage-2 examples (PROPOSALS_PER_OBJECT = 14 ~ 2.7M / 0.2M).

Boxes are int32 (y0, x0, y1, x1) with exclusive ends, as the builders' 'objects' feature; the
instance map holds k for object k (1-based, entry k - 1 of 'objects'), 0 for none, 255 for the
ignore band. The TF functions run eagerly or in tf.data graphs with explicit stateless seeds.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow as tf

from jaxseg.data import augment

IGNORE_LABEL = augment.IGNORE_LABEL
MODES = ('image', 'objects', 'proposals')  # config.data.windows.
PROPOSALS_PER_OBJECT = 14  # Stage-2 windows per object per epoch (before balancing).
CANDIDATES = 16  # Proposal draws per window; the first that overlaps enough is kept.
SHIFT_JITTER = 0.3  # Proposal centre moves up to this fraction of the box's side.
SCALE_JITTER = 1.5  # Each proposal side is the box's x a log-uniform factor in [1/1.5, 1.5].
INSTANCE_IGNORE = 255


# ---------------------------------------------------------------------------------------- geometry
def enlarge_box(box: tf.Tensor, context: float, square: bool) -> tf.Tensor:
  """The window around `box` (y0, x0, y1, x1), enlarged `context` times about its centre.

  Sides are round(context * side) (at least 1), or both round(context * longer side) when
  `square`; the window is centred on the box, its top-left corner floor((y0 + y1 - side) / 2).
  With context >= 1 it contains the box. Coordinates may leave the image. int32 (4,).
  """
  box = tf.cast(box, tf.int32)
  hw = tf.stack([box[2] - box[0], box[3] - box[1]])
  if square:
    hw = tf.fill([2], tf.reduce_max(hw))
  sides = tf.maximum(tf.cast(tf.round(tf.cast(hw, tf.float32) * float(context)), tf.int32), 1)
  top_left = tf.math.floordiv(box[:2] + box[2:] - sides, 2)
  return tf.concat([top_left, top_left + sides], 0)


def box_iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
  """IoU of boxes a (n, 4) and b (m, 4), (y0, x0, y1, x1) exclusive ends -> (n, m) float32."""
  a = tf.cast(a, tf.float32)[:, None]
  b = tf.cast(b, tf.float32)[None]
  inter_hw = tf.maximum(tf.minimum(a[..., 2:], b[..., 2:]) - tf.maximum(a[..., :2], b[..., :2]), 0.)
  inter = inter_hw[..., 0] * inter_hw[..., 1]
  area = lambda x: tf.maximum(x[..., 2] - x[..., 0], 0.) * tf.maximum(x[..., 3] - x[..., 1], 0.)
  union = area(a) + area(b) - inter
  return tf.where(union > 0, inter / tf.maximum(union, 1e-12), 0.)


def crop_window(image: tf.Tensor, label: tf.Tensor, window: tf.Tensor, image_fill=0.,
                ignore_label: int = IGNORE_LABEL) -> tuple[tf.Tensor, tf.Tensor]:
  """The pixels of `window` (y0, x0, y1, x1); outside the image: `image_fill` and `ignore_label`.

  `image_fill` is a scalar or an RGB triple (the mean pixel of uncentred images).
  """
  shape = tf.shape(label)
  rows = tf.range(window[0], window[2])
  cols = tf.range(window[1], window[3])
  inside = (((rows >= 0) & (rows < shape[0]))[:, None]
            & ((cols >= 0) & (cols < shape[1]))[None, :])
  patch = tf.gather(tf.gather(image, tf.clip_by_value(rows, 0, shape[0] - 1), axis=0),
                    tf.clip_by_value(cols, 0, shape[1] - 1), axis=1)
  patch_label = tf.gather(tf.gather(label, tf.clip_by_value(rows, 0, shape[0] - 1), axis=0),
                          tf.clip_by_value(cols, 0, shape[1] - 1), axis=1)
  fill = tf.cast(tf.broadcast_to(image_fill, [3]), image.dtype)
  patch = tf.where(inside[..., None], patch, fill)
  patch_label = tf.where(inside, patch_label, tf.cast(ignore_label, label.dtype))
  return patch, patch_label


def _resized(image: tf.Tensor, label: tf.Tensor, size: Sequence[int]
             ) -> tuple[tf.Tensor, tf.Tensor]:
  h, w = int(size[0]), int(size[1])
  image, label = augment.resize(image, label, tf.constant([h, w]))
  return tf.ensure_shape(image, (h, w, 3)), tf.ensure_shape(label, (h, w))


# ---------------------------------------------------------------------------------- stage 1
def object_label(label: tf.Tensor, instance: tf.Tensor, k: tf.Tensor, object_class: tf.Tensor,
                 ignore_label: int = IGNORE_LABEL) -> tf.Tensor:
  """Stage-1 label of object k (0-based): its pixels its class, ignored pixels 255, else 0."""
  label = tf.cast(label, tf.int32)
  instance = tf.cast(instance, tf.int32)
  ignored = (label == ignore_label) | (instance == INSTANCE_IGNORE)
  out = tf.where(instance == tf.cast(k, tf.int32) + 1, tf.cast(object_class, tf.int32), 0)
  return tf.where(ignored, ignore_label, out)


def object_window(image: tf.Tensor, label: tf.Tensor, instance: tf.Tensor, classes: tf.Tensor,
                  boxes: tf.Tensor, k: tf.Tensor, context: float, size: Sequence[int],
                  image_fill=0., ignore_label: int = IGNORE_LABEL
                  ) -> tuple[tf.Tensor, tf.Tensor]:
  """Stage 1: the square window of object k (0-based), only that object labelled, at `size`.

  Args:
    image: float32 (H, W, 3).
    label: int32 (H, W) class map (255 ignore).
    instance: (H, W) or (H, W, 1) instance map (k + 1 = object k, 0 none, 255 ignore).
    classes: int32 (N,) class of each object; boxes: int32 (N, 4) their tight boxes.
    k: which object.
    context: the enlargement (config.data.window_context).
    size: (h, w) the window is resized to (config.data.window_resize).
    image_fill: pixel of the window outside the image (scalar or RGB).
    ignore_label: label of ignored pixels.

  Returns:
    image float32 (h, w, 3), label int32 (h, w).
  """
  if instance.shape.rank == 3:
    instance = instance[..., 0]
  window = enlarge_box(tf.gather(boxes, k), context, square=True)
  target = object_label(label, instance, k, tf.gather(classes, k), ignore_label)
  image, target = crop_window(image, target, window, image_fill, ignore_label)
  return _resized(image, target, size)


# ---------------------------------------------------------------------------------- stage 2
def _jittered(box: tf.Tensor, shape: tf.Tensor, seed: tf.Tensor, num: int) -> tf.Tensor:
  """`num` boxes jittered around `box` in centre and size, clipped to the image, >= 1 pixel."""
  box = tf.cast(box, tf.float32)
  u = tf.random.stateless_uniform([num, 4], seed, -1., 1.)
  hw = tf.maximum(box[2:] - box[:2], 1.)
  centre = (box[:2] + box[2:]) / 2. + u[:, :2] * SHIFT_JITTER * hw
  sides = hw * tf.exp(u[:, 2:] * float(np.log(SCALE_JITTER)))
  lo = tf.cast(tf.round(centre - sides / 2.), tf.int32)
  hi = tf.cast(tf.round(centre + sides / 2.), tf.int32)
  limit = tf.cast(shape[:2], tf.int32)
  lo = tf.clip_by_value(lo, 0, limit - 1)
  hi = tf.maximum(tf.minimum(hi, limit), lo + 1)
  return tf.concat([lo, hi], 1)


def sample_proposal(boxes: tf.Tensor, k: tf.Tensor, shape: tf.Tensor, seed: tf.Tensor,
                    min_iou: float) -> tf.Tensor:
  """A proposal box around object k: the first of CANDIDATES jittered boxes whose IoU with some
  object's box is >= min_iou (the object's own box when none is), int32 (y0, x0, y1, x1)."""
  candidates = _jittered(tf.gather(boxes, k), shape, seed, CANDIDATES)
  good = tf.reduce_max(box_iou(candidates, boxes), axis=1) >= float(min_iou)
  first = tf.argmax(tf.cast(good, tf.int32), output_type=tf.int32)
  return tf.where(tf.reduce_any(good), candidates[first], tf.cast(tf.gather(boxes, k), tf.int32))


def proposal_window(image: tf.Tensor, label: tf.Tensor, boxes: tf.Tensor, k: tf.Tensor,
                    seed: tf.Tensor, context: float, min_iou: float, size: Sequence[int],
                    image_fill=0., ignore_label: int = IGNORE_LABEL
                    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Stage 2: a sampled proposal around object k (0-based), enlarged, every class kept, at `size`.

  Returns:
    image float32 (h, w, 3), label int32 (h, w), and the proposal box int32 (4,) (before the
    enlargement by `context`).
  """
  proposal = sample_proposal(boxes, k, tf.shape(label), seed, min_iou)
  window = enlarge_box(proposal, context, square=False)
  image, label = crop_window(image, tf.cast(label, tf.int32), window, image_fill, ignore_label)
  image, label = _resized(image, label, size)
  return image, label, proposal


def file_proposal_windows(proposals: np.ndarray, image_hw: tuple[int, int],
                          object_boxes: np.ndarray, object_classes: np.ndarray, min_iou: float,
                          context: float) -> tuple[np.ndarray, np.ndarray]:
  """Stage 2 from a proposals file (config.data.proposals): one image's training windows.

  Args:
    proposals: float (N, 4+) rows (x0, y0, x1, y1[, score]), x1/y1 inclusive, in image
      coordinates (jaxseg.inference.proposals' convention: what `read_proposals` returns).
    image_hw: the image's (height, width); boxes are clipped to it.
    object_boxes: int (M, 4) ground-truth boxes (y0, x0, y1, x1), end exclusive.
    object_classes: (M,) their classes.
    min_iou: a proposal is kept when its IoU with some object's box is >= this.
    context: each kept proposal is enlarged this much about its centre (not squared).

  Returns:
    windows int32 (n, 4) (y0, x0, y1, x1) in file order, and int64 (n,) the class of the object
    each overlaps most (what class balancing counts).
  """
  height, width = (int(v) for v in image_hw)
  rows = np.asarray(proposals, np.float64)
  if rows.ndim != 2 or rows.shape[1] < 4:
    raise ValueError(f'proposals of shape {rows.shape}: expected rows (x0, y0, x1, y1[, score]).')
  y0 = np.clip(np.floor(rows[:, 1]), 0, height - 1)
  x0 = np.clip(np.floor(rows[:, 0]), 0, width - 1)
  y1 = np.clip(np.floor(rows[:, 3]) + 1, 1, height)
  x1 = np.clip(np.floor(rows[:, 2]) + 1, 1, width)
  boxes = np.stack([y0, x0, y1, x1], 1)
  boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
  gt = np.asarray(object_boxes, np.float64).reshape(-1, 4)
  if not len(boxes) or not len(gt):
    return np.zeros((0, 4), np.int32), np.zeros((0,), np.int64)
  inter_hw = np.maximum(np.minimum(boxes[:, None, 2:], gt[None, :, 2:])
                        - np.maximum(boxes[:, None, :2], gt[None, :, :2]), 0)
  inter = inter_hw[..., 0] * inter_hw[..., 1]
  area = lambda b: np.maximum(b[..., 2] - b[..., 0], 0) * np.maximum(b[..., 3] - b[..., 1], 0)
  iou = inter / np.maximum(area(boxes)[:, None] + area(gt)[None] - inter, 1e-12)
  keep = iou.max(1) >= min_iou
  kept = boxes[keep].astype(np.int64)
  classes = np.asarray(object_classes, np.int64).reshape(-1)[iou[keep].argmax(1)]
  sides = np.maximum(np.round((kept[:, 2:] - kept[:, :2]) * float(context)), 1).astype(np.int64)
  top_left = np.floor_divide(kept[:, :2] + kept[:, 2:] - sides, 2)
  return np.concatenate([top_left, top_left + sides], 1).astype(np.int32), classes


def file_window(image: tf.Tensor, label: tf.Tensor, window: tf.Tensor, size: Sequence[int],
                image_fill=0., ignore_label: int = IGNORE_LABEL) -> tuple[tf.Tensor, tf.Tensor]:
  """Stage 2 from a file: the (already enlarged) `window`, every class kept, at `size`."""
  image, label = crop_window(image, tf.cast(label, tf.int32), window, image_fill, ignore_label)
  return _resized(image, label, size)


# ------------------------------------------------------------------------------- epoch plan
def repeat_factors(class_counts: Sequence[int]) -> np.ndarray:
  """Per class, how many times each of its windows is used per epoch: round(n_max / n_c), >= 1.

  Classes without windows get 1 (nothing to repeat).
  """
  counts = np.asarray(class_counts, np.float64)
  if counts.size == 0 or counts.max() <= 0:
    return np.ones(counts.shape, np.int64)
  return np.where(counts > 0, np.maximum(np.round(counts.max() / np.maximum(counts, 1)), 1),
                  1).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class WindowPlan:
  """One epoch's windows of a sequence of examples, in example order.

  Example i has `count[i]` windows, numbered 0..count[i]-1 (its slots); its objects are
  `object_start[i]` .. + num_objects[i] - 1 of the flat object arrays, and slot s belongs to its
  object k = the first with s < `window_ends[object_start[i] + k]` (cumulative within the
  example).
  """
  count: np.ndarray  # (examples,) int64 windows per example.
  object_start: np.ndarray  # (examples,) int64 index of the example's first object.
  num_objects: np.ndarray  # (examples,) int64.
  window_ends: np.ndarray  # (objects,) int64 cumulative windows within the example.
  class_counts: np.ndarray  # (num_classes,) windows per class before balancing (the whole input).
  repeats: np.ndarray  # (num_classes,) the repeat factor of each class.

  @property
  def total(self) -> int:
    return int(self.count.sum())

  def slice(self, start: int, size: int) -> 'WindowPlan':
    """The plan of examples start..start+size-1 (the same object arrays and class statistics)."""
    return dataclasses.replace(self, count=self.count[start:start + size],
                               object_start=self.object_start[start:start + size],
                               num_objects=self.num_objects[start:start + size])

  def window_objects(self, i: int) -> np.ndarray:
    """The object (0-based, within example i) of each of example i's windows."""
    start, n = int(self.object_start[i]), int(self.num_objects[i])
    ends = self.window_ends[start:start + n]
    return np.searchsorted(ends, np.arange(self.count[i]), side='right')


def plan_windows(object_classes: Sequence[np.ndarray], num_classes: int, per_object: int,
                 balance: bool, field: str = 'objects') -> WindowPlan:
  """The epoch's windows: `per_object` per object, times its class's repeat factor if `balance`.

  Args:
    object_classes: per example, the class of each of its objects (entry k = object k).
    num_classes: classes of the dataset (config.data.num_classes).
    per_object: windows per object (1 for stage 1, PROPOSALS_PER_OBJECT for stage 2).
    balance: repeat windows of rare classes (`repeat_factors`).
    field: what to name in the error for a class id out of range.
  """
  classes = [np.asarray(c, np.int64).reshape(-1) for c in object_classes]
  flat = np.concatenate(classes) if classes else np.zeros((0,), np.int64)
  if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
    bad = int(flat.max() if flat.max() >= num_classes else flat.min())
    raise ValueError(f'{field}: object class {bad} is outside [0, config.data.num_classes='
                     f'{num_classes}); set config.data.num_classes to the dataset\'s class count.')
  class_counts = np.bincount(flat, minlength=num_classes) * per_object
  repeats = repeat_factors(class_counts) if balance else np.ones(num_classes, np.int64)
  per_window = repeats[flat] * per_object
  num_objects = np.asarray([len(c) for c in classes], np.int64)
  object_start = np.concatenate([[0], np.cumsum(num_objects)[:-1]]).astype(np.int64)
  window_ends = np.zeros(flat.shape, np.int64)
  count = np.zeros(len(classes), np.int64)
  for i, (start, n) in enumerate(zip(object_start, num_objects)):
    window_ends[start:start + n] = np.cumsum(per_window[start:start + n])
    count[i] = window_ends[start + n - 1] if n else 0
  return WindowPlan(count, object_start, num_objects, window_ends, class_counts, repeats)


def object_of_slot(window_ends: tf.Tensor, object_start: tf.Tensor, num_objects: tf.Tensor,
                   slot: tf.Tensor) -> tf.Tensor:
  """TF version of `WindowPlan.window_objects` for one slot (plan arrays as tensors)."""
  ends = window_ends[object_start:object_start + num_objects]
  return tf.cast(tf.searchsorted(ends, tf.reshape(tf.cast(slot, ends.dtype), [1]),
                                 side='right')[0], tf.int32)
