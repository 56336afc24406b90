"""At-once FCN-8s on VOC train_aug (10,582 images) instead of the reference's SBD train (8,498).

  jaxseg train --config experiments/fcn8s_atonce_voc_train_aug.py \
      --workdir workdirs/fcn8s_atonce_voc_train_aug \
      --config.model.init_from=weights/VGG_ILSVRC_16_layers.caffemodel

Not the paper's data: train_aug adds the VOC2012 train images SBD lacks (disjoint from
seg11valid), the set DeconvNet and PSPNet train on, so FCN can be compared on their footing.
Everything else as fcn8s_atonce_voc.py; no published number.
Hardware assumed: as fcn32s_voc.py (1 GPU, batch 1, whole images).
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('fcn8s_atonce_voc.py'))
  config.data.train_split = 'train_aug'
  return config
