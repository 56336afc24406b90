"""The hardware side of the numbers: published peaks per device kind and dtype, MFU, the check
that the jaxseg worker runs on the platform asked for, and the host's CPU and load.

Nothing here initialises JAX: the device kind, count and platform are what the jaxseg worker
reports (harness.py); the parent only looks them up.

Peaks (`PEAK_TFLOPS`) are dense (no 2:4 sparsity) tensor-core rates per chip. The float32 entry
is the rate float32 matmuls and convolutions actually run at under JAX's default precision
(`jax_default_matmul_precision` unset), not the IEEE float32 rate:
- NVIDIA Ampere/Hopper: XLA:GPU computes them on the TF32 tensor cores, so float32 is the TF32
  rate. The torch worker is set to the same policy (TF32 on) for a like-for-like comparison.
- TPU: the default precision is one bfloat16 pass on the MXU, so float32 is the bfloat16 rate.
  (`jax.default_matmul_precision('highest')` would run 3-6 passes; we don't benchmark that.)
On the CPU there is no table: the peak is measured in the same run (workloads.MatmulWorkload).
"""
from __future__ import annotations

import os
import platform
import re
from typing import Any

from jaxseg.benchmark.spec import available_cores

# (regular expression searched in jax's device_kind, {dtype: dense TFLOP/s}). First match wins.
# Sources, the vendors' datasheets (they print the sparse rate, twice the dense one, for
# TF32/BF16 on Ampere and later; the numbers below are halved):
#   NVIDIA A100 Tensor Core GPU datasheet: TF32 156, BF16 312 (SXM and PCIe alike).
#   NVIDIA H100 Tensor Core GPU datasheet: SXM TF32 989 / BF16 1,979 sparse -> 494.7 / 989.4;
#     PCIe TF32 756 / BF16 1,513 sparse -> 378 / 756. (H100 NVL has its own column: not here.)
#   NVIDIA H200 Tensor Core GPU datasheet: H200 SXM as H100 SXM (H200 NVL lower: not here).
#   NVIDIA L4 Tensor Core GPU datasheet: TF32 120 / BF16 242 sparse -> 60 / 121.
#   Google Cloud TPU documentation, "TPU v4", "TPU v5e", "TPU v5p", "TPU v6e" (Trillium) pages:
#     peak bf16 compute per chip 275, 197, 459, 918 TFLOP/s.
# JAX names the kinds after the CUDA device name ('NVIDIA H100 80GB HBM3' is the SXM part) or
# the TPU generation ('TPU v5 lite' is v5e, 'TPU v6 lite' v6e; v5p is 'TPU v5p' or 'TPU v5').
_TPU = lambda bf16: {'bfloat16': bf16, 'float32': bf16}  # One bf16 MXU pass (default).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r'\bA100\b', {'bfloat16': 312.0, 'float32': 156.0}),
    (r'\bH100\b.*\bPCIe\b', {'bfloat16': 756.0, 'float32': 378.0}),
    (r'\bH100\b(?!.*\bNVL\b)', {'bfloat16': 989.4, 'float32': 494.7}),  # SXM.
    (r'\bH200\b(?!.*\bNVL\b)', {'bfloat16': 989.4, 'float32': 494.7}),  # SXM.
    (r'\bL4\b', {'bfloat16': 121.0, 'float32': 60.0}),
    (r'^TPU v4$', _TPU(275.0)),
    (r'^TPU v5 ?(lite|e)$', _TPU(197.0)),
    (r'^TPU v5p?$', _TPU(459.0)),
    (r'^TPU v6 ?(lite|e)$', _TPU(918.0)),
)
# JAX_PLATFORMS names (and their aliases) -> the platform jax.default_backend() then reports.
_PLATFORM_OF = {'cpu': 'cpu', 'gpu': 'gpu', 'cuda': 'gpu', 'rocm': 'gpu', 'tpu': 'tpu'}
# --platform -> JAX_PLATFORMS for the worker. 'gpu' is CUDA: JAX_PLATFORMS=gpu also demands
# ROCm and oneAPI and fails without them (set JAX_PLATFORMS=rocm yourself for AMD GPUs).
JAX_PLATFORMS_OF = {'cpu': 'cpu', 'gpu': 'cuda', 'tpu': 'tpu'}


class PlatformError(RuntimeError):
  """The jaxseg worker is not on the platform asked for (or JAX could not initialise it)."""


def published_peak(device_kind: str, dtype: str) -> float | None:
  """Published dense peak FLOP/s of a GPU/TPU device kind for dtype (None if unknown)."""
  for pattern, peaks in PEAK_TFLOPS:
    if re.search(pattern, device_kind):
      peak = peaks.get(dtype)
      return peak * 1e12 if peak else None
  return None


def mfu(flops_per_step: float | None, step_s: float | None, peak: float | None) -> float | None:
  """Model FLOPs utilisation: the model's FLOPs per step / step time / peak FLOP/s (None if any
  is unknown or zero)."""
  if not flops_per_step or not step_s or not peak:
    return None
  return flops_per_step / step_s / peak


def expected_accelerators(jax_platforms: str) -> set[str]:
  """The accelerator platforms ('gpu', 'tpu') a JAX_PLATFORMS value asks for."""
  names = [p.strip().lower() for p in jax_platforms.split(',') if p.strip()]
  return {_PLATFORM_OF.get(p, p) for p in names} - {'cpu'}


def check_platform(jax_platforms: str, reported: str, device_kind: str) -> None:
  """Raises PlatformError when an accelerator was asked for but the worker reports another
  platform (JAX falls back to the CPU when, e.g., JAX_PLATFORMS=cuda,cpu and CUDA fails)."""
  expected = expected_accelerators(jax_platforms)
  if expected and reported not in expected:
    raise PlatformError(
        f'benchmark: asked for {" or ".join(sorted(expected))} (JAX_PLATFORMS={jax_platforms}) '
        f'but the jaxseg worker runs on {reported} ({device_kind}); not measuring the wrong '
        'device')


def host_info() -> dict[str, Any]:
  """The host's CPU model and usable cores (no JAX)."""
  cpu = ''
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), '')
  except OSError:
    pass
  return dict(cpu=cpu or platform.processor(), cores=available_cores())


def load_average() -> list[float]:
  try:
    with open('/proc/loadavg') as f:
      return [float(v) for v in f.read().split()[:3]]
  except OSError:
    return list(os.getloadavg()) if hasattr(os, 'getloadavg') else []
