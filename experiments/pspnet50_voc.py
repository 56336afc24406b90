"""PSPNet-50 on PASCAL VOC 2012 as the authors train and test it (Zhao et al., CVPR 2017).

  jaxseg train --config experiments/pspnet50_voc.py --workdir workdirs/pspnet50_voc \
      --config.model.init_from=initmodel/resnet50_v2.pth

`init_from` is semseg's ImageNet ResNet-50 (deep stem; hszhao/semseg README "initmodel"). With
torchvision's ResNet-50 instead: --config.model.backbone=torchvision
--config.model.init_from=resnet50-0676ba61.pth. The authors' trained semseg model evaluates as
  jaxseg eval --config experiments/pspnet50_voc.py --weights exp/voc2012/pspnet50/model/train_epoch_50.pth
Hardware assumed: 8 GPUs (global batch 16 = 2 per device, 473x473 crops, cross-replica BN).
Published: hszhao/semseg README, VOC2012 val: 77.05 mean IoU single-scale (this recipe's eval:
one scale, with flip, as semseg's test.py), 78.02 multi-scale
(--config.eval.scales=0.5,0.75,1.0,1.25,1.5,1.75). The paper has no ResNet-50 VOC number.
Recipe as hszhao/semseg config/voc2012/voc2012_pspnet50.yaml, tool/train.py, util/transform.py,
tool/test.py: train_aug (10,582), 50 epochs = 33,050 iterations of batch 16; SGD lr 0.01, poly
0.9, momentum 0.9, weight decay 1e-4 on every parameter, head (PPM, cls, aux) lr x10; auxiliary
loss 0.4 on layer3; augmentation scale 0.5-2, rotate +-10 with p 0.5, Gaussian blur p 0.5, flip,
473 crop with centred mean padding; deep-stem ResNet with layer3/layer4 dilated 2/4 in every
block. Eval: long side resized to 512 x scale, 473 windows at stride 316 (2/3), softmax averaged
over windows, flips and scales. Every value beside its source: docs/fidelity.md.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('default.py'))
  config.model.name = 'pspnet50'
  config.model.backbone = 'semseg'
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
  config.data.augmentation = 'semseg'
  config.loss.aux_weight = 0.4
  config.optim.learning_rate = 0.01
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  config.optim.decay = 'all'
  config.optim.schedule = 'poly'
  config.optim.poly_power = 0.9
  config.optim.head_lr_mult = 10.0
  config.train.batch_size = 16
  config.train.num_steps = 33_050
  config.train.eval_every = 3305  # Every 5 epochs.
  config.train.checkpoint_every = 661  # Every epoch (semseg's save_freq 1).
  config.eval.batch_size = 8
  config.eval.mode = 'multiscale'
  config.eval.base_size = 512
  config.eval.scales = (1.0,)
  config.eval.flip = True
  config.eval.crop_size = (473, 473)
  config.eval.stride = (316, 316)  # ceil(473 * 2/3).
  return config
