"""ImageNet-pretrained backbones: torchvision VGG16 / ResNet-50/101 weights for jaxseg models.

  convert.py   torchvision state dict -> Flax leaves (the explicit name/layout mapping)
  files.py     .pth (torch.load weights_only) and converted .npz (NumPy only) I/O
  load.py      load_pretrained: backbone into a fresh model's variables (config.model.init_from)
  command.py   `jaxseg convert-weights` (register(subparsers) for jaxseg.cli)
"""
from jaxseg.weights.command import convert_weights, register
from jaxseg.weights.convert import (ARCHS, MODEL_ARCH, TORCHVISION_NORMALIZATION,
                                    PretrainedWeights, convert_state_dict, guess_arch)
from jaxseg.weights.files import (read_metadata, read_npz, read_state_dict, read_weights,
                                  save_npz, weights_normalization)
from jaxseg.weights.load import (LoadReport, check_init_from, check_normalization,
                                 init_from_config, load_pretrained, normalization_name)

__all__ = [
    'ARCHS', 'MODEL_ARCH', 'TORCHVISION_NORMALIZATION', 'LoadReport', 'PretrainedWeights',
    'check_init_from', 'check_normalization', 'convert_state_dict', 'convert_weights',
    'guess_arch', 'init_from_config', 'load_pretrained', 'normalization_name', 'read_metadata',
    'read_npz', 'read_state_dict', 'read_weights', 'register', 'save_npz',
    'weights_normalization',
]
