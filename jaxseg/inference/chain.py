"""From pixels to a prediction: the eval mode, the ensemble partner and the dense CRF, in order.

Every consumer (evaluation, the Predictor, the preflight check) builds one `Chain` from the
config and calls it inside its compiled step:

  1. the model's scores by config.eval.mode (jaxseg.inference.modes; 'proposals' is DeconvNet's
     instance-wise inference, jaxseg.inference.instancewise, over the windows the host selected
     from each image's object proposals, jaxseg.inference.proposals);
  2. with config.eval.ensemble_with, a second model's scores by its own config's eval mode and
     input normalisation, combined by config.eval.ensemble_rule:
       'product'  DeconvNet's code (inference/generate_EDeconvNet_CRF_results.m): the first
                  model's scores x max(0, the second's), elementwise, on the modes' outputs as
                  they are (raw scores for whole/slide/proposals: DeconvNet's max-aggregated
                  seg-scores times FCN-8s's ReLU'd score layer);
       'mean'     the paper (sec. 4.4): the mean of the two class-probability maps;
  3. with config.eval.crf, the dense CRF (jaxseg.ops.crf, config.crf) on the class probabilities
     (softmax of raw scores; probability-valued modes as they are), with the RGB image as the
     bilateral kernel's colours: the original's unary -log(softmax(scores)).
The argmax of the result is the prediction. Pixels are uint8 RGB on a canvas (each image at the
top left, its true size in `sizes`); each model normalises them itself.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.inference import modes

PROPOSALS = 'proposals'
ALL_MODES = modes.MODES + (PROPOSALS,)
AGGREGATES = ('max', 'mean')
ENSEMBLE_RULES = ('product', 'mean')
# Modes whose scores are class probabilities (the others return raw scores, i.e. logits).
_PROBABILITY_MODES = ('multiscale',)


@dataclasses.dataclass(frozen=True)
class ModeSpec:
  """One model's inference settings (hashable: part of the compiled step's cache key)."""
  mode: str
  normalization: str
  crop: tuple[int, int] = (473, 473)
  stride: tuple[int, int] = (316, 316)
  scales: tuple[float, ...] = (1.0,)
  flip: bool = False
  base_size: int = 0
  proposal_size: tuple[int, int] = (224, 224)
  aggregate: str = 'max'
  window_batch: int = 8

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> ModeSpec:
    e = config.eval
    if e.mode not in ALL_MODES:
      raise ValueError(f'config.eval.mode={e.mode!r} is unknown; use one of {ALL_MODES}.')
    if e.aggregate not in AGGREGATES:
      raise ValueError(f'config.eval.aggregate={e.aggregate!r} is unknown; use one of '
                       f'{AGGREGATES}.')
    size = tuple(int(v) for v in e.proposal_size)
    if e.mode == PROPOSALS and (len(size) != 2 or min(size) <= 0):
      raise ValueError(f'config.eval.proposal_size={tuple(e.proposal_size)} must be two positive '
                       'ints (H, W).')
    return cls(e.mode, config.data.normalization, tuple(int(v) for v in e.crop_size),
               tuple(int(v) for v in e.stride), tuple(float(s) for s in e.scales),
               bool(e.flip), int(e.base_size), size, e.aggregate)

  @property
  def gives_probabilities(self) -> bool:
    return self.mode in _PROBABILITY_MODES or (self.flip and self.mode != PROPOSALS)

  def normalize(self, pixels: jax.Array) -> jax.Array:
    """RGB pixels (uint8 or 0-255 float) -> this model's input."""
    from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TF)
    return pipeline.normalize(pixels, self.normalization)

  def pixels(self, images: jax.Array) -> jax.Array:
    """This model's input -> float RGB pixels 0-255 (the inverse of `normalize`)."""
    from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TF)
    x = jnp.asarray(images, jnp.float32)
    if self.normalization == 'imagenet':
      x = x * jnp.asarray([255. * v for v in pipeline.IMAGENET_STD], jnp.float32)
    else:
      x = x[..., ::-1]
    return x + jnp.asarray(pipeline.mean_pixel(self.normalization), jnp.float32)

  def scores(self, apply_fn: modes.ApplyFn, images: jax.Array, sizes: jax.Array,
             windows: jax.Array, valid: jax.Array) -> jax.Array:
    """(B, H, W, C) scores of normalised canvases (raw scores or, see gives_probabilities,
    probabilities)."""
    if self.mode == PROPOSALS:
      from jaxseg.inference import instancewise  # pylint: disable=g-import-not-at-top
      # The original pads the image with black pixels (padarray before the mean subtraction).
      outside = self.normalize(jnp.zeros((3,), jnp.uint8))
      return instancewise.instancewise(apply_fn, images, sizes, windows, valid,
                                       window_size=self.proposal_size, aggregate=self.aggregate,
                                       batch=self.window_batch, outside=outside)
    infer = modes.inference_fn(apply_fn, self.mode, self.crop, self.stride, self.scales,
                               self.flip, self.base_size)
    return infer(images, sizes)


