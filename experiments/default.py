"""Default configuration: every field jaxseg reads, documented.

Recipes in this folder import this module and override a few fields. Run with
  jaxseg train --config experiments/<recipe>.py --workdir DIR [--config.train.batch_size=8 ...]
The returned ConfigDict is locked: a misspelt override fails with the field's name.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds parameter init, dropout and every data augmentation.

  # ---------------------------------------------------------------- model
  config.model = ml_collections.ConfigDict()
  config.model.name = 'fcn8s'  # fcn32s | fcn16s | fcn8s | deconvnet | pspnet50 | pspnet101
  config.model.width = 1.0  # Channel-width multiplier (< 1 for tests and CPU demos).
  config.model.geometry = 'same'  # FCN only: 'caffe' (pad 100 + offset crops, as the paper) | 'same'.
  config.model.dtype = 'float32'  # Compute dtype: float32 on CPU, bfloat16 on GPU/TPU. Params stay float32.
  config.model.sync_bn = True  # Cross-replica BatchNorm over the 'data' mesh axis (False: per-device).
  config.model.dropout_rate = -1.0  # < 0: the paper's value for the model.
  # Recompute activations in the backward pass instead of keeping them: 'none' | 'block' (each
  # ResNet bottleneck / VGG block's convs; PSPNet-101 at 473: 2663 -> 868 MiB a crop, +24% flops) |
  # 'stage' (each ResNet layer1..4 / VGG block with its pool). Parameters are the same.
  config.model.remat = 'none'
  # Pretrained weights: a backbone (torchvision/semseg .pth, Caffe .caffemodel, converted .npz)
  # or a whole trained model (an FCN/PSPNet .caffemodel, a semseg checkpoint, a jaxseg workdir or
  # one of its checkpoint folders, e.g. FCN-16s from a trained FCN-32s workdir); '' = random.
  config.model.init_from = ''
  # PSPNet's ResNet: 'torchvision' (7x7 stem, torchvision's dilation) | 'semseg' (the authors':
  # deep 3x3 x3 stem, every layer3/layer4 block dilated; hszhao/semseg) | 'caffe' (deep stem,
  # stride on the 1x1 convs, as the authors' Caffe models).
  config.model.backbone = 'torchvision'
  # FCN: pool4/pool3 are multiplied by these before scoring (at-once FCN-8s: 0.01, 0.0001).
  config.model.skip_scales = (1.0, 1.0)
  config.model.learn_upsampling = False  # FCN: False = bilinear upsampling frozen (the reference).

  # ---------------------------------------------------------------- data
  config.data = ml_collections.ConfigDict()
  config.data.dataset = 'voc2012_segmentation'  # TFDS builder name (registered by jaxseg.data).
  config.data.train_split = 'train_aug'
  config.data.eval_split = 'val'
  config.data.data_dir = ''  # TFDS data_dir; '' = TFDS default (~/tensorflow_datasets).
  config.data.manual_dir = ''  # Folder holding already downloaded/extracted sources.
  # Your own data (dataset 'segmentation_folder', jaxseg/data/folder.py): images and masks paired
  # by file name without extension. Relative folder_* paths are under config.data.folder.
  config.data.folder = ''  # The dataset's root folder (an absolute path keeps workdirs portable).
  config.data.folder_images = 'images'  # Image subfolder; VOC exports: JPEGImages.
  config.data.folder_masks = 'masks'  # Mask subfolder; VOC exports: SegmentationClass.
  # Class table: JSON, CSV (name,r,g,b or name,value rows), a CVAT/VOC labelmap.txt
  # ('name:r,g,b::') or a names .txt (labelme2voc class_names.txt); '' = index masks whose values
  # 0..max are the classes (named '0', '1', ...).
  config.data.folder_classes = ''
  config.data.folder_mask_format = 'auto'  # auto (by PIL mode) | index | palette | rgb (colours).
  config.data.folder_ignore_value = 255  # Index/palette value that means ignore (255 always does).
  config.data.folder_ignore_colour = ()  # RGB colour that means ignore, e.g. (0, 0, 0); () = none.
  # Folder of split lists train.txt, val.txt (, test.txt, ...), one stem per line (VOC exports:
  # ImageSets/Segmentation); '' = val is a seeded folder_val_fraction of the pairs.
  config.data.folder_splits = ''
  config.data.folder_val_fraction = 0.1
  config.data.folder_split_seed = 0
  config.data.num_classes = 21
  config.data.ignore_label = 255
  config.data.normalization = 'imagenet'  # 'imagenet' (RGB mean/std) | 'caffe' (BGR, mean only, 0-255).
  config.data.crop_size = (320, 320)  # Train crop (H, W): static shape.
  config.data.eval_size = (512, 512)  # Every eval image padded to this (H, W) with label 255.
  config.data.scale_range = (0.5, 2.0)  # Random rescale factor range; (1.0, 1.0) disables.
  config.data.hflip = True
  config.data.rotate_degrees = 0.0  # PSPNet: 10.
  config.data.blur_prob = 0.0  # PSPNet: 0.5 (Gaussian blur).
  config.data.photometric = False  # Brightness/contrast/saturation jitter.
  # Order and placement of the train augmentation: 'jaxseg' (blur, scale, rotate+crop, flip;
  # crop padding bottom/right) | 'semseg' (hszhao/semseg transform.py: scale, rotate with p 0.5,
  # blur, flip, crop with centred padding).
  config.data.augmentation = 'jaxseg'
  # What one training example is (DeconvNet's two-stage training, jaxseg.data.windows):
  # 'image' (a crop of the whole image) | 'objects' (stage 1: a window around each ground-truth
  # object, only that object labelled) | 'proposals' (stage 2: object-proposal windows that
  # overlap a ground-truth object, every class labelled). 'objects'/'proposals' need a dataset
  # with instances (voc2012_segmentation, synthetic_shapes).
  config.data.windows = 'image'
  config.data.window_context = 1.2  # The box is enlarged this much about its centre (paper 5.1).
  config.data.window_resize = (250, 250)  # Each window is resized to this, then crop_size is cut.
  config.data.balance_classes = False  # Repeat windows of rare classes up to the commonest's count.
  config.data.proposals = ''  # Stage 2: proposals file for train windows; '' = sampled around objects.
  config.data.proposal_min_iou = 0.5  # Stage 2: a proposal window is used if IoU >= this with an object.
  config.data.shuffle_buffer = 1024
  config.data.prefetch = 2  # Batches prefetched to the devices.
  config.data.num_parallel_calls = -1  # tf.data parallelism; -1 = AUTOTUNE.

  # ---------------------------------------------------------------- loss
  config.loss = ml_collections.ConfigDict()
  config.loss.normalize = True  # Mean over valid pixels; False = FCN's unnormalised sum.
  config.loss.aux_weight = 0.4  # Weight of PSPNet's auxiliary loss (ignored by models without one).
  config.loss.class_weights = ()  # Empty = uniform; else one weight per class.

  # ---------------------------------------------------------------- optimiser
  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'sgd'  # sgd | adam | adamw
  config.optim.learning_rate = 0.01
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.weight_decay = 1e-4
  config.optim.schedule = 'poly'  # poly | constant | cosine | step
  config.optim.poly_power = 0.9
  config.optim.step_size = 10000  # schedule 'step' (Caffe's): lr x gamma every step_size updates.
  config.optim.gamma = 0.1
  config.optim.warmup_steps = 0
  config.optim.head_lr_mult = 1.0  # LR multiplier for layers not in the pretrained backbone (PSPNet: 10).
  config.optim.grad_clip_norm = 0.0  # 0 = no clipping.
  config.optim.bias_lr_mult = 1.0  # LR multiplier of biases (the FCN Caffe solvers: 2).
  # Weight decay on 'kernels' (not biases/BN; FCN's decay_mult 0 on biases) | 'all' (semseg's SGD).
  config.optim.decay = 'kernels'

  # ---------------------------------------------------------------- training loop
  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 16  # Global batch per update, divisible by devices x grad_accum_steps.
  # > 1: each update sums the gradients of this many micro-batches (batch_size / k each): the same
  # update as one step of the whole batch, in 1/k of the activation memory; BatchNorm statistics
  # are per micro-batch (Caffe's iter_size).
  config.train.grad_accum_steps = 1
  config.train.num_steps = 30000
  config.train.log_every = 50
  config.train.eval_every = 2000  # 0 = only at the end; -1 = never (e.g. training on trainval).
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 3  # Last N kept, plus the best by mean IoU.

  # ---------------------------------------------------------------- evaluation
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 8  # Global eval batch; the last batch is padded, never dropped.
  config.eval.mode = 'whole'  # whole | slide | multiscale | proposals (DeconvNet's, see below)
  # multiscale: each image's long side is resized to base_size x scale (semseg's test.py; VOC and
  # ADE20K 512, Cityscapes 2048); 0 = the image's own long side x scale.
  config.eval.base_size = 0
  config.eval.crop_size = (473, 473)  # Slide window size.
  config.eval.stride = (316, 316)  # Slide window stride (PSPNet: 2/3 of the crop).
  config.eval.scales = (1.0,)  # Multi-scale factors (PSPNet: 0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
  config.eval.flip = False  # Average with the horizontally flipped prediction.
  config.eval.num_examples = -1  # < 0: the whole split.
  # eval.mode='proposals' (DeconvNet's instance-wise inference): each image's object proposals
  # (a proposals file or folder, see jaxseg.inference.proposals, or 'selective_search'), at most
  # max_proposals of them (in score order) whose window is at least min_proposal_size on both
  # sides, each resized to proposal_size; the window score maps are aggregated by 'max' (the
  # original code) or 'mean'.
  config.eval.proposals = ''
  config.eval.max_proposals = 50
  config.eval.min_proposal_size = 112
  config.eval.proposal_size = (224, 224)
  config.eval.aggregate = 'max'
  # Each proposal box is enlarged this much about its centre into its window (the paper's 1.2);
  # the original's cached EdgeBoxes (.mat 'boxes_padded') are already enlarged: use 1.0 for them.
  config.eval.proposal_context = 1.2
  # A second model whose prediction is combined with this one's (EDeconvNet: DeconvNet + FCN-8s):
  # a workdir, or a weights file with eval.ensemble_config (its recipe); '' = none.
  config.eval.ensemble_with = ''
  config.eval.ensemble_config = ''
  # 'product' (DeconvNet's code: its max-aggregated scores x max(0, FCN scores)) | 'mean' (the
  # paper: the mean of the two class-probability maps).
  config.eval.ensemble_rule = 'product'
  config.eval.crf = False  # Refine the class probabilities with the dense CRF (config.crf).

  # ---------------------------------------------------------------- dense CRF
  # Fully connected CRF (Kraehenbuehl & Koltun 2011), mean-field, Potts compatibility; defaults are
  # DeconvNet's (inference/generate_EDeconvNet_CRF_results.m). jaxseg.ops.crf.
  config.crf = ml_collections.ConfigDict()
  config.crf.iterations = 10
  config.crf.gaussian_sxy = 3.0  # Smoothness kernel: position stddev (pixels) ...
  config.crf.gaussian_compat = 3.0  # ... and its Potts weight.
  config.crf.bilateral_sxy = 20.0  # Appearance kernel: position stddev (pixels),
  config.crf.bilateral_srgb = 3.0  # colour stddev (0-255 RGB),
  config.crf.bilateral_compat = 5.0  # and its Potts weight.
  return config
