"""Datasets: importing this package registers jaxseg's TFDS builders.

  'voc2012_segmentation'  VOC 2012 + SBD (configs 'full', 'voc_only'); see voc.py
  'camvid'                SegNet's CamVid; see camvid.py
  'ade20k'                ADE20K SceneParsing 2016 (150 classes, 'other' -> 255); see ade20k.py
  'cityscapes_fine'       Cityscapes gtFine, 19 trainIds (255 = ignore); see cityscapes.py
  'synthetic_shapes'      the embedded procedural demo dataset (configs 'default', 'tiny')
  'segmentation_folder'   your own images and masks (config.data.folder*); see folder.py

Example features: image uint8 (H, W, 3), label uint8 (H, W) with 255 = ignore, id (text); VOC and
synthetic_shapes also hold object instances (DeconvNet's object windows): instance uint8 (H, W, 1)
(0 none, k = object k, 255 ignore) and objects {label int32 (n,), box int32 (n, 4) (y0, x0, y1, x1),
end exclusive} with entry k-1 describing instance k.
"""
from jaxseg.data import ade20k
from jaxseg.data import camvid
from jaxseg.data import cityscapes
from jaxseg.data import folder
from jaxseg.data import synthetic
from jaxseg.data import voc
from jaxseg.data.classes import DatasetSpec, dataset_spec, DATASET_NAMES

__all__ = ['DatasetSpec', 'dataset_spec', 'DATASET_NAMES', 'ade20k', 'camvid', 'cityscapes',
           'folder', 'synthetic', 'voc']
