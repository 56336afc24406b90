"""Demo: a small FCN-8s on the embedded synthetic_shapes dataset, trained on the CPU.

  make demo            (= jaxseg demo --workdir workdirs/demo)
  jaxseg train --config experiments/demo.py --workdir workdirs/demo

Hardware assumed: 2 CPU cores. The dataset (3,000 train / 300 val procedural 128x128 scenes of
six shape classes on textured backgrounds) is generated on first use, no download.
Expected: see the note in `jaxseg demo`'s output; no paper number (synthetic data).
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('default.py'))
  config.model.name = 'fcn8s'
  config.model.width = 0.125  # VGG16 channels / 8: 64 .. 512 -> 8 .. 64; fc6/fc7 512.
  config.model.geometry = 'same'
  config.model.sync_bn = False  # No BatchNorm in FCN.
  config.model.dropout_rate = 0.0
  config.data.dataset = 'synthetic_shapes'
  config.data.train_split = 'train'
  config.data.eval_split = 'val'
  config.data.num_classes = 7
  config.data.crop_size = (96, 96)
  config.data.eval_size = (128, 128)
  config.data.scale_range = (0.75, 1.25)
  config.data.shuffle_buffer = 512
  config.optim.name = 'adam'
  config.optim.learning_rate = 2e-3
  config.optim.weight_decay = 0.0
  config.optim.schedule = 'cosine'
  config.optim.warmup_steps = 50
  config.train.batch_size = 16
  config.train.num_steps = 1200
  config.train.log_every = 50
  config.train.eval_every = 0  # Only at the end.
  config.train.checkpoint_every = 400
  config.train.keep_checkpoints = 1
  config.eval.batch_size = 20
  config.eval.mode = 'whole'
  return config
