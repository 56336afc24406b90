"""PSPNet-50 on ADE20K (SceneParsing 2016) as the authors train and test it (Zhao et al., CVPR 2017).

  jaxseg train --config experiments/ade20k_pspnet50.py --workdir workdirs/ade20k_pspnet50 \
      --config.model.init_from=initmodel/resnet50_v2.pth --config.data.manual_dir=PATH/TO/ADE

`manual_dir` holds ADEChallengeData2016.zip or its extracted folder (jaxseg.data.ade20k; without
it the zip is downloaded). `init_from` is semseg's ImageNet ResNet-50 (deep stem; hszhao/semseg
README "initmodel"). The authors' trained semseg model evaluates as
  jaxseg eval --config experiments/ade20k_pspnet50.py --weights exp/ade20k/pspnet50/model/train_epoch_100.pth
Hardware assumed: 8 GPUs (global batch 16 = 2 per device, 473x473 crops, cross-replica BN).
Published, ADE20K val (2,000 images, 150 classes): hszhao/semseg README 41.89 mean IoU / 80.39
pixel accuracy single-scale, 42.84 / 81.06 multi-scale (--config.eval.scales=0.5,0.75,1.0,1.25,
1.5,1.75); the paper (Table 2, ResNet-50 + PSP with deep supervision, multi-scale) 42.78 / 80.76.
Recipe as hszhao/semseg config/ade20k/ade20k_pspnet50.yaml with tool/train.py: train (20,210),
100 epochs of floor(20,210 / 16) = 1,263 iterations = 126,300; everything else as
pspnet50_voc.py (SGD lr 0.01 poly 0.9, momentum 0.9, weight decay 1e-4 on every parameter, head
lr x10, aux 0.4, scale 0.5-2, rotate +-10, blur, flip, 473 crops). Labels: 'other' (0) is ignored
and classes 1..150 become 0..149, as semseg evaluates. Eval: long side to base_size 512 x scale,
473 windows at stride 316, flip, as semseg's test.py; eval_size pads each val image (kept at its
own size for the scores) to 2048x2048, which holds every SceneParsing image: a larger one stops
the eval with a message naming config.data.eval_size.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('pspnet50_voc.py'))
  config.data.dataset = 'ade20k'
  config.data.num_classes = 150
  config.data.train_split = 'train'
  config.data.eval_split = 'val'
  config.data.eval_size = (2048, 2048)
  config.train.num_steps = 126_300
  config.train.eval_every = 12_630  # Every 10 epochs.
  config.train.checkpoint_every = 1263  # Every epoch (semseg's save_freq 1).
  config.eval.base_size = 512
  return config
