"""Every experiment config builds, is locked, and command-line overrides are typed and checked."""
import pathlib

import ml_collections
import pytest

from jaxseg import config_loading

EXPERIMENTS = config_loading.experiments_dir()
RECIPES = sorted(p.name for p in EXPERIMENTS.glob('*.py') if not p.name.startswith('_'))
MODEL_NAMES = ('fcn32s', 'fcn16s', 'fcn8s', 'deconvnet', 'pspnet50', 'pspnet101')


def test_recipes_found():
  assert 'default.py' in RECIPES and 'demo.py' in RECIPES and len(RECIPES) >= 8


@pytest.mark.parametrize('name', RECIPES)
def test_recipe_builds_locked_with_default_fields(name):
  config = config_loading.load_config(EXPERIMENTS / name)
  default = config_loading.load_config(EXPERIMENTS / 'default.py')
  assert config_loading.field_names(config) == config_loading.field_names(default)
  for field in config_loading.field_names(default):  # Types of default.py are kept.
    value, base = (config_loading.get_field(c, field) for c in (config, default))
    assert isinstance(value, type(base)) or (isinstance(base, float) and
                                             isinstance(value, int)), field
  assert config.model.name in MODEL_NAMES
  assert config.eval.mode in ('whole', 'slide', 'multiscale', 'proposals')
  assert len(config.data.crop_size) == 2 and len(config.data.eval_size) == 2
  if name != 'default.py':  # Recipes open with a docstring giving the command.
    text = (EXPERIMENTS / name).read_text()
    assert text.startswith('"""') and 'jaxseg ' in text and 'ardware' in text
  with pytest.raises(AttributeError):
    config.model.widht = 0.5  # Locked: a typo in a recipe fails too.


@pytest.mark.parametrize('name', RECIPES)
def test_recipe_matches_dataset_and_model_registry(name):
  from jaxseg import models
  from jaxseg.data import classes
  config = config_loading.load_config(EXPERIMENTS / name)
  spec = classes.spec_for_data(config.data)
  assert config.data.num_classes == spec.num_classes
  assert config.model.name in models.MODEL_NAMES
  from jaxseg import train
  model = train.build_model(config)  # Every model field of the recipe is accepted.
  assert model.num_classes == spec.num_classes


def test_overrides_parse_with_field_types():
  config = config_loading.load_config(EXPERIMENTS / 'demo.py')
  rest, overrides = config_loading.split_overrides(
      ['train', '--workdir', 'w', '--config.train.batch_size=8', '--config.data.crop_size',
       '64,48', '--config.eval.scales=(0.5, 1)', '--config.model.sync_bn=false',
       '--config.optim.learning_rate=1e-3', '--config.model.name=pspnet50',
       '--config.loss.class_weights=1,2', '--config.model.width=1'])
  assert rest == ['train', '--workdir', 'w']
  config_loading.apply_overrides(config, overrides)
  assert config.train.batch_size == 8
  assert config.data.crop_size == (64, 48)
  assert config.eval.scales == (0.5, 1.0)
  assert config.model.sync_bn is False
  assert config.optim.learning_rate == 1e-3
  assert config.model.name == 'pspnet50'
  assert config.loss.class_weights == (1.0, 2.0)
  assert config.model.width == 1.0 and isinstance(config.model.width, float)


def test_typo_override_fails_with_field_name_and_suggestion():
  config = config_loading.load_config(EXPERIMENTS / 'demo.py')
  with pytest.raises(ValueError, match=r"unknown config field 'train\.batch_sise'.*"
                     r"did you mean 'train\.batch_size'"):
    config_loading.apply_overrides(config, [('train.batch_sise', '8')])
  with pytest.raises(ValueError, match=r"'trian\.num_steps'.*'train\.num_steps'"):
    config_loading.apply_overrides(config, [('trian.num_steps', '8')])
  with pytest.raises(ValueError, match="config field 'train' is a group"):
    config_loading.apply_overrides(config, [('train', '8')])
  with pytest.raises(ValueError, match=r"cannot parse 'eight' for config field train\.batch_size"):
    config_loading.apply_overrides(config, [('train.batch_size', 'eight')])
  with pytest.raises(ValueError, match='expected true or false'):
    config_loading.apply_overrides(config, [('data.hflip', 'maybe')])
  with pytest.raises(ValueError, match='has no value'):
    config_loading.split_overrides(['--config.train.batch_size'])


def test_missing_or_bad_config_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="config file '.*nope.py' not found"):
    config_loading.load_config(tmp_path / 'nope.py')
  bad = tmp_path / 'bad.py'
  bad.write_text('x = 1\n')
  with pytest.raises(ValueError, match='defines no get_config'):
    config_loading.load_config(bad)
  typo = tmp_path / 'typo.py'
  typo.write_text('import pathlib\nfrom jaxseg.config_loading import load_config\n'
                  f'def get_config():\n  c = load_config({str(EXPERIMENTS / "default.py")!r})\n'
                  '  c.train.batch_sise = 3\n  return c\n')
  with pytest.raises(AttributeError, match='batch_sise'):
    config_loading.load_config(typo)


def test_json_round_trip_restores_tuples(tmp_path):
  config = config_loading.load_config(EXPERIMENTS / 'pspnet50_voc.py')
  path = tmp_path / 'config.json'
  path.write_text(config_loading.to_json(config))
  back = config_loading.from_json_file(path)
  assert back.eval.scales == config.eval.scales and isinstance(back.eval.scales, tuple)
  assert back.to_dict() == config.to_dict()
  with pytest.raises(AttributeError):
    back.model.widht = 1.0
  with pytest.raises(FileNotFoundError, match='jaxseg workdir'):
    config_loading.from_json_file(tmp_path / 'missing.json')


def test_configdict_type_check_on_override():
  config = config_loading.load_config(EXPERIMENTS / 'demo.py')
  with pytest.raises(ValueError, match="config field 'train.batch_size'"):
    config_loading.set_field(config, 'train.batch_size', 'many')
  assert isinstance(config, ml_collections.ConfigDict)
