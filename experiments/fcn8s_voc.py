"""FCN-8s on PASCAL VOC (Long, Shelhamer & Darrell, CVPR 2015; PAMI 2016).

  jaxseg train --config experiments/fcn8s_voc.py --workdir workdirs/fcn8s_voc \
      --config.model.init_from=weights/vgg16.npz

Hardware assumed: 1 GPU (batch 1, whole images); see fcn32s_voc.py for N devices.
Paper: 65.5 mean IU on seg11valid (staged) and 65.4 (all-at-once), 67.2 on VOC2012 test (PAMI;
CVPR version: 62.7 on its VOC2011 val subset, 62.2 on VOC2012 test).
All-at-once training from the ImageNet backbone, as the reference `voc-fcn8s-atonce`, with the
solver of fcn32s_voc.py (caffe geometry and input, SGD lr 1e-10 momentum 0.99, unnormalised loss,
no augmentation). That reference net also scales pool4/pool3 by 0.01/0.0001 before scoring; the
jaxseg model does not (its skip scores start at zero instead), nor does the staged reference.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('fcn32s_voc.py'))
  config.model.name = 'fcn8s'
  return config
