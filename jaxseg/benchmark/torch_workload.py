"""What the torch worker runs: the Spec's step in PyTorch eager, on torch_models' twins.

The same work as workloads.JaxWorkload: the same network (or op at the same shapes), the same
loss and optimiser, random inputs. The device follows the jaxseg worker: CUDA when that one is
on a GPU and torch has CUDA, else the CPU. The precision policy follows JAX's defaults, so both
frameworks multiply alike: float32 with TF32 tensor cores for matmuls and cuDNN convolutions on
CUDA (XLA:GPU's default), bfloat16 as autocast (parameters stay float32, as jaxseg's). Steps
synchronise the device before the clock is read. The first step runs under FlopCounterMode
(convolutions and matmuls only), torch's own FLOP count as a cross-check of XLA's; its time is
reported as torch's "compile" (eager: nothing to compile).
"""
from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from jaxseg.benchmark import torch_models
from jaxseg.benchmark.spec import LEARNING_RATE, NUM_CLASSES, Spec, available_cores, op_geometry


class TorchWorkload:
  """Builds the torch step of a Spec on CUDA (if `cuda` and available) or the CPU."""

  def __init__(self, spec: Spec, cuda: bool = False):
    self.device = 'cuda' if cuda and torch.cuda.is_available() else 'cpu'
    device = torch.device(self.device)
    if self.device == 'cuda':  # JAX's default on Ampere and later: TF32 for float32.
      torch.backends.cuda.matmul.fp32_precision = 'tf32'
      torch.backends.cudnn.conv.fp32_precision = 'tf32'
    torch.set_num_threads(spec.threads or available_cores())
    torch.manual_seed(0)
    self.bfloat16 = spec.dtype == 'bfloat16'
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    if spec.model:
      self.run = self._model_step(spec, device, memory_format)
    else:
      self.run = self._op_step(spec, device, memory_format)
    with FlopCounterMode(display=False) as counter:
      start = time.perf_counter()
      self.run()
      self._sync()
    self.compile_s = time.perf_counter() - start
    self.flops = float(counter.get_total_flops())
    self.reset_device_peak()

  def _model_step(self, spec, device, memory_format):
    h, w = spec.size
    model = torch_models.create_torch_model(spec.model, NUM_CLASSES, spec.width)
    model = model.to(device, memory_format=memory_format)
    x = torch.randn(spec.batch, 3, h, w, device=device).to(memory_format=memory_format)
    y = torch.randint(0, NUM_CLASSES, (spec.batch, h, w), device=device)
    if spec.mode == 'infer':
      model.eval()

      def infer():
        with torch.inference_mode(), self._autocast():
          model(x)
      return infer

    model.train()
    opt = torch.optim.SGD(model.parameters(), LEARNING_RATE, momentum=0.9, weight_decay=1e-4)

    def train():
      opt.zero_grad(set_to_none=True)
      with self._autocast():
        outputs = model(x)
      torch_models.segmentation_loss(outputs, y).backward()
      opt.step()
    return train

  def _op_step(self, spec, device, memory_format):
    g = op_geometry(spec)
    n, oh, ow, c = g['shape']
    k, s, p, r = g['kernel'], g['stride'], g['pad'], g['rate']
    x = torch.randn(n, c, oh, ow, device=device).to(memory_format=memory_format)
    if g['kind'] == 'maxpool':
      inputs, fn = [x], lambda x: F.max_pool2d(x, 2, 2, ceil_mode=True)
    elif g['kind'] in ('pool', 'unpool'):
      pooled, idx = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
      if g['kind'] == 'pool':
        inputs, fn = [x], lambda x: F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)[0]
      else:
        inputs = [pooled.contiguous()]
        fn = lambda p: F.max_unpool2d(p, idx, 2, 2, output_size=(oh, ow))
    elif g['kind'] == 'conv':
      kernel = torch.randn(g['cout'], c, k, k, device=device) / (k * c ** 0.5)
      inputs = [x, kernel]
      fn = lambda x, w: F.conv2d(x, w, stride=s, padding=p, dilation=r)
    else:
      kernel = torch.randn(c, g['cout'], k, k, device=device) / (k * c ** 0.5)
      inputs = [x, kernel]
      fn = lambda x, w: F.conv_transpose2d(x, w, stride=s, padding=p)
    if spec.mode == 'infer':
      def infer():
        with torch.inference_mode(), self._autocast():
          fn(*inputs)
      return infer

    inputs = [t.detach().requires_grad_(True) for t in inputs]
    with torch.no_grad():
      cotangent = torch.randn_like(fn(*inputs))

    def train():
      for t in inputs:
        t.grad = None
      with self._autocast():
        out = fn(*inputs)
      out.backward(cotangent.to(out.dtype))
    return train

  def _autocast(self):
    if not self.bfloat16:
      return contextlib.nullcontext()
    return torch.autocast(self.device, dtype=torch.bfloat16)

  def _sync(self):
    if self.device == 'cuda':
      torch.cuda.synchronize()

  def step(self) -> float:
    start = time.perf_counter()
    self.run()
    self._sync()
    return time.perf_counter() - start

  def reset_device_peak(self) -> None:
    if self.device == 'cuda':
      torch.cuda.reset_peak_memory_stats()

  def device_peak_bytes(self) -> int | None:
    return int(torch.cuda.max_memory_allocated()) if self.device == 'cuda' else None
