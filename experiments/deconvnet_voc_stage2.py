"""DeconvNet on PASCAL VOC 2012, training stage 2: proposal windows (Noh et al., ICCV 2015).

  jaxseg train --config experiments/deconvnet_voc_stage2.py \
      --workdir workdirs/deconvnet_voc_stage2 \
      --config.model.init_from=workdirs/deconvnet_voc_stage1

Starts from stage 1's result (experiments/deconvnet_voc_stage1.py). Then, as the original's
training/003_make_bn_layer_testable and inference/run_demo.m (PROPOSALS: EdgeBoxes boxes as a
jaxseg.inference.proposals file; the original's cached boxes_padded .mat files need
--config.eval.proposal_context=1.0; without it, selective search):

  jaxseg bn-stats --workdir workdirs/deconvnet_voc_stage2 --output workdirs/deconvnet_voc
  jaxseg eval --workdir workdirs/deconvnet_voc --proposals PROPOSALS                    # DeconvNet
  jaxseg eval --workdir workdirs/deconvnet_voc --proposals PROPOSALS --crf              # + CRF
  jaxseg eval --workdir workdirs/deconvnet_voc --proposals PROPOSALS --crf \
      --ensemble-with workdirs/fcn8s_voc                                 # EDeconvNet + CRF
Hardware assumed: 1 GPU, as the original (batch 8, BN statistics over those 8; iter_size 8 sums
8 of them into one update of 64). On N devices keep batch_size 64 and set
--config.train.grad_accum_steps=8/N.
Paper (sec. 4.2, 5.1, Table 1): stage 2 trains on ~2.7M proposal windows; the result, DeconvNet,
scores 69.6 mean IoU on VOC 2012 test (70.5 with the dense CRF, 72.5 for EDeconvNet + CRF,
--config.eval.ensemble_with / --config.eval.crf), VOC 2012 train with SBD's annotations, no
external data.
Recipe as HyeonwooNoh/DeconvNet training/002_stage_2/{solver.prototxt,stage_2_train.prototxt,
start_train.sh}: init from stage 1 (stage_1_train_result.caffemodel there); every example is an
object-proposal window overlapping a ground-truth object (IoU >= 0.5), enlarged 1.2x, every class
labelled (WINDOW_SEG_DATA), classes balanced by repetition, resized to 250x250, random 224 crop
and mirror; SGD lr 0.01 'step' (x0.1 every 10,000 updates), momentum 0.9, weight decay 5e-4 on
weights (biases lr x2, no decay), 40,000 updates of 64 = 8 x iter_size 8. The original's proposal
windows (stage_2_train_imgset) are not public: windows are sampled around each object
(jaxseg.data.windows.sample_proposal, 14 per object per epoch); to train on EdgeBoxes boxes
instead pass --config.data.proposals=PATH (a jaxseg.inference.proposals file keyed by image id).
Evaluation: instance-wise inference on val (the paper reports VOC 2012 test), top 50
proposals >= 112 pixels, 224x224, max-aggregated; selective search here, or the original's
cached EdgeBoxes with --config.eval.proposals=PATH. Evaluated at the end only.
"""
import pathlib

from jaxseg.config_loading import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('deconvnet_voc_stage1.py'))
  config.data.windows = 'proposals'
  config.data.proposal_min_iou = 0.5
  config.optim.step_size = 10_000
  config.train.num_steps = 40_000
  return config
