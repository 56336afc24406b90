"""Loading experiment configs: `get_config()` from a .py file, `--config.a.b=value` overrides.

Every config is a locked `ml_collections.ConfigDict`, so an override or recipe assignment to a
field that does not exist fails with the field's name and the closest known names, instead of
silently adding a field.
"""
from collections.abc import Iterable, Sequence
import ast
import difflib
import importlib.util
import json
import os
import pathlib
import sys
from typing import Any

import ml_collections

OVERRIDE_PREFIX = '--config.'
_TRUE = {'true', 't', 'yes', 'y', '1', 'on'}
_FALSE = {'false', 'f', 'no', 'n', '0', 'off'}
_module_counter = 0


def experiments_dir() -> pathlib.Path:
  """The repository's experiments/ folder (beside the jaxseg package in a source checkout)."""
  return pathlib.Path(__file__).resolve().parents[1] / 'experiments'


def load_config(path: str | os.PathLike[str]) -> ml_collections.ConfigDict:
  """Runs `get_config()` of a Python config file and returns the locked ConfigDict."""
  global _module_counter
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'config file {str(path)!r} not found (expected a .py file defining '
                            f'get_config(), e.g. {experiments_dir() / "demo.py"})')
  if path.suffix != '.py':
    raise ValueError(f'config file {str(path)!r} must be a .py file defining get_config()')
  _module_counter += 1
  name = f'_jaxseg_config_{_module_counter}_{path.stem}'
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:  # Also IndentationError; may come from a file the config imports.
    raise ValueError(_syntax_message(e)) from e
  finally:
    sys.modules.pop(name, None)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'config file {str(path)!r} defines no get_config()')
  config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f'get_config() in {str(path)!r} returned {type(config).__name__}, '
                     'expected an ml_collections.ConfigDict')
  config.lock()
  check_shapes(config)
  return config


def _syntax_message(error: SyntaxError) -> str:
  """'config file F, line N: msg' with the offending line and a caret under the column."""
  where = f'config file {error.filename!r}, line {error.lineno}'
  text = (error.text or '').rstrip('\n')
  shown = ''
  if text.strip():
    indent = len(text) - len(text.lstrip())
    caret = ' ' * max(0, (error.offset or 1) - 1 - indent) + '^'
    shown = f'\n    {text.strip()}\n    {caret}'
  return f'{where}: {type(error).__name__}: {error.msg}{shown}'


# Fields that hold an (H, W) pair of positive ints; checked whenever a config is built or changed.
PAIR_FIELDS = ('data.crop_size', 'data.eval_size', 'data.window_resize', 'eval.crop_size',
               'eval.stride', 'eval.proposal_size')


