"""FCN-8s on CamVid (11 classes, SegNet's 367/101/233 split at 360x480).

  jaxseg convert-weights --arch vgg16 --input vgg16-397923af.pth --output weights/vgg16.npz
  jaxseg train --config experiments/camvid_fcn8s.py --workdir workdirs/camvid_fcn8s \
      --config.model.init_from=weights/vgg16.npz --config.data.manual_dir=PATH/TO/CamVid

Hardware assumed: 1 GPU (batch 8 of whole 360x480 images; on N devices keep the global batch).
Paper: none by the FCN authors; Yu & Koltun (ICLR 2016, CamVid test, 11 classes) list FCN-8 at
52.0 mean IoU (SegNet 46.4, Dilation8 65.3).
Recipe: torchvision VGG16 (imagenet normalisation, 'same' geometry), normalised cross-entropy,
SGD lr 1e-3 momentum 0.9 poly, weight decay 5e-4, random scale 0.75-1.5 and flips, 10k steps
(~218 epochs); whole-image evaluation on the test split.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('default.py'))
  config.model.name = 'fcn8s'
  config.model.geometry = 'same'
  config.model.dtype = 'bfloat16'
  config.model.sync_bn = False
  config.data.dataset = 'camvid'
  config.data.num_classes = 11
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.normalization = 'imagenet'
  config.data.crop_size = (360, 480)
  config.data.eval_size = (360, 480)
  config.data.scale_range = (0.75, 1.5)
  config.data.hflip = True
  config.optim.learning_rate = 1e-3
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.schedule = 'poly'
  config.train.batch_size = 8
  config.train.num_steps = 10_000
  config.train.eval_every = 1000
  config.eval.batch_size = 8
  config.eval.mode = 'whole'
  return config
