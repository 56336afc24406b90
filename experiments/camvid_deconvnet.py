"""DeconvNet on CamVid (11 classes, SegNet's 367/101/233 split at 360x480).

  jaxseg train --config experiments/camvid_deconvnet.py --workdir workdirs/camvid_deconvnet \
      --config.model.init_from=weights/vgg16.npz --config.data.manual_dir=PATH/TO/CamVid

Hardware assumed: 8 GPUs (global batch 16 of 320x320 crops, cross-replica BN).
Paper: none by the DeconvNet authors (VOC only); the SegNet paper (Badrinarayanan et al.,
TPAMI 2017) compares with DeconvNet on CamVid. For scale, Yu & Koltun (ICLR 2016) list SegNet
at 46.4 and FCN-8 at 52.0 mean IoU on CamVid test.
Recipe: VGG16-BN encoder-decoder, SGD 0.01 momentum 0.9 weight decay 5e-4 poly, random scale
0.75-1.5, 320x320 crops, flips, 10k steps; whole-image evaluation on the test split (DeconvNet
takes any input >= 193 pixels a side).
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('default.py'))
  config.model.name = 'deconvnet'
  config.model.dtype = 'bfloat16'
  config.model.sync_bn = True
  config.data.dataset = 'camvid'
  config.data.num_classes = 11
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.crop_size = (320, 320)
  config.data.eval_size = (360, 480)
  config.data.scale_range = (0.75, 1.5)
  config.optim.learning_rate = 0.01
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.schedule = 'poly'
  config.train.batch_size = 16
  config.train.num_steps = 10_000
  config.train.eval_every = 1000
  config.eval.batch_size = 8
  config.eval.mode = 'whole'
  return config
