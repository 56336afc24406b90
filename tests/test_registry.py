"""jaxseg.models registry: every name builds and runs (tiny), bad names/overrides fail clearly."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import models
from jaxseg.models import deconvnet, fcn, pspnet

# Tiny variant and input size per model (DeconvNet needs ceil-mode pool5 >= 7x7).
TINY = {
    'fcn32s': ({'width': 1 / 16}, (35, 46)),
    'fcn16s': ({'width': 1 / 16}, (35, 46)),
    'fcn8s': ({'width': 1 / 16, 'geometry': 'caffe'}, (35, 46)),
    'deconvnet': ({'width': 1 / 16}, (193, 201)),
    'pspnet50': ({'width': 1 / 16, 'stage_sizes': (1, 1, 1, 1)}, (33, 45)),
    'pspnet101': ({'width': 1 / 16, 'stage_sizes': (1, 1, 1, 1)}, (33, 45)),
}


def _numpy_variables(model, x):
  """Random variables with the model's tree, without compiling its (slow) random init."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)

  def fill(path, leaf):
    if path[-1].key == 'kernel':
      return jnp.asarray(rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape),
                         jnp.float32)
    base = {'scale': 1.0, 'var': 1.0}.get(path[-1].key, 0.0)
    return jnp.full(leaf.shape, base, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_names_and_prefixes():
  assert models.MODEL_NAMES == ('fcn32s', 'fcn16s', 'fcn8s', 'deconvnet', 'pspnet50', 'pspnet101')
  assert set(models.BACKBONE_PREFIXES) == set(models.MODEL_NAMES) == set(TINY)
  assert models.BACKBONE_PREFIXES['pspnet50'] == ('backbone',)
  assert models.BACKBONE_PREFIXES['fcn8s'] == ('backbone', 'fc6', 'fc7')


def test_names_pick_the_class_and_its_fixed_fields():
  assert isinstance(models.create_model('fcn16s', 21), fcn.FCN)
  assert models.create_model('fcn16s', 21).variant == '16s'
  assert models.create_model('fcn32s', 21).variant == '32s'
  assert isinstance(models.create_model('deconvnet', 21), deconvnet.DeconvNet)
  model = models.create_model('pspnet101', 21, width=0.5)
  assert isinstance(model, pspnet.PSPNet) and model.depth == 101 and model.width == 0.5


@pytest.mark.parametrize('name', list(TINY))
def test_every_model_builds_and_runs_tiny(name):
  overrides, size = TINY[name]
  model = models.create_model(name, 5, **overrides)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, *size, 3)), jnp.float32)
  variables = _numpy_variables(model, x)
  for prefix in models.BACKBONE_PREFIXES[name]:
    assert prefix in variables['params'], prefix
  logits = jax.jit(model.apply)(variables, x)
  assert logits.shape == (1, *size, 5) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_config_style_values_are_accepted():
  model = models.create_model('pspnet50', 3, dtype='bfloat16', dropout_rate=-1.0)
  assert jnp.dtype(model.dtype) == jnp.bfloat16 and model.dropout_rate is None
  assert models.create_model('fcn8s', 3, dropout_rate=0.2).dropout_rate == 0.2
  with pytest.raises(ValueError, match="Unknown dtype 'float13'"):
    models.create_model('fcn8s', 3, dtype='float13')


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError, match="Unknown model 'pspnet34'") as err:
    models.create_model('pspnet34', 21)
  for name in models.MODEL_NAMES:
    assert name in str(err.value)
  with pytest.raises(ValueError, match='known models: fcn32s, fcn16s'):
    models.model_input_constraint('unet')


def test_unknown_override_is_named_with_the_accepted_ones():
  with pytest.raises(ValueError, match=re.escape("Unknown override 'widht' for model 'fcn8s'")) \
      as err:
    models.create_model('fcn8s', 21, widht=0.5)
  assert 'width' in str(err.value) and 'geometry' in str(err.value)
  with pytest.raises(ValueError, match="Unknown override 'geometry' for model 'pspnet50'"):
    models.create_model('pspnet50', 21, geometry='caffe')


def test_fixed_fields_cannot_be_overridden():
  with pytest.raises(ValueError, match="'fcn8s' fixes variant='8s'"):
    models.create_model('fcn8s', 21, variant='16s')
  with pytest.raises(ValueError, match="'pspnet50' fixes depth=50"):
    models.create_model('pspnet50', 21, depth=101)


@pytest.mark.parametrize('num_classes', [0, 2.5, '21'])
def test_bad_num_classes(num_classes):
  with pytest.raises(ValueError, match='num_classes must be a positive int'):
    models.create_model('fcn8s', num_classes)


def test_input_constraints_agree_with_the_models():
  assert str(deconvnet.min_input_size()) in models.model_input_constraint('deconvnet')
  for name in models.MODEL_NAMES:
    assert models.model_input_constraint(name)
