"""FCN-32s on PASCAL VOC from torchvision's VGG16 (RGB, ImageNet mean/std input).

  jaxseg convert-weights --input vgg16-397923af.pth --output weights/vgg16.npz
  jaxseg train --config experiments/fcn32s_voc_torchvision.py \
      --workdir workdirs/fcn32s_voc_torchvision --config.model.init_from=weights/vgg16.npz

torchvision's VGG16 (a PyTorch-trained network, not the Caffe one FCN used) expects RGB in
[0, 1] normalised by the ImageNet mean/std, i.e. inputs about 1/58 of Caffe's 0-255 scale. Only
conv1_1 sees that scale: with w' = 58 w computing the same features, its gradient is 1/58 and its
relative step 1/58^2 of Caffe's, while every later layer's relative step is unchanged. So the
fcn32s_voc.py solver (unnormalised loss, lr 1e-10, momentum 0.99) carries over unchanged: every
layer but conv1_1 takes the reference's relative steps, and conv1_1 (generic edge filters, which
FCN's fine-tuning barely moves at lr 1e-10 anyway) stays close to its ImageNet values. The
staged fcn16s/fcn8s recipes continue from this workdir with --config.data.normalization=imagenet.
No published number (the paper used Caffe's VGG16).
Hardware assumed: as fcn32s_voc.py (1 GPU, batch 1, whole images).
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('fcn32s_voc.py'))
  config.data.normalization = 'imagenet'
  return config
