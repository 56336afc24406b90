"""A CPU run on your own images and masks: a narrow FCN-8s from scratch ('segmentation_folder').

  jaxseg train --config experiments/folder_fcn8s_cpu.py --workdir workdirs/folder_cpu \
      --config.data.folder=/data/my_dataset --config.data.folder_classes=classes.csv \
      --config.data.num_classes=3

The folder holds images/ and masks/ paired by file name (README "Your own data"; a VOC export
adds --config.data.folder_images=JPEGImages --config.data.folder_masks=SegmentationClass
--config.data.folder_splits=ImageSets/Segmentation). num_classes is the number of classes of the
table (without a table: the largest mask value + 1); a wrong count stops the run before step 1
with the right number. Then
  jaxseg predict --workdir workdirs/folder_cpu --input photos/ --output predictions/
Hardware assumed: 2 CPU cores. Measured on CamVid laid out as a folder (468 480x360 pairs,
prepared in under a minute): 3.5 s per step of 8 224x224 crops on 2 cores shared with other jobs
(loss 2.09 -> 1.10 in 60 steps), so 1,500 steps take up to 1.5 hours; idle cores are faster. No
pretrained weights: a smoke test of your data and labels end to end, not a good model (for
that: folder_pspnet50.py on a GPU). Paper: none.
Recipe: camvid_fcn8s_cpu.py's (width 1/4 FCN-8s, learned upsampling, Adam 1e-3 with warmup and
cosine decay) on 224x224 crops at scale 0.75-1.25; whole-image evaluation of the seeded 10% val
split (config.data.folder_val_fraction) at full size, padded to config.data.eval_size (raise it
to your largest image).
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('default.py'))
  config.model.name = 'fcn8s'
  config.model.width = 0.25
  config.model.geometry = 'same'
  config.model.dtype = 'float32'
  config.model.sync_bn = False  # No BatchNorm in FCN.
  config.model.dropout_rate = 0.0
  config.model.learn_upsampling = True  # A small CPU net: its bilinear upsampling is learned.
  config.data.dataset = 'segmentation_folder'
  config.data.num_classes = 2  # Set to your class count (--config.data.num_classes=N).
  config.data.train_split = 'train'
  config.data.eval_split = 'val'
  config.data.crop_size = (224, 224)
  config.data.eval_size = (512, 512)
  config.data.scale_range = (0.75, 1.25)
  config.data.shuffle_buffer = 512
  config.optim.name = 'adam'
  config.optim.learning_rate = 1e-3
  config.optim.weight_decay = 0.0
  config.optim.schedule = 'cosine'
  config.optim.warmup_steps = 50
  config.train.batch_size = 8
  config.train.num_steps = 1500
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 1
  config.eval.batch_size = 4
  config.eval.mode = 'whole'
  return config
