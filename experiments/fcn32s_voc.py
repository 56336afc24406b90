"""FCN-32s on PASCAL VOC (Long, Shelhamer & Darrell, CVPR 2015; PAMI 2016), reference solver.

  jaxseg convert-weights --arch vgg16 --input vgg16-397923af.pth --output weights/vgg16.npz
  jaxseg train --config experiments/fcn32s_voc.py --workdir workdirs/fcn32s_voc \
      --config.model.init_from=weights/vgg16.npz

Hardware assumed: 1 GPU (batch 1, whole images, as the reference `voc-fcn32s` solver). On N
devices set --config.train.batch_size=N (the loss is FCN's unnormalised sum, so also divide the
learning rate by N).
Paper: 63.6 mean IU on seg11valid (PAMI / fcn.berkeleyvision.org; 59.4 in the CVPR version's
Table 2 on its VOC2011 val subset). The reference trained on SBD train (8,498 images); train_aug
(10,582, disjoint from seg11valid) is used here.
Recipe: caffe geometry (pad 100 + offset crops), caffe input (BGR, mean-subtracted 0-255: use a
caffe-converted VGG16 to match exactly; torchvision weights expect
--config.data.normalization=imagenet), no augmentation, SGD lr 1e-10 momentum 0.99 on the
unnormalised loss, weight decay 5e-4, fixed lr, 100k iterations.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('default.py'))
  config.model.name = 'fcn32s'
  config.model.geometry = 'caffe'
  config.model.dtype = 'bfloat16'
  config.model.sync_bn = False  # VGG16 has no BatchNorm.
  config.data.train_split = 'train_aug'
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
  config.optim.schedule = 'constant'
  config.train.batch_size = 1
  config.train.num_steps = 100_000
  config.train.eval_every = 4000
  config.train.checkpoint_every = 4000
  config.eval.batch_size = 1
  config.eval.mode = 'whole'
  return config