def check_shapes(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when a PAIR_FIELDS entry is not two positive ints.

  Checked here, before any model or data exists, instead of failing as a max_pool window or
  'not enough values to unpack' deep inside the first train step or prediction.
  """
  for name in PAIR_FIELDS:
    group, _, leaf = name.partition('.')
    if group not in config or leaf not in config[group]:
      continue
    value = config[group][leaf]
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if len(values) != 2 or not ints or min(values) < 1:
      single = len(values) == 1 and ints and values[0] > 0
      example = f'{values[0]},{values[0]}' if single else '320,320'
      raise ValueError(f'config.{name}={value!r} must be two positive ints (H, W), e.g. '
                       f'--config.{name}={example}')


def field_names(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Dotted names of every leaf field, e.g. 'train.batch_size'."""
  names = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      names += field_names(value, f'{prefix}{key}.')
    else:
      names.append(f'{prefix}{key}')
  return names


def _unknown_field(config: ml_collections.ConfigDict, name: str) -> ValueError:
  known = field_names(config)
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
  if not close:  # A misspelt group: compare the last part only.
    last = {n.rsplit('.', 1)[-1]: n for n in known}
    close = [last[c] for c in difflib.get_close_matches(name.rsplit('.', 1)[-1], last, n=3)]
  hint = f'; did you mean {", ".join(repr(c) for c in close)}?' if close else ''
  return ValueError(f'unknown config field {name!r}{hint} (fields are defined in '
                    'experiments/default.py)')


def parse_value(text: str, current: Any, name: str = 'value') -> Any:
  """Parses the command-line text of an override with the type of the field's current value."""
  try:
    if isinstance(current, bool):
      low = text.strip().lower()
      if low in _TRUE:
        return True
      if low in _FALSE:
        return False
      raise ValueError('expected true or false')
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return text
    if isinstance(current, (tuple, list)):
      return _parse_sequence(text, current)
    if current is None:
      return ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    raise ValueError(f'cannot parse {text!r} for config field {name} '
                     f'({type(current).__name__}, e.g. {current!r}): {e}') from None
  raise ValueError(f'config field {name} of type {type(current).__name__} cannot be overridden '
                   'from the command line')


def _parse_sequence(text: str, current: Sequence[Any]) -> tuple[Any, ...]:
  stripped = text.strip()
  if stripped in ('', '()', '[]'):
    return ()
  if stripped[0] in '([':
    values = ast.literal_eval(stripped)
    values = values if isinstance(values, (tuple, list)) else (values,)
  else:  # 320,320 or a single value.
    values = [ast.literal_eval(v.strip()) if not current or not isinstance(current[0], str)
              else v.strip() for v in stripped.split(',') if v.strip()]
  element = type(current[0]) if current else float
  if element is float:
    return tuple(float(v) for v in values)
  if element is int:
    if any(isinstance(v, float) and not v.is_integer() for v in values):
      raise ValueError('expected integers')
    return tuple(int(v) for v in values)
  return tuple(element(v) for v in values)


def get_field(config: ml_collections.ConfigDict, name: str) -> Any:
  """Value of dotted leaf field `name`; unknown names fail with the closest known ones."""
  node = config
  for part in name.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise _unknown_field(config, name)
    node = node[part]
  if isinstance(node, ml_collections.ConfigDict):
    raise ValueError(f'config field {name!r} is a group; override one of its fields: '
                     f'{", ".join(field_names(node, name + "."))}')
  return node


def set_field(config: ml_collections.ConfigDict, name: str, value: Any) -> None:
  """Sets dotted leaf field `name` to an already typed value."""
  current = get_field(config, name)
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  group, _, leaf = name.rpartition('.')
  node = config
  for part in filter(None, group.split('.')):
    node = node[part]
  try:
    node[leaf] = value
  except TypeError as e:
    raise ValueError(f'config field {name!r}: {e}') from None


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Iterable[tuple[str, str]]) -> ml_collections.ConfigDict:
  """Applies ('a.b', 'text') overrides, parsing each text with the field's type."""
  for name, text in overrides:
    set_field(config, name, parse_value(text, get_field(config, name), name))
  check_shapes(config)
  return config


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Separates `--config.a.b=value` / `--config.a.b value` from the other arguments."""
  rest, overrides = [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith(OVERRIDE_PREFIX):
      body = arg[len(OVERRIDE_PREFIX):]
      if '=' in body:
        name, text = body.split('=', 1)
      elif i + 1 < len(args):
        name, text = body, args[i + 1]
        i += 1
      else:
        raise ValueError(f'override {arg} has no value (write {arg}=VALUE)')
      if not name:
        raise ValueError(f'override {arg!r} names no field')
      overrides.append((name, text))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def to_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config as JSON (tuples become lists; see from_json)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def _tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def from_dict(values: dict[str, Any]) -> ml_collections.ConfigDict:
  """A locked ConfigDict from a plain dict; lists become tuples (config sequences are tuples).

  Fields missing from the dict (a workdir written before a field was added) take the value of
  experiments/default.py when that file is available.
  """
  values = _tuples(values)
  default_path = experiments_dir() / 'default.py'
  if default_path.is_file():
    config = load_config(default_path)
    _merge(config, values, '')
  else:
    config = ml_collections.ConfigDict(values)
    config.lock()
  return config


def _merge(config: ml_collections.ConfigDict, values: dict[str, Any], prefix: str) -> None:
  for key, value in values.items():
    if key not in config:
      raise ValueError(f'unknown config field {prefix + key!r} (not in experiments/default.py)')
    if isinstance(value, dict):
      _merge(config[key], value, f'{prefix}{key}.')
    else:
      if isinstance(config[key], float) and isinstance(value, int):
        value = float(value)
      try:
        config[key] = value
      except TypeError as e:
        raise ValueError(f'config field {prefix + key!r}: {e}') from None


def from_json_file(path: str | os.PathLike[str]) -> ml_collections.ConfigDict:
  """Reads a workdir's config.json (local or cloud storage) back into a locked ConfigDict."""
  from jaxseg import storage  # pylint: disable=g-import-not-at-top
  path = storage.resolve(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path} not found: is this a jaxseg workdir (made by `jaxseg train`)?')
  try:
    values = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from None
  if not isinstance(values, dict):
    raise ValueError(f'{path} does not hold a config object')
  return from_dict(values)
