"""`jaxseg benchmark`: jaxseg (XLA) beside PyTorch eager, step for step, on the device JAX gets.

One module per concern:
  spec            `Spec` (a model or an op alone, mode, shapes, dtype), `validate`, `OP_TABLE`
  harness         the parent: `run_spec` starts fresh workers, drives them in lockstep over the
                  pipe protocol, checks the platform they got and assembles the record
  worker          the worker process (`python -m jaxseg.benchmark.worker jax|torch|matmul`)
  workloads       what the jaxseg worker runs: model/op steps, their FLOP count; the CPU peak
  torch_workload  what the torch worker runs, with JAX's precision policy, on CUDA or the CPU
  torch_models    the PyTorch twins of every network (`create_torch_model`, `segmentation_loss`)
  devices         published peaks per device kind and dtype, MFU, the platform check, host info
  tables          the header line and the Markdown table
  command         the CLI: flags, `cmd_benchmark`, `register(subparsers)`, `main`

How each number is measured is in the docstring of the module that measures it: timing and
memory in harness, FLOPs and train/infer in workloads, peaks in devices. In short: MFU = the
network's FLOPs per step (XLA's cost analysis of the step written with lax convolutions) / median
step time / the device's peak for the run's dtype (published dense tensor-core rate on GPU/TPU,
measured matmul rate on the CPU; 'n/a' where unknown).

Importing this package (or `command`) loads neither JAX's backends nor torch: only the workers
do, so the parent never takes the accelerator from them.
"""
from jaxseg.benchmark.devices import PEAK_TFLOPS, PlatformError, check_platform, mfu, published_peak
from jaxseg.benchmark.harness import run_spec, worker_env
from jaxseg.benchmark.spec import DTYPES, MODES, OP_TABLE, OPS, PLATFORMS, Spec, validate
from jaxseg.benchmark.tables import format_header, format_table

__all__ = [
    'DTYPES', 'MODES', 'OPS', 'OP_TABLE', 'PEAK_TFLOPS', 'PLATFORMS', 'PlatformError', 'Spec',
    'check_platform', 'format_header', 'format_table', 'mfu', 'published_peak', 'run_spec',
    'validate', 'worker_env',
]