def probabilities(scores: jax.Array, are_probabilities: bool) -> jax.Array:
  return scores if are_probabilities else jax.nn.softmax(scores.astype(jnp.float32), axis=-1)


@dataclasses.dataclass(frozen=True)
class Chain:
  """Mode -> ensemble -> CRF (see the module docstring); hashable."""
  primary: ModeSpec
  partner: ModeSpec | None = None
  rule: str = 'product'
  crf: Any = None  # jaxseg.ops.crf.CrfParams, or None for no CRF.

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  partner_config: ml_collections.ConfigDict | None = None) -> Chain:
    rule = config.eval.ensemble_rule
    if rule not in ENSEMBLE_RULES:
      raise ValueError(f'config.eval.ensemble_rule={rule!r} is unknown; use one of '
                       f'{ENSEMBLE_RULES}.')
    partner = None
    if partner_config is not None:
      partner = ModeSpec.from_config(partner_config)
      if partner.mode == PROPOSALS:
        raise ValueError(f'the ensemble partner {config.eval.ensemble_with} evaluates with '
                         "eval.mode='proposals'; the partner must be a whole-image model "
                         "(whole, slide or multiscale), e.g. FCN-8s.")
    params = None
    if config.eval.crf:
      from jaxseg.ops import crf  # pylint: disable=g-import-not-at-top
      params = crf.CrfParams.from_config(config)
    return cls(ModeSpec.from_config(config), partner, rule, params)

  @property
  def tag(self) -> str:
    """'' for a plain mode, else e.g. 'proposals+ensemble+crf' (names results files)."""
    parts = [PROPOSALS] * self.needs_windows + ['ensemble'] * (self.partner is not None)
    return '+'.join(parts + ['crf'] * (self.crf is not None))

  @property
  def needs_windows(self) -> bool:
    return self.primary.mode == PROPOSALS

  @property
  def gives_probabilities(self) -> bool:
    """Whether __call__ returns class probabilities (else raw scores: softmax them)."""
    if self.crf is not None:
      return True  # Mean-field marginals.
    if self.partner is not None:
      return self.rule == 'mean'  # 'product': scores x max(0, partner scores).
    return self.primary.gives_probabilities

  def __call__(self, model: Any, variables: Any, pixels: jax.Array, sizes: jax.Array,
               windows: jax.Array, valid: jax.Array, partner_model: Any = None,
               partner_variables: Any = None) -> jax.Array:
    """(B, H, W, C) whose argmax is the prediction.

    pixels: uint8 RGB canvases (B, H, W, 3), or float canvases already normalised as the first
    model's input (as tests and callers holding normalised images pass them).
    """
    sizes = jnp.asarray(sizes, jnp.int32)
    if pixels.dtype == jnp.uint8:
      images = self.primary.normalize(pixels)
    else:
      images, pixels = pixels, self.primary.pixels(pixels)
    out = self.primary.scores(modes.model_apply_fn(model, variables), images, sizes, windows,
                              valid)
    are_probs = self.primary.gives_probabilities
    if self.partner is not None:
      other = self.partner.scores(modes.model_apply_fn(partner_model, partner_variables),
                                  self.partner.normalize(pixels), sizes, windows, valid)
      if other.shape != out.shape:
        raise ValueError(f'the ensemble partner predicts {other.shape[-1]} classes at '
                         f'{other.shape[1:3]}; this model {out.shape[-1]} at {out.shape[1:3]}')
      if self.rule == 'product':
        out = out * jnp.maximum(other, 0.0)
      else:
        out = 0.5 * (probabilities(out, are_probs)
                     + probabilities(other, self.partner.gives_probabilities))
        are_probs = True
    if self.crf is not None:
      from jaxseg.ops import crf  # pylint: disable=g-import-not-at-top
      rgb = jnp.clip(jnp.round(pixels.astype(jnp.float32)), 0, 255).astype(jnp.uint8)
      out = crf.dense_crf(probabilities(out, are_probs), rgb, sizes, self.crf)
    return out


