"""Networks without training: DeconvNet's switches and PSPNet's pyramid on an image, output
shapes and parameter counts per module (from shapes only), and their Markdown tables.

JAX, Flax and jaxseg.models are imported inside the functions that need them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from typing import Any

import numpy as np


def deconvnet_switches(image: Any, width: float = 1 / 8, seed: int = 0) -> dict[str, np.ndarray]:
  """DeconvNet's first encoder block and unpool1 on one image, with random weights.

  conv1_1 and conv1_2 (3x3, VGG16's He init, ReLU; BatchNorm at its initial identity is left
  out), then pool1 = `jaxseg.ops.max_pool_with_argmax` (2x2, stride 2, ceil mode, as the
  model) and `jaxseg.ops.max_unpool`, which DeconvNet's decoder applies at the mirrored layer.
  Run op by op: three small ops, nothing worth compiling a network for.

  Returns {'before': (H, W, C) activation entering pool1, 'pooled', 'switches' (flat indices
  h * W + w), 'unpooled' (H, W, C)}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxseg import ops  # pylint: disable=g-import-not-at-top
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top
  from jaxseg.models import vgg  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(pipeline.normalize(np.asarray(image)[None], 'imagenet'))
  channels = vgg.scale_channels(vgg.VGG16_BLOCKS[0][0], width)
  keys = jax.random.split(jax.random.PRNGKey(seed), 2)
  for key in keys:
    kernel = vgg.conv_init(key, (3, 3, x.shape[-1], channels))
    x = jax.nn.relu(jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  pooled, switches = ops.max_pool_with_argmax(x, (2, 2), (2, 2), padding='VALID',
                                              ceil_mode=True)
  unpooled = ops.max_unpool(pooled, switches, x.shape[1:3])
  return {k: np.asarray(v)[0] for k, v in (('before', x), ('pooled', pooled),
                                           ('switches', switches), ('unpooled', unpooled))}


def pspnet_feature_size(height: int, width: int) -> tuple[int, int]:
  """(h, w) of PSPNet's layer4 map (output stride 8) for an input, from shapes only."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxseg.models import pspnet, resnet  # pylint: disable=g-import-not-at-top
  backbone = resnet.ResNet((1, 1, 1, 1), pspnet.PSP_DILATIONS, 1 / 16)
  out, _ = jax.eval_shape(lambda x: backbone.init_with_output(jax.random.PRNGKey(0), x),
                          jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32))
  return tuple(out['layer4'].shape[1:3])


def pspnet_pyramid(image: Any, bins: Sequence[int] | None = None
                   ) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
  """What PSPNet's pyramid pooling module does, shown on colours instead of learnt features.

  The image is average-pooled to the size of PSPNet's layer4 map (output stride 8, e.g. 60x60
  for 473x473) as a stand-in for the features; each level then pools it into bins x bins cells
  and upsamples back (align_corners bilinear), with the model's own `adaptive_avg_pool` and
  `resize_bilinear`. Returns (feature (h, w, 3), {bins: pooled (bins, bins, 3)},
  {bins: upsampled (h, w, 3)}), float RGB 0-255.
  """
  from jaxseg.models import pspnet  # pylint: disable=g-import-not-at-top
  image = np.asarray(image, np.float32)[None]
  size = pspnet_feature_size(image.shape[1], image.shape[2])
  feature = pspnet.adaptive_avg_pool(image, size)
  pooled, upsampled = {}, {}
  for b in bins or pspnet.PSP_BINS:
    cells = pspnet.adaptive_avg_pool(feature, b)
    pooled[b] = np.asarray(cells)[0]
    upsampled[b] = np.asarray(pspnet.resize_bilinear(cells, size, align_corners=True))[0]
  return np.asarray(feature)[0], pooled, upsampled


@dataclasses.dataclass(frozen=True)
class Stage:
  """One module of a network: its path, output shape(s) and parameters (whole subtree)."""
  path: str
  shapes: tuple[tuple[str, tuple[int, ...]], ...]  # (output name, shape); name '' if one.
  params: int


def _count(tree: Any) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def parameter_count(model: Any, input_shape: Sequence[int] = (1, 224, 224, 3)) -> int:
  """Number of parameters of a Flax model, from shapes only (jax.eval_shape: no compute)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x),
                          jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  return _count(shapes.get('params', {}))


