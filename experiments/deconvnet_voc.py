"""DeconvNet on PASCAL VOC 2012 (Noh, Hong & Han, ICCV 2015).

  jaxseg convert-weights --arch vgg16 --input vgg16-397923af.pth --output weights/vgg16.npz
  jaxseg train --config experiments/deconvnet_voc.py --workdir workdirs/deconvnet_voc \
      --config.model.init_from=weights/vgg16.npz

Hardware assumed: 8 GPUs (global batch 64 = 8 per device, 224x224 crops).
Paper: 69.6 mean IoU on VOC2012 test (DeconvNet alone; 70.5 with CRF, 72.5 for the EDeconvNet
ensemble with FCN-8s + CRF), trained on VOC 2012 train with SBD's extra annotations and no
external data (no COCO); inference aggregates the network over the top 50 of ~2,000 EdgeBoxes
object proposals per image.
Recipe: VGG16 with BatchNorm (BN starts from scratch; only convolutions are imported), SGD 0.01
momentum 0.9 weight decay 5e-4, 224 crops of images rescaled to about half size (the paper
resizes examples to 250x250 and crops 224), flips. The paper's two-stage curriculum
(object-centred crops, then proposal windows) and its proposal-based inference are not
implemented yet; this recipe uses plain crops and sliding-window inference on the half-size
image with the training crop, the closest image-level equivalent.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('default.py'))
  config.model.name = 'deconvnet'
  config.model.dtype = 'bfloat16'
  config.model.sync_bn = True
  config.data.train_split = 'train_aug'
  config.data.eval_split = 'val'
  config.data.crop_size = (224, 224)
  config.data.scale_range = (0.4, 0.6)
  config.data.eval_size = (512, 512)
  config.optim.learning_rate = 0.01
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.schedule = 'poly'
  config.train.batch_size = 64
  config.train.num_steps = 40_000
  config.eval.mode = 'multiscale'  # One scale (0.5), slid with 224 windows.
  config.eval.scales = (0.5,)
  config.eval.crop_size = (224, 224)
  config.eval.stride = (112, 112)
  return config
