"""Weights from every source: ImageNet backbones and the authors' released models.

  convert.py       the archs, and torchvision state dict -> Flax leaves (vgg16, resnet50/101)
  semseg.py        hszhao/semseg's deep-stem ResNets and trained PSPNet checkpoints
  caffe_proto.py   .caffemodel reader/writer over protobuf's wire format (no Caffe needed)
  caffe_fcn.py     Caffe VGG16 and FCN's released models
  caffe_pspnet.py  PSPNet's released Caffe models
  workdir.py       a jaxseg workdir/checkpoint as weights (FCN's staged training)
  files.py         one `read_weights(path)` for all of them; converted .npz I/O
  load.py          load_pretrained into a fresh model's variables (init_from, eval --weights)
  command.py       `jaxseg convert-weights` (register(subparsers) for jaxseg.cli)
"""
from jaxseg.weights.command import convert_weights, register
from jaxseg.weights.convert import (ARCHS, MODEL_ARCH, TORCHVISION_NORMALIZATION,
                                    PretrainedWeights, convert_state_dict, guess_arch)
from jaxseg.weights.files import (read_metadata, read_npz, read_state_dict, read_weights,
                                  save_npz, weights_normalization)
from jaxseg.weights.load import (LoadReport, check_init_from, check_normalization,
                                 init_from_config, load_pretrained, normalization_name)
from jaxseg.weights.workdir import model_fields_of

__all__ = [
    'ARCHS', 'MODEL_ARCH', 'TORCHVISION_NORMALIZATION', 'LoadReport', 'PretrainedWeights',
    'check_init_from', 'check_normalization', 'convert_state_dict', 'convert_weights',
    'guess_arch', 'init_from_config', 'load_pretrained', 'model_fields_of', 'normalization_name',
    'read_metadata',
    'read_npz', 'read_state_dict', 'read_weights', 'register', 'save_npz',
    'weights_normalization',
]
