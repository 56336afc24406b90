"""FCN-32s on CamVid (11 classes, SegNet's 367/101/233 split at 360x480).

  jaxseg convert-weights --arch vgg16 --input vgg16-397923af.pth --output weights/vgg16.npz
  jaxseg train --config experiments/camvid_fcn32s.py --workdir workdirs/camvid_fcn32s \
      --config.model.init_from=weights/vgg16.npz --config.data.manual_dir=PATH/TO/CamVid

Hardware assumed: 1 GPU (batch 8 of whole 360x480 images; on N devices keep the global batch).
Paper: none for this variant (Yu & Koltun, ICLR 2016, list FCN-8 at 52.0 mean IoU on CamVid
test; see camvid_fcn8s.py).
Recipe: camvid_fcn8s.py's, with the FCN-32s head.
"""

import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('camvid_fcn8s.py'))
  config.model.name = 'fcn32s'
  return config
