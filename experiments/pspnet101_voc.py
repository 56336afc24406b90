"""PSPNet-101 on PASCAL VOC 2012 (Zhao et al., CVPR 2017).

  jaxseg convert-weights --arch resnet101 --input resnet101-63fe2227.pth \
      --output weights/resnet101.npz
  jaxseg train --config experiments/pspnet101_voc.py --workdir workdirs/pspnet101_voc \
      --config.model.init_from=weights/resnet101.npz

Hardware assumed: 8 GPUs (global batch 16, 473x473 crops, cross-replica BN).
Paper: 82.6 mean IoU on VOC2012 test (85.4 with COCO pre-training); hszhao/semseg reports about
79 on VOC2012 val. Recipe as pspnet50_voc.py.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('pspnet50_voc.py'))
  config.model.name = 'pspnet101'
  return config
