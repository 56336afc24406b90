"""FCN-16s on PASCAL VOC (Long, Shelhamer & Darrell, CVPR 2015; PAMI 2016).

  jaxseg train --config experiments/fcn16s_voc.py --workdir workdirs/fcn16s_voc \
      --config.model.init_from=weights/vgg16.npz

Hardware assumed: 1 GPU (batch 1, whole images); see fcn32s_voc.py for N devices.
Paper: 65.0 mean IU on seg11valid (PAMI; 62.4 in the CVPR version's Table 2).
The reference initialises FCN-16s from a trained FCN-32s (staged, lr 1e-12); this recipe trains
all-at-once from the ImageNet backbone (as the reference `voc-fcn8s-atonce`), same solver as
fcn32s_voc.py.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('fcn32s_voc.py'))
  config.model.name = 'fcn16s'
  return config
