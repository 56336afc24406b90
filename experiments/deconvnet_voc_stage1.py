"""DeconvNet on PASCAL VOC 2012, training stage 1: object-centred windows (Noh et al., ICCV 2015).

  jaxseg train --config experiments/deconvnet_voc_stage1.py \
      --workdir workdirs/deconvnet_voc_stage1 \
      --config.model.init_from=weights/VGG_ILSVRC_16_layers.caffemodel

Then experiments/deconvnet_voc_stage2.py continues from this workdir.
Hardware assumed: 1 GPU, as the original (batch 8, BN statistics over those 8; iter_size 8 sums
8 of them into one update of 64). On N devices keep batch_size 64 and set
--config.train.grad_accum_steps=8/N (BN then sees 8 images per device per micro-batch:
config.model.sync_bn=False keeps them per device, as the original's single GPU).
Paper (sec. 4.2, 5.1): stage 1 trains on ~0.2M object windows; DeconvNet after both stages: 69.6
mean IoU on VOC 2012 test (70.5 with the dense CRF, 72.5 for EDeconvNet + CRF), VOC 2012 train
with SBD's annotations, no external data. This stage alone has no reported number.
Recipe as HyeonwooNoh/DeconvNet training/001_stage_1/{solver.prototxt,stage_1_train.prototxt,
start_train.sh}: init from VGG16's ImageNet convolutions (the original loads
VGG_ILSVRC_16_layers_conv.caffemodel, the same weights with fc6/fc7 as convolutions; either file
loads, fc6 becoming DeconvNet's 7x7 valid convolution), BGR mean-subtracted 0-255 input; every
example is one object's tight box enlarged 1.2x into a square window, only that object labelled
(jaxseg.data.windows), classes balanced by repetition, resized to 250x250 (IMAGE_SEG_DATA
new_width/new_height 250), random 224 crop and mirror; SGD lr 0.01 'step' (x0.1 every 9,000
updates), momentum 0.9, weight decay 5e-4 on weights (biases: lr x2, no decay: blobs_lr 1 2,
weight_decay 1 0), 20,000 updates of 64 = 8 x iter_size 8. The original's prepared crops
(VOC_OBJECT.tar.gz) are not public; windows are cut from train_aug's instance annotations.
Evaluation: DeconvNet's instance-wise inference on val (the paper reports VOC 2012 test): the
top 50 proposals of at least 112 pixels a side, each resized to 224x224, max-aggregated.
Selective search computes them here; for the paper's EdgeBoxes pass a proposals file with
--config.eval.proposals=PATH (jaxseg.inference.proposals). Evaluated at the end only
(proposals per val image make each evaluation long).
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('default.py'))
  config.model.name = 'deconvnet'
  config.model.dtype = 'bfloat16'
  config.model.sync_bn = False  # BN over each device's 8 images, as the original's one GPU.
  config.data.train_split = 'train_aug'
  config.data.eval_split = 'val'
  config.data.normalization = 'caffe'
  config.data.windows = 'objects'
  config.data.window_context = 1.2
  config.data.window_resize = (250, 250)
  config.data.balance_classes = True
  config.data.crop_size = (224, 224)
  config.data.scale_range = (1.0, 1.0)
  config.data.hflip = True
  config.data.eval_size = (512, 512)
  config.optim.learning_rate = 0.01
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.decay = 'kernels'
  config.optim.bias_lr_mult = 2.0
  config.optim.schedule = 'step'
  config.optim.step_size = 9000
  config.optim.gamma = 0.1
  config.train.batch_size = 64
  config.train.grad_accum_steps = 8
  config.train.num_steps = 20_000
  config.train.eval_every = 0
  config.train.checkpoint_every = 500  # The solver's snapshot interval.
  config.eval.batch_size = 8
  config.eval.mode = 'proposals'
  config.eval.proposals = 'selective_search'
  config.eval.max_proposals = 50
  config.eval.min_proposal_size = 112
  config.eval.proposal_size = (224, 224)
  config.eval.aggregate = 'max'
  return config
