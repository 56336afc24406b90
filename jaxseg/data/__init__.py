"""Datasets: importing this package registers jaxseg's TFDS builders.

  'voc2012_segmentation'  VOC 2012 + SBD (configs 'full', 'voc_only'); see voc.py
  'camvid'                SegNet's CamVid; see camvid.py
  'synthetic_shapes'      the embedded procedural demo dataset (configs 'default', 'tiny')

Example features: image uint8 (H, W, 3), label uint8 (H, W) with 255 = ignore, id (text).
"""
from jaxseg.data import camvid
from jaxseg.data import synthetic
from jaxseg.data import voc
from jaxseg.data.classes import DatasetSpec, dataset_spec, DATASET_NAMES

__all__ = ['DatasetSpec', 'dataset_spec', 'DATASET_NAMES', 'camvid', 'synthetic', 'voc']
