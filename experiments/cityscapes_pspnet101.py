"""PSPNet-101 on Cityscapes (fine) as the authors train and test it (Zhao et al., CVPR 2017).

  jaxseg train --config experiments/cityscapes_pspnet101.py --workdir workdirs/cityscapes_pspnet101 \
      --config.model.init_from=initmodel/resnet101_v2.pth --config.data.manual_dir=PATH/TO/CITYSCAPES

`manual_dir` holds leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip (or their extracted
folders) from cityscapes-dataset.com (a login is needed: no automatic download); labelIds become
the 19 trainIds, every other id 255 (jaxseg.data.cityscapes). The authors' models evaluate as
  jaxseg eval --config experiments/cityscapes_pspnet101.py --weights train_epoch_200.pth    (semseg)
  jaxseg eval --config experiments/cityscapes_pspnet101.py --weights pspnet101_cityscapes.caffemodel \
      --config.model.backbone=caffe --config.data.normalization=caffe                     (Caffe)
Hardware assumed: 8 GPUs (global batch 16 = 2 per device of 713x713 crops, cross-replica BN).
Published: hszhao/semseg README, Cityscapes val (500 images, fine only) 78.63 mean IoU / 96.14
pixel accuracy single-scale, 79.29 / 96.38 multi-scale (--config.eval.scales=0.5,0.75,1.0,1.25,
1.5,1.75); the paper (Table 7): 78.4 on the test set trained on fine data (80.2 with coarse).
Recipe as hszhao/semseg config/cityscapes/cityscapes_pspnet101.yaml with tool/train.py:
fine_train (2,975), 200 epochs of floor(2,975 / 16) = 185 iterations = 37,000; 713x713 crops;
SGD lr 0.01 poly 0.9, momentum 0.9, weight decay 1e-4, head lr x10, aux 0.4, scale 0.5-2,
rotate +-10, blur, flip (as pspnet50_voc.py). Eval at full resolution: each 2048x1024 val image
(long side = base_size 2048 x scale 1.0) in 713x713 windows at stride 476 (ceil(713 x 2/3)), with
flip, softmax averaged, as semseg's test.py.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('pspnet50_voc.py'))
  config.model.name = 'pspnet101'
  config.data.dataset = 'cityscapes_fine'
  config.data.num_classes = 19
  config.data.train_split = 'train'
  config.data.eval_split = 'val'
  config.data.crop_size = (713, 713)
  config.data.eval_size = (1024, 2048)
  config.train.num_steps = 37_000
  config.train.eval_every = 3700  # Every 20 epochs.
  config.train.checkpoint_every = 185  # Every epoch (semseg's save_freq 1).
  config.eval.base_size = 2048
  config.eval.crop_size = (713, 713)
  config.eval.stride = (476, 476)  # ceil(713 * 2/3).
  return config
