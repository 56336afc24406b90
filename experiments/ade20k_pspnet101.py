"""PSPNet-101 on ADE20K (SceneParsing 2016) as the authors train and test it (Zhao et al., CVPR 2017).

  jaxseg train --config experiments/ade20k_pspnet101.py --workdir workdirs/ade20k_pspnet101 \
      --config.model.init_from=initmodel/resnet101_v2.pth --config.data.manual_dir=PATH/TO/ADE

The authors' released models evaluate with no training:
  jaxseg eval --config experiments/ade20k_pspnet101.py --weights train_epoch_100.pth  (semseg)
Hardware assumed: 8 GPUs (global batch 16, 473x473 crops, cross-replica BN).
Published, ADE20K val: hszhao/semseg README 43.10 mean IoU / 81.07 pixel accuracy single-scale,
44.15 / 81.72 multi-scale (--config.eval.scales=0.5,0.75,1.0,1.25,1.5,1.75). Recipe as
ade20k_pspnet50.py (semseg ade20k_pspnet101.yaml differs only in layers: 101).
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('ade20k_pspnet50.py'))
  config.model.name = 'pspnet101'
  return config
