"""PSPNet-50 on your own images and masks (dataset 'segmentation_folder', jaxseg/data/folder.py).

  jaxseg train --config experiments/folder_pspnet50.py --workdir workdirs/folder_pspnet50 \
      --config.data.folder=/data/my_dataset --config.data.folder_classes=classes.csv \
      --config.data.num_classes=3 --config.model.init_from=initmodel/resnet50_v2.pth

The folder holds images/ and masks/ paired by file name (README "Your own data"); a VOC export
adds --config.data.folder_images=JPEGImages --config.data.folder_masks=SegmentationClass
--config.data.folder_splits=ImageSets/Segmentation --config.data.folder_classes=labelmap.txt.
num_classes is the number of classes of the table (without a table: the largest mask value + 1);
a wrong count stops the run before step 1 with the right number. `init_from` is semseg's
ImageNet ResNet-50 (hszhao/semseg "initmodel"); with torchvision's resnet50-0676ba61.pth add
--config.model.backbone=torchvision. Then
  jaxseg predict --workdir workdirs/folder_pspnet50 --input photos/ --output predictions/
writes each mask in your table's colours.
Hardware assumed: 8 GPUs (global batch 16 = 2 per device, 473x473 crops, cross-replica BN), as
pspnet50_voc.py; on fewer devices keep the global batch (--config.train.grad_accum_steps=2 if
memory runs short). Validation images must fit config.data.eval_size (default 512x512: raise it
to your largest image); evaluation resizes each image's long side to 512 (eval.base_size).
Paper: none (your data). Recipe: pspnet50_voc.py (SGD 0.01 poly, head lr x10, aux loss 0.4,
semseg augmentation: scale 0.5-2, rotate +-10 with p 0.5, blur p 0.5, flip, 473 crop) for 10k
steps (160k crops: ~50 epochs of 3,200 images; scale config.train.num_steps to ~50 epochs of
yours); val is the seeded 10% (config.data.folder_val_fraction) unless split lists are given.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('pspnet50_voc.py'))
  config.data.dataset = 'segmentation_folder'
  config.data.num_classes = 2  # Set to your class count (--config.data.num_classes=N).
  config.data.train_split = 'train'
  config.data.eval_split = 'val'
  config.train.num_steps = 10_000
  config.train.eval_every = 1000
  config.train.checkpoint_every = 500
  return config
