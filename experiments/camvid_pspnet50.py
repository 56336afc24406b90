"""PSPNet-50 on CamVid (11 classes, SegNet's 367/101/233 split at 360x480).

  jaxseg train --config experiments/camvid_pspnet50.py --workdir workdirs/camvid_pspnet50 \
      --config.model.init_from=weights/resnet50.npz --config.data.manual_dir=PATH/TO/CamVid

Hardware assumed: 8 GPUs (global batch 16 of 360x480 crops, cross-replica BN).
Paper: no CamVid number in the PSPNet paper (for scale: Dilation8 65.3 mean IoU on CamVid test,
Yu & Koltun, ICLR 2016).
Recipe: the paper's VOC recipe (pspnet50_voc.py: SGD 0.01 poly, head lr x10, aux 0.4, scale
0.5-2, rotation, blur, flips) at CamVid's resolution, 10k steps; single-scale whole-image
evaluation on the test split (--config.eval.mode=multiscale --config.eval.flip=true for the
paper's multi-scale + flip protocol).
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('pspnet50_voc.py'))
  config.data.dataset = 'camvid'
  config.data.num_classes = 11
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.crop_size = (360, 480)
  config.data.eval_size = (360, 480)
  config.train.num_steps = 10_000
  config.train.eval_every = 1000
  config.eval.mode = 'whole'
  config.eval.flip = False
  config.eval.scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  config.eval.crop_size = (360, 480)
  config.eval.stride = (240, 320)
  return config
