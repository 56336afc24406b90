"""FCN-32s on PASCAL VOC, the reference solver (Long, Shelhamer & Darrell, CVPR 2015 / PAMI 2017).

  jaxseg train --config experiments/fcn32s_voc.py --workdir workdirs/fcn32s_voc \
      --config.model.init_from=weights/VGG_ILSVRC_16_layers.caffemodel

The first stage of FCN's staged training; fcn16s_voc.py continues from this workdir, then
fcn8s_voc.py. `init_from` takes the original Caffe VGG16 (VGG_ILSVRC_16_layers.caffemodel, or
FCN's surgery'd vgg16-fcn.caffemodel): fc6/fc7 become the 7x7/1x1 convolutions as in FCN's
surgery. For torchvision's VGG16 use fcn32s_voc_torchvision.py.
Hardware assumed: 1 GPU (batch 1, whole images, as the reference). On N devices set
--config.train.batch_size=N and divide the learning rate by N (the loss is a sum).
Paper: 63.6 mean IU on seg11valid (PAMI Table 3 / fcn.berkeleyvision.org voc-fcn32s; the CVPR
version's 59.4 is on its VOC2011 val subset, a different split).
Recipe as shelhamer/fcn.berkeleyvision.org voc-fcn32s/{net.py,solver.prototxt,solve.py}: trained
on SBD train (8,498 images, `sbd_train`), scored on seg11valid (736) every 4,000 iterations;
Caffe geometry (conv1_1 pad 100, offset crops), BGR mean-subtracted 0-255 input, no augmentation
(whole images; static shapes pad them to 500x500 with ignored labels), dropout 0.5; SGD lr 1e-10
fixed, momentum 0.99, weight decay 5e-4 on weights only, biases lr x2 (lr_mult 2, decay_mult 0),
the bilinear upsampling fixed (lr_mult 0), the unnormalised (summed) loss, 100k iterations.
The full parameter-by-parameter comparison is docs/fidelity.md.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('default.py'))
  config.model.name = 'fcn32s'
  config.model.geometry = 'caffe'
  config.model.dtype = 'bfloat16'
  config.model.sync_bn = False  # VGG16 has no BatchNorm.
  config.model.learn_upsampling = False
  config.data.train_split = 'sbd_train'
  config.data.eval_split = 'seg11valid'
  config.data.normalization = 'caffe'
  config.data.crop_size = (500, 500)  # VOC images are at most 500x500: whole images, padded.
  config.data.eval_size = (500, 500)
  config.data.scale_range = (1.0, 1.0)
  config.data.hflip = False
  config.loss.normalize = False
  config.optim.learning_rate = 1e-10
  config.optim.momentum = 0.99
  config.optim.weight_decay = 5e-4
  config.optim.decay = 'kernels'
  config.optim.bias_lr_mult = 2.0
  config.optim.schedule = 'constant'
  config.train.batch_size = 1
  config.train.num_steps = 100_000
  config.train.eval_every = 4000
  config.train.checkpoint_every = 4000
  config.eval.batch_size = 1
  config.eval.mode = 'whole'
  return config
