"""Turning a trained model into predictions: the one home `eval`, `predict`, `demo`, `report` and
the notebooks share.

  modes       whole / sliding-window / multi-scale + flip inference of apply_fn(images) -> logits
  evaluation  `evaluate`: a mode over a dataset split, one confusion matrix, results files
  predictor   `Predictor`: uint8 RGB images of any size -> label maps (bucketed compiles)
  images      reading any image file as RGB, listing inputs, palette label PNGs
  files       `predict_files` (label + overlay PNGs for image files), `write_examples`
  restore     `restore`: a workdir's checkpoint as (config, model, variables, step, mesh);
              `restore_weights`: a recipe's model with a released weights file
"""
from jaxseg.inference.evaluation import evaluate, results_path, write_results
from jaxseg.inference.files import predict_files, write_examples
from jaxseg.inference.images import IMAGE_SUFFIXES, expand_inputs, load_rgb, save_label_png
from jaxseg.inference.modes import (MODES, ApplyFn, config_inference_fn, inference_fn,
                                    model_apply_fn, multiscale, slide, whole, window_starts)
from jaxseg.inference.predictor import Predictor, padded_size, predictor_from_config
from jaxseg.inference.restore import Restored, restore, restore_weights

__all__ = [
    'ApplyFn', 'IMAGE_SUFFIXES', 'MODES', 'Predictor', 'Restored', 'config_inference_fn',
    'evaluate', 'expand_inputs', 'inference_fn', 'load_rgb', 'model_apply_fn', 'multiscale',
    'padded_size', 'predict_files', 'predictor_from_config', 'restore', 'restore_weights',
    'results_path',
    'save_label_png', 'slide', 'whole', 'window_starts', 'write_examples', 'write_results',
]
