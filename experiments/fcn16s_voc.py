"""FCN-16s on PASCAL VOC, staged from a trained FCN-32s (Long, Shelhamer & Darrell, PAMI 2017).

  jaxseg train --config experiments/fcn16s_voc.py --workdir workdirs/fcn16s_voc \
      --config.model.init_from=workdirs/fcn32s_voc

`init_from` is the FCN-32s workdir of fcn32s_voc.py (its best checkpoint; DIR/checkpoints/STEP
picks a step) or FCN's released voc-fcn32s.caffemodel. Shared layers (VGG16, fc6, fc7, score_fr)
are copied by name as the reference's `solver.net.copy_from`; score_pool4 starts at zero and the
new upsampling at bilinear; FCN-32s's own x32 upsampling is left out.
Hardware assumed: 1 GPU (batch 1, whole images); see fcn32s_voc.py for N devices.
Paper: 65.0 mean IU on seg11valid (PAMI / voc-fcn16s; CVPR version 62.4 on its VOC2011 subset).
Recipe as voc-fcn16s/{net.py,solver.prototxt,solve.py}: the fcn32s_voc.py solver with lr 1e-12,
100k iterations.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('fcn32s_voc.py'))
  config.model.name = 'fcn16s'
  config.optim.learning_rate = 1e-12
  return config
