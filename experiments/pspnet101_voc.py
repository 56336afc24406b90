"""PSPNet-101 on PASCAL VOC 2012 as the authors train and test it (Zhao et al., CVPR 2017).

  jaxseg train --config experiments/pspnet101_voc.py --workdir workdirs/pspnet101_voc \
      --config.model.init_from=initmodel/resnet101_v2.pth

The authors' released models evaluate with no training:
  jaxseg eval --config experiments/pspnet101_voc.py --weights train_epoch_50.pth       (semseg)
  jaxseg eval --config experiments/pspnet101_voc.py --weights pspnet101_VOC2012.caffemodel \
      --config.model.backbone=caffe --config.data.normalization=caffe                  (Caffe)
Hardware assumed: 8 GPUs (global batch 16, 473x473 crops, cross-replica BN).
Published: hszhao/semseg README, VOC2012 val 79.07 single-scale / 79.63 multi-scale
(--config.eval.scales=0.5,0.75,1.0,1.25,1.5,1.75); the paper: 82.6 on VOC2012 test (85.4 with
COCO pre-training), multi-scale. Recipe as pspnet50_voc.py (semseg voc2012_pspnet101.yaml).
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('pspnet50_voc.py'))
  config.model.name = 'pspnet101'
  return config
