"""FCN-8s on PASCAL VOC trained all at once from VGG16 (Long, Shelhamer & Darrell, PAMI 2017).

  jaxseg train --config experiments/fcn8s_atonce_voc.py --workdir workdirs/fcn8s_atonce_voc \
      --config.model.init_from=weights/VGG_ILSVRC_16_layers.caffemodel

Hardware assumed: 1 GPU (batch 1, whole images); see fcn32s_voc.py for N devices.
Paper: 65.4 mean IU on seg11valid (PAMI sec. 4.2 / voc-fcn8s-atonce; staged FCN-8s: 65.5).
Recipe as voc-fcn8s-atonce/{net.py,solver.prototxt,solve.py}: pool4 and pool3 scaled by 0.01 and
0.0001 (fixed Scale layers) before score_pool4/score_pool3, every layer trained together from
the ImageNet VGG16 with the fcn32s_voc.py solver (lr 1e-10), 300k iterations.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('fcn32s_voc.py'))
  config.model.name = 'fcn8s'
  config.model.skip_scales = (0.01, 0.0001)
  config.train.num_steps = 300_000
  return config
