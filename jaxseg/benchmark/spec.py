"""What one benchmark run is: `Spec` (a model or an op alone, mode, shapes, dtype) and its checks.

Also the ops-alone table (`OP_TABLE`, the layers at the shapes the models give them) and the
constants both frameworks' workloads share, so the jaxseg and the PyTorch step do the same work.
Imports nothing heavy: the parent process reads this without loading JAX or torch.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

MODES = ('train', 'infer')
DTYPES = ('float32', 'bfloat16')
PLATFORMS = ('cpu', 'gpu', 'tpu')
CONV_IMPLS = ('auto', 'lax')
# Ops alone, at the shapes the models give them for an input of --size (s = H, W):
#   kind, feature-map size divisor, in channels, out channels, kernel, stride, padding, rate.
# The conv/deconv entries are the layers that had cliffs on XLA:CPU (see BENCHMARKS.md).
OP_TABLE: dict[str, tuple[str, int, int, int, int, int, str, int]] = {
    'max_pool': ('maxpool', 1, 64, 64, 2, 2, 'valid', 1),  # FCN pool1 (no switches).
    'max_pool_argmax': ('pool', 1, 64, 64, 2, 2, 'valid', 1),  # DeconvNet pool1.
    'max_unpool': ('unpool', 1, 64, 64, 2, 2, 'valid', 1),  # DeconvNet unpool1.
    'atrous_conv_r2': ('conv', 8, 256, 256, 3, 1, 'same', 2),  # PSPNet layer3 3x3.
    'atrous_conv_r4': ('conv', 8, 512, 512, 3, 1, 'same', 4),  # PSPNet layer4 3x3.
    'vgg_conv1_2': ('conv', 1, 64, 64, 3, 1, 'same', 1),  # Full-resolution 3x3.
    'vgg_conv3_2': ('conv', 4, 256, 256, 3, 1, 'same', 1),
    'bottleneck_1x1': ('conv', 8, 1024, 256, 1, 1, 'same', 1),  # ResNet layer3 conv1.
    'psp_head_3x3': ('conv', 8, 4096, 512, 3, 1, 'same', 1),  # PSPNet cls conv.
    'fcn_fc6': ('conv', 32, 512, 4096, 7, 1, 'same', 1),  # FCN fc6 ('same' geometry).
    'deconvnet_fc6': ('conv', 32, 512, 4096, 7, 1, 'valid', 1),  # DeconvNet fc6.
    'fc7_1x1': ('conv', 32, 4096, 4096, 1, 1, 'same', 1),  # FCN fc7.
    'deconvnet_fc6_deconv': ('deconv', 32, 4096, 512, 7, 1, 'valid', 1),  # On fc6's output.
    'fcn_upscore8': ('deconv', 8, 21, 21, 16, 8, 'valid', 1),  # FCN-8s x8 upsampling.
}
OPS = tuple(OP_TABLE)
NUM_CLASSES = 21
MATMUL_SIZE = 4096  # Side of the matmul that measures the CPU's peak.
LEARNING_RATE = 1e-3


@dataclasses.dataclass(frozen=True)
class Spec:
  """One benchmark configuration (a model, or an op alone when `op` is set)."""
  model: str = ''
  op: str = ''
  mode: str = 'infer'
  batch: int = 2
  size: tuple[int, int] = (320, 320)
  dtype: str = 'float32'
  width: float = 1.0
  threads: int = 0  # 0 = every core this process may use.
  channels_last: bool = False  # torch memory format.
  conv_impl: str = 'auto'  # jaxseg.ops convolution formulation: 'auto' or 'lax' (XLA's own).

  @property
  def name(self) -> str:
    return self.model or self.op

  @classmethod
  def from_dict(cls, fields: dict[str, Any]) -> Spec:
    """The inverse of `dataclasses.asdict` after a JSON round trip (size comes back a list)."""
    return cls(**{**fields, 'size': tuple(fields['size'])})


def available_cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def validate(spec: Spec) -> None:
  """Raises ValueError naming the bad field of a benchmark configuration."""
  # The registry imports the jax module (no backend: nothing touches a device here).
  from jaxseg.models import MODEL_NAMES  # pylint: disable=g-import-not-at-top

  if bool(spec.model) == bool(spec.op):
    raise ValueError('benchmark: give exactly one of --model or --op')
  if spec.model and spec.model not in MODEL_NAMES:
    raise ValueError(f'benchmark: unknown --model {spec.model!r}; known models: '
                     f'{", ".join(MODEL_NAMES)}')
  if spec.op and spec.op not in OPS:
    raise ValueError(f'benchmark: unknown --op {spec.op!r}; known ops: {", ".join(OPS)}')
  if spec.mode not in MODES:
    raise ValueError(f'benchmark: --mode must be one of {MODES}, got {spec.mode!r}')
  if spec.dtype not in DTYPES:
    raise ValueError(f'benchmark: --dtype must be one of {DTYPES}, got {spec.dtype!r}')
  if spec.batch < 1 or len(spec.size) != 2 or min(spec.size) < 1:
    raise ValueError(f'benchmark: --batch and --size H W must be positive, got batch '
                     f'{spec.batch}, size {spec.size}')
  if not spec.width > 0:
    raise ValueError(f'benchmark: --width must be > 0, got {spec.width}')
  if spec.conv_impl not in CONV_IMPLS:
    raise ValueError(f"benchmark: --conv-impl must be 'auto' or 'lax', got {spec.conv_impl!r}")
  if spec.threads < 0 or spec.threads > available_cores():
    raise ValueError(f'benchmark: --threads must be between 1 and {available_cores()} (0 = all), '
                     f'got {spec.threads}')


def op_geometry(spec: Spec) -> dict[str, Any]:
  """Input shape (NHWC), kernel/stride/padding/rate of an op at --size, --batch and --width."""
  kind, divisor, cin, cout, k, stride, padding, rate = OP_TABLE[spec.op]
  scale = lambda c: c if spec.op == 'fcn_upscore8' else max(1, int(round(c * spec.width)))
  h, w = (-(-n // divisor) for n in spec.size)  # Ceil-mode pooling sizes.
  if spec.op == 'deconvnet_fc6_deconv':  # Valid fc6's output: pool5 - 6.
    h, w = max(1, h - 6), max(1, w - 6)
  pad = rate * (k // 2) if padding == 'same' else 0
  return dict(kind=kind, shape=(spec.batch, h, w, scale(cin)), cout=scale(cout), kernel=k,
              stride=stride, pad=pad, rate=rate)
