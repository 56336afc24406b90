"""PSPNet-101 on CamVid (11 classes, SegNet's 367/101/233 split at 360x480).

  jaxseg train --config experiments/camvid_pspnet101.py --workdir workdirs/camvid_pspnet101 \
      --config.model.init_from=weights/resnet101.npz --config.data.manual_dir=PATH/TO/CamVid

Hardware assumed: 8 GPUs (global batch 16, cross-replica BN).
Paper: no CamVid number in the PSPNet paper. Recipe as camvid_pspnet50.py.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('camvid_pspnet50.py'))
  config.model.name = 'pspnet101'
  return config
