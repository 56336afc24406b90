"""A short CPU run: a narrow FCN-8s on CamVid at half resolution (a real-data smoke test).

  jaxseg train --config experiments/camvid_fcn8s_cpu.py --workdir workdirs/camvid_cpu \
      --config.data.manual_dir=../shared/data/camvid

Hardware assumed: 2 CPU cores, about 30-40 minutes (~1.2 s per step). No pretrained weights.
Expected: about 0.50 mean IoU on val (measured 0.506 after 1,500 steps, 36 min on 2 shared
cores). Paper: none (a reduced setting; compare with camvid_fcn8s.py, FCN-8 52.0 on test).
Recipe: width 1/4 FCN-8s trained from scratch with Adam on half-size (180x240) images, evaluated
on the val split at half size (eval.mode multiscale with the single scale 0.5 resizes the
full-size image down and the prediction back up).
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('camvid_fcn8s.py'))
  config.model.width = 0.25
  config.model.dtype = 'float32'
  config.model.dropout_rate = 0.0
  config.model.learn_upsampling = True  # A small CPU net: its bilinear upsampling is learned.
  config.data.eval_split = 'val'
  config.data.crop_size = (160, 224)
  config.data.scale_range = (0.4, 0.7)
  config.data.shuffle_buffer = 400
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
  config.eval.batch_size = 4
  config.eval.mode = 'multiscale'
  config.eval.scales = (0.5,)
  config.eval.crop_size = (180, 240)  # Half-size 360x480 images: one whole-image window.
  config.eval.stride = (180, 240)
  return config
