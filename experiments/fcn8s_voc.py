"""FCN-8s on PASCAL VOC, staged from a trained FCN-16s (Long, Shelhamer & Darrell, PAMI 2017).

  jaxseg train --config experiments/fcn8s_voc.py --workdir workdirs/fcn8s_voc \
      --config.model.init_from=workdirs/fcn16s_voc

`init_from` is the FCN-16s workdir of fcn16s_voc.py or FCN's released voc-fcn16s.caffemodel;
shared layers are copied by name, score_pool3 starts at zero. For the released FCN-8s itself:
  jaxseg eval --config experiments/fcn8s_voc.py --weights voc-fcn8s.caffemodel
Hardware assumed: 1 GPU (batch 1, whole images); see fcn32s_voc.py for N devices.
Paper: 65.5 mean IU on seg11valid (PAMI Table 3, staged), 67.2 on VOC2012 test (PAMI; the CVPR
version: 62.7 on its VOC2011 subset, 62.2 on VOC2012 test).
Recipe as voc-fcn8s/{net.py,solver.prototxt,solve.py}: the fcn32s_voc.py solver with lr 1e-14,
100k iterations. The at-once alternative is fcn8s_atonce_voc.py.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('fcn32s_voc.py'))
  config.model.name = 'fcn8s'
  config.optim.learning_rate = 1e-14
  return config
