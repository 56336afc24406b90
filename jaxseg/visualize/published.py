"""Published PASCAL VOC 2012 test results of the papers jaxseg reproduces, with their sources."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses

from jaxseg.data import classes


@dataclasses.dataclass(frozen=True)
class PublishedResult:
  """A published PASCAL VOC 2012 *test* result: mean IoU and the per-class IoUs printed (%)."""
  name: str
  mean_iou: float
  per_class_iou: Mapping[str, float]  # VOC class name -> IoU %; classes not printed are absent.
  source: str


_VOC_OBJECTS = classes.VOC_CLASSES[1:]
# Only numbers found in a source are listed; the other cells print as a dash.
PUBLISHED_VOC12_TEST: dict[str, PublishedResult] = {
    # Per-class: Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions",
    # ICLR 2016, Table 2 (VOC 2012 test, the authors' public FCN-8s); mean 62.2 also in
    # Noh et al. 2015, Table 1. Background IoU is not printed there.
    'FCN-8s': PublishedResult('FCN-8s', 62.2, dict(zip(_VOC_OBJECTS, (
        76.8, 34.2, 68.9, 49.4, 60.3, 75.3, 74.7, 77.6, 21.4, 62.5, 46.8, 71.8, 63.9, 76.5,
        73.9, 45.2, 72.4, 37.4, 70.9, 55.1))),
        'Yu & Koltun, ICLR 2016, Table 2 (per class); Long et al., CVPR 2015'),
    # Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015:
    # DeconvNet alone 69.6, EDeconvNet+CRF (ensemble with FCN-8s + CRF) 72.5 (also the
    # authors' README). Per-class values (their Table 1) not verified here: left blank.
    'DeconvNet': PublishedResult('DeconvNet', 69.6, {}, 'Noh et al., ICCV 2015'),
    'EDeconvNet+CRF': PublishedResult('EDeconvNet+CRF', 72.5, {}, 'Noh et al., ICCV 2015'),
    # Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017, Table 6: ResNet-101 trained on
    # VOC 2012 (train_aug) without MS-COCO: 82.6; with MS-COCO pre-training: 85.4 (abstract).
    # Per-class values not verified here: left blank.
    'PSPNet': PublishedResult('PSPNet', 82.6, {}, 'Zhao et al., CVPR 2017, Table 6'),
    'PSPNet (COCO pre-trained)': PublishedResult('PSPNet (COCO pre-trained)', 85.4, {},
                                                 'Zhao et al., CVPR 2017'),
}


def published_for(class_names: Sequence[str]) -> tuple[str, ...]:
  """Names of PUBLISHED_VOC12_TEST rows that apply: all for VOC's 21 classes, else none."""
  return tuple(PUBLISHED_VOC12_TEST) if tuple(class_names) == classes.VOC_CLASSES else ()