def stages(model: Any, input_shape: Sequence[int], max_depth: int = 2,
           skip: Sequence[str] = ('BatchNorm', 'Dropout')) -> list[Stage]:
  """Output shapes and parameter counts of a model's modules down to `max_depth`, in call order.

  Shapes come from `jax.eval_shape` over `init` with `capture_intermediates` (nothing is
  computed); modules whose class name is in `skip` are left out.
  """
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  order: dict[tuple[str, ...], int] = {}

  def keep(module, method_name):  # Called as each module returns: records the call order.
    if method_name != '__call__' or type(module).__name__ in skip:
      return False
    order.setdefault(tuple(module.path), len(order))
    return True

  def run(x):
    return model.init_with_output(jax.random.PRNGKey(0), x, capture_intermediates=keep)

  _, variables = jax.eval_shape(run, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  variables = flax.core.unfreeze(variables)
  params = variables.get('params', {})
  found = []

  def visit(tree, path):
    for name, value in tree.items():
      if name == '__call__':
        if 0 < len(path) <= max_depth:
          found.append((tuple(path), value[0]))
      elif isinstance(value, dict):
        visit(value, path + [name])

  visit(variables.get('intermediates', {}), [])

  def started(path):  # Outputs are recorded as calls return: a module starts at its first child.
    return min(n for p, n in order.items() if p[:len(path)] == path)

  found.sort(key=lambda item: (started(item[0]), len(item[0])))
  rows = []
  for path, output in found:
    sub = params
    for name in path:
      sub = sub.get(name, {}) if isinstance(sub, dict) else {}
    rows.append(Stage('/'.join(path), _flat_shapes(output), _count(sub)))
  return rows


def _flat_shapes(output: Any, prefix: str = '') -> tuple[tuple[str, tuple[int, ...]], ...]:
  if isinstance(output, Mapping):
    return tuple(item for key, value in output.items()
                 for item in _flat_shapes(value, f'{prefix}{key}.'))
  if isinstance(output, (tuple, list)):
    return tuple(item for k, value in enumerate(output)
                 for item in _flat_shapes(value, f'{prefix}{k}.'))
  return ((prefix.rstrip('.'), tuple(int(d) for d in output.shape)),)


PAPER_INPUTS = {'fcn32s': 500, 'fcn16s': 500, 'fcn8s': 500, 'deconvnet': 224, 'pspnet50': 473,
                'pspnet101': 473}  # FCN: VOC's largest side; DeconvNet and PSPNet: their crops.


def models_markdown(num_classes: int = 21, inputs: Mapping[str, int] | None = None) -> str:
  """Markdown table of every registered network at full width: input, parameters, constraint."""
  from jaxseg import models  # pylint: disable=g-import-not-at-top
  inputs = dict(PAPER_INPUTS if inputs is None else inputs)
  lines = ['| model | input | parameters | input sizes |', '|---|---|---:|---|']
  for name, size in inputs.items():
    count = parameter_count(models.create_model(name, num_classes), (1, size, size, 3))
    lines.append(f'| {name} | {size}x{size} | {count:,} | {models.model_input_constraint(name)} |')
  return '\n'.join(lines)


def stages_markdown(rows: Sequence[Stage]) -> str:
  """Markdown table of `stages`: module, output (H x W x C per output), parameters."""
  lines = ['| module | output | parameters |', '|---|---|---:|']
  for row in rows:
    outputs = '<br>'.join(f'{name + ": " if name else ""}{"x".join(map(str, shape[1:]))}'
                          for name, shape in row.shapes)
    lines.append(f'| {row.path} | {outputs} | {row.params:,} |')
  return '\n'.join(lines)
