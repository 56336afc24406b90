"""PSPNet-50 on PASCAL VOC 2012 (Zhao et al., CVPR 2017).

  jaxseg convert-weights --arch resnet50 --input resnet50-0676ba61.pth --output weights/resnet50.npz
  jaxseg train --config experiments/pspnet50_voc.py --workdir workdirs/pspnet50_voc \
      --config.model.init_from=weights/resnet50.npz

Hardware assumed: 8 GPUs (global batch 16 = 2 per device, 473x473 crops, cross-replica BN).
Paper: no VOC number for ResNet-50 (PSPNet-101: 82.6 on VOC2012 test, 85.4 with COCO
pre-training); the authors' hszhao/semseg reports about 77 mean IoU on VOC2012 val for
PSPNet-50 with this recipe.
Recipe (paper, sec. 4.1): SGD lr 0.01 poly 0.9, momentum 0.9, weight decay 1e-4, head lr x10,
auxiliary loss 0.4 on layer3, random scale 0.5-2, rotation +-10 degrees, Gaussian blur, flips,
30k iterations; evaluation multi-scale (0.5-1.75) + flip with 473 sliding windows (stride 2/3).
The paper's ResNet has a deep (3x3 conv x3) stem; jaxseg uses torchvision's ResNet.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('default.py'))
  config.model.name = 'pspnet50'
  config.model.dtype = 'bfloat16'
  config.model.sync_bn = True
  config.data.train_split = 'train_aug'
  config.data.eval_split = 'val'
  config.data.crop_size = (473, 473)
  config.data.eval_size = (512, 512)
  config.data.scale_range = (0.5, 2.0)
  config.data.rotate_degrees = 10.0
  config.data.blur_prob = 0.5
  config.data.hflip = True
  config.loss.aux_weight = 0.4
  config.optim.learning_rate = 0.01
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  config.optim.schedule = 'poly'
  config.optim.poly_power = 0.9
  config.optim.head_lr_mult = 10.0
  config.train.batch_size = 16
  config.train.num_steps = 30_000
  config.eval.batch_size = 8
  config.eval.mode = 'multiscale'
  config.eval.scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  config.eval.flip = True
  config.eval.crop_size = (473, 473)
  config.eval.stride = (316, 316)
  return config
