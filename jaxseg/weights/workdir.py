"""A trained jaxseg workdir (or one of its checkpoints) as a weights source.

This is FCN's staged training: the reference initialises FCN-16s from a trained FCN-32s and
FCN-8s from FCN-16s (voc-fcn16s/solve.py: `solver.net.copy_from('../voc-fcn32s/...caffemodel')`),
copying every layer whose name the finer net shares and leaving the rest (score_pool4, the new
upsampling) at their initialisation. Pointing `config.model.init_from` at a workdir does the same
with jaxseg checkpoints:

  DIR                     the workdir's best checkpoint (highest eval mean IoU, else the latest)
  DIR/checkpoints/STEP    that step

The weights carry the workdir's model name as their arch, its input normalisation, and the
model fields that change what the weights compute (FCN geometry and skip scales, PSPNet backbone).
"""
from __future__ import annotations

import os
from typing import Any

import flax
import jax
import numpy as np
from flax import traverse_util

from jaxseg import storage
from jaxseg.weights import convert

CHECKPOINTS = 'checkpoints'


def is_checkpoint_path(path: str | os.PathLike) -> bool:
  """True for a folder that is a jaxseg workdir or a checkpoint step folder of one."""
  path = storage.resolve(path)
  if not path.is_dir():
    return False
  return (path / CHECKPOINTS).is_dir() or (
      path.name.isdigit() and path.parent.name == CHECKPOINTS)


def _split(path: str | os.PathLike) -> tuple[Any, str | int]:
  """(workdir, 'best' or a step) for DIR or DIR/checkpoints/STEP."""
  path = storage.resolve(path)
  if path.name.isdigit() and path.parent.name == CHECKPOINTS:
    return path.parent.parent, int(path.name)
  return path, 'best'


def normalization_of(method: str) -> dict[str, Any]:
  """The recorded-weights description of a config.data.normalization value."""
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TF)
  if method == 'imagenet':
    return dict(convert.TORCHVISION_NORMALIZATION)
  return {'space': 'BGR', 'mean': list(pipeline.CAFFE_BGR_MEAN), 'std': [1.0, 1.0, 1.0],
          'scale': 255.0}


def model_fields_of(config: Any) -> dict[str, Any]:
  """The model fields of a config that weights trained under it depend on."""
  name = config.model.name
  if name.startswith('fcn'):
    return {'geometry': config.model.geometry,
            'skip_scales': tuple(float(v) for v in config.model.skip_scales)}
  if name.startswith('pspnet'):
    return {'backbone': config.model.backbone}
  return {}


def read_workdir_weights(path: str | os.PathLike) -> convert.PretrainedWeights:
  """Parameters and BatchNorm statistics of a workdir's checkpoint (no optimizer state)."""
  from jaxseg import checkpoint, parallel  # pylint: disable=g-import-not-at-top
  workdir, which = _split(path)
  mesh = parallel.create_mesh(jax.local_devices()[:1])
  try:
    variables, config, step = checkpoint.load_for_inference(workdir, mesh, which)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'config.model.init_from={path}: {e}') from None
  flat = traverse_util.flatten_dict(flax.core.unfreeze(jax.device_get(variables)), sep='/')
  arrays = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  return convert.PretrainedWeights(
      arch=config.model.name, arrays=arrays,
      sources={k: f'step {step}: {k}' for k in arrays}, skipped=(),
      normalization=normalization_of(config.data.normalization), path=str(path),
      model_fields=model_fields_of(config))