# ---------------------------------------------------------------- the ensemble partner
@dataclasses.dataclass
class Partner:
  """The second model of an ensemble: its config, model and variables."""
  config: ml_collections.ConfigDict
  model: Any
  variables: Any


def load_partner(config: ml_collections.ConfigDict) -> Partner | None:
  """config.eval.ensemble_with as a Partner: a workdir (its best checkpoint) or a weights file
  with config.eval.ensemble_config, its recipe; None when no ensemble is configured."""
  source = str(config.eval.ensemble_with)
  if not source:
    return None
  from jaxseg import storage  # pylint: disable=g-import-not-at-top
  from jaxseg.inference.restore import restore, restore_weights  # pylint: disable=g-import-not-at-top
  recipe = str(config.eval.ensemble_config)
  if storage.resolve(source).is_dir() and not recipe:
    restored = restore(source, 'best')
  elif recipe:
    restored = restore_weights(recipe, source)
  else:
    raise ValueError(f'config.eval.ensemble_with={source!r} is not a workdir; for a weights file '
                     'also set config.eval.ensemble_config to its recipe (e.g. '
                     'experiments/fcn8s_voc.py).')
  classes = int(restored.config.data.num_classes)
  if classes != int(config.data.num_classes):
    raise ValueError(f'config.eval.ensemble_with={source!r} predicts {classes} classes; this '
                     f'model predicts config.data.num_classes={config.data.num_classes}.')
  return Partner(restored.config, restored.model, jax.device_get(restored.variables))


# ---------------------------------------------------------------- proposal windows (host side)
class WindowSource:
  """Each image's proposal windows for eval.mode='proposals', selected as the original.

  config.eval.proposals names a proposals file or folder (jaxseg.inference.proposals) keyed by
  image id, or 'selective_search' (computed from the image with OpenCV contrib). Each box is
  enlarged by config.eval.proposal_context; at most config.eval.max_proposals windows per image
  (score order) of at least config.eval.min_proposal_size on both sides
  (generate_EDeconvNet_CRF_results.m: 50 and 112).
  """

  def __init__(self, config: ml_collections.ConfigDict):
    from jaxseg.inference import proposals  # pylint: disable=g-import-not-at-top
    self._proposals = proposals
    source = str(config.eval.proposals)
    if not source:
      raise ValueError("config.eval.mode='proposals' needs config.eval.proposals: a proposals "
                       "file or folder (see jaxseg.inference.proposals) or 'selective_search'.")
    self.count = int(config.eval.max_proposals)
    self.min_size = int(config.eval.min_proposal_size)
    if self.count <= 0:
      raise ValueError(f'config.eval.max_proposals={self.count} must be positive.')
    self.context = float(config.eval.proposal_context)
    if self.context <= 0:
      raise ValueError(f'config.eval.proposal_context={self.context} must be positive.')
    self.compute = source == 'selective_search'
    self._reader = None if self.compute else proposals.read_proposals(source)

  def windows(self, image_id: str, image: np.ndarray | None, height: int, width: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """(count, 4) int32 windows (y0, x0, y1, x1) and (count,) valid for one image."""
    if self.compute:
      boxes = self._proposals.compute_proposals(np.asarray(image)[:height, :width])
    else:
      boxes = self._reader.boxes(image_id, (height, width))
    return self._proposals.select_windows(boxes, (height, width), self.count, self.min_size,
                                          self.context)

  def batch(self, ids: Sequence[Any], images: np.ndarray, heights: np.ndarray,
            widths: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windows (n, count, 4) and valid (n, count) of a batch's rows (padding rows: none)."""
    out = np.zeros((len(ids), self.count, 4), np.int32)
    ok = np.zeros((len(ids), self.count), bool)
    for row, image_id in enumerate(ids):
      if not valid[row]:
        continue
      name = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
      out[row], ok[row] = self.windows(name, images[row], int(heights[row]), int(widths[row]))
    return out, ok


def no_windows(batch: int) -> tuple[np.ndarray, np.ndarray]:
  """The (unused) window arguments of chains that need none."""
  return np.zeros((batch, 1, 4), np.int32), np.zeros((batch, 1), bool)
