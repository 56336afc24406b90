"""Segmentation ops the papers need: atrous convolution, max pooling with switches, the convs.

All ops take NHWC arrays, are jit-compiled (static geometry is resolved in Python, then a jitted
kernel runs, so they also inline into an outer `jax.jit`) and are differentiable. Callers use the
names re-exported here (`from jaxseg import ops; ops.atrous_conv(...)`); one module per concern:
  atrous      atrous_conv / AtrousConv: dilated (PSPNet/DeepLab) convolution whose padding keeps
              the spatial size for any rate
  pooling     max_pool (a fused gradient); DeconvNet's max_pool_with_argmax (PyTorch's switches)
              and the scatter-free max_unpool
  conv        conv2d / conv_transpose and the Conv / ConvTranspose layers the models use, with
              the one switch (set_conv_impl, conv_impl, JAXSEG_CONV_IMPL) between lax's
              convolution and the XLA:CPU formulations
  xla_cpu     those formulations (matmuls, col2im, custom VJPs), their block sizes (PATCH_BYTES,
              BLOCK_BYTES) and the heuristics choosing them: a back-end's speed tricks, kept
              apart from the papers' ops
  geometry    the NHWC/HWIO layout, argument checks and padding specs the modules share
  crf         the dense CRF (Kraehenbuehl & Koltun 2011) on a permutohedral lattice built in jit:
              dense_crf / mean_field / CrfParams (import jaxseg.ops.crf; not re-exported)
"""
from jaxseg.ops.atrous import AtrousConv, atrous_conv
from jaxseg.ops.conv import (CONV_IMPLS, Conv, ConvTranspose, conv2d, conv_impl, conv_transpose,
                             set_conv_impl)
from jaxseg.ops.pooling import max_pool, max_pool_with_argmax, max_unpool

__all__ = [
    'AtrousConv', 'CONV_IMPLS', 'Conv', 'ConvTranspose', 'atrous_conv', 'conv2d', 'conv_impl',
    'conv_transpose', 'max_pool', 'max_pool_with_argmax', 'max_unpool', 'set_conv_impl',
]
