"""A trained model, ready to predict: config, model, variables, step and mesh.

`eval`, `predict`, `demo`, `report` and the notebooks restore a workdir's checkpoint through
`restore`; `restore_weights` builds a recipe's model from a released weights file (FCN's and
PSPNet's Caffe models, a semseg checkpoint, a converted .npz) with no training.
"""
from collections.abc import Iterable, Sequence
import dataclasses
import functools
import os
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxseg import config_loading
from jaxseg import storage


@dataclasses.dataclass
class Restored:
  """A workdir's model at one checkpoint."""
  config: ml_collections.ConfigDict
  model: Any
  variables: Any
  step: int
  mesh: Mesh

  @functools.cached_property
  def predictor(self) -> Any:
    """The jaxseg.inference.Predictor of this model (uint8 (H, W, 3) -> uint8 (H, W) ids)."""
    from jaxseg.inference import predictor  # pylint: disable=g-import-not-at-top
    return predictor.predictor_from_config(self.config, self.model, self.variables)

  def predict(self, images: Iterable[Any]) -> list[np.ndarray]:
    """Label maps of uint8 RGB images."""
    return [self.predictor(np.asarray(image)) for image in images]


def restore(workdir: str | os.PathLike, which: str | int = 'best',
            overrides: Sequence[tuple[str, str]] = ()) -> Restored:
  """The model of a workdir's checkpoint ('best', 'latest' or a step) with its saved config.

  `overrides` are (field, value) pairs applied to the saved config (e.g. eval settings). 'best'
  and 'latest' skip damaged checkpoints with a warning naming the damage (the next best / newest
  readable one is used); a damaged step given by number raises
  jaxseg.checkpoint.CheckpointDamagedError naming it. Needs read access only.
  """
  from jaxseg import checkpoint, parallel, train  # pylint: disable=g-import-not-at-top
  if not storage.resolve(workdir).is_dir():
    raise FileNotFoundError(f'workdir {workdir} does not exist')
  mesh = parallel.create_mesh()
  variables, saved_config, step = checkpoint.load_for_inference(workdir, mesh, which)
  config = config_loading.from_dict(saved_config.to_dict())
  config = config_loading.apply_overrides(config, overrides)
  model = train.build_model(config)
  return Restored(config, model, variables, step, mesh)


def restore_weights(config_path: str | os.PathLike, weights_path: str | os.PathLike,
                    overrides: Sequence[tuple[str, str]] = ()) -> Restored:
  """The model of recipe `config_path` (plus overrides) with every variable from `weights_path`.

  The file must hold a whole trained model (`load_pretrained(whole=True)`); step is 0.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxseg import parallel, train, weights  # pylint: disable=g-import-not-at-top
  config = config_loading.apply_overrides(config_loading.load_config(config_path), overrides)
  model = train.build_model(config)
  height, width = config.data.crop_size
  init = model.clone(sync_bn_axis=None).init
  variables = jax.jit(lambda: init({'params': jax.random.PRNGKey(0)},
                                   jnp.zeros((1, height, width, 3)), train=False))()
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  variables, _ = weights.load_pretrained(
      variables, weights_path, config.model.name, backbone=config.model.backbone,
      normalization=config.data.normalization,
      model_fields=weights.model_fields_of(config), whole=True)
  mesh = parallel.create_mesh()
  variables = jax.device_put(jax.device_get(variables), parallel.replicated(mesh))
  return Restored(config, model, variables, 0, mesh)
