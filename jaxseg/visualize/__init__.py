"""Pictures and tables of segmentation data and results: what notebooks and `jaxseg report` show.

One module per job; callers use the names re-exported here (`jaxseg.visualize.<name>`):
  colour        palettes (the dataset's, from jaxseg.data.classes), label -> colour, overlays,
                legends listing only the classes present
  workdir       metrics.jsonl, config.json and eval/<split>_step<N>.json of a training run
  figures       training curves, per-class IoU bars, confusion matrix, image/truth/prediction
                grids, class frequencies, augmentation, DeconvNet switches, PSPNet bins
  tables        metrics and per-class IoU as Markdown, the latter in the layout of the VOC
                leaderboard (mean first, one column per class) with published rows
  published     the VOC 2012 test numbers of the papers, with sources
  data_views    a dataset's config, examples by id, class pixel counts, augmentation of a pair,
                a sample image
  predictions   a workdir's checkpoint restored (jaxseg.inference.restore), its predictions
                plotted
  model_views   DeconvNet switches and PSPNet pyramid on an image, stage shapes and parameter
                counts

Importing this package loads NumPy, Matplotlib and jaxseg.data (for the palettes); JAX, the
models, TensorFlow and checkpoints are imported inside the functions that need them.
"""
from jaxseg.visualize.colour import (IGNORE_LABEL, class_names_for, colorize, legend_handles,
                                     overlay, palette_for, present_classes)
from jaxseg.visualize.data_views import (augment_pair, class_pixel_counts, dataset_config,
                                         load_examples, sample_image)
from jaxseg.visualize.figures import (bin_edges, normalize_confusion, plot_class_frequencies,
                                      plot_confusion_matrix, plot_pairs, plot_per_class_iou,
                                      plot_pyramid_bins, plot_segmentations, plot_training_curves,
                                      plot_unpooling, switch_offsets)
from jaxseg.visualize.model_views import (PAPER_INPUTS, Stage, deconvnet_switches,
                                          models_markdown, parameter_count, pspnet_feature_size,
                                          pspnet_pyramid, stages, stages_markdown)
from jaxseg.visualize.predictions import (checkpoint_steps, plot_predictions, restore,
                                          restore_evaluated)
from jaxseg.visualize.published import PUBLISHED_VOC12_TEST, PublishedResult, published_for
from jaxseg.visualize.tables import (DASH, images_markdown, leaderboard_markdown,
                                     metrics_markdown, per_class_markdown)
from jaxseg.visualize.workdir import (CONFIG_FILE, EVAL_DIR, METRICS_FILE, REPO_ROOT, eval_files,
                                      load_eval, read_config, read_metrics, resolve_path,
                                      split_records, worst_images)

__all__ = [
    'CONFIG_FILE', 'DASH', 'EVAL_DIR', 'IGNORE_LABEL', 'METRICS_FILE', 'PAPER_INPUTS',
    'PUBLISHED_VOC12_TEST', 'PublishedResult', 'REPO_ROOT', 'Stage', 'augment_pair',
    'bin_edges', 'checkpoint_steps', 'class_names_for', 'class_pixel_counts', 'colorize',
    'dataset_config', 'deconvnet_switches', 'eval_files', 'images_markdown',
    'leaderboard_markdown', 'legend_handles', 'load_eval', 'load_examples', 'metrics_markdown',
    'models_markdown', 'normalize_confusion', 'overlay', 'palette_for', 'parameter_count',
    'per_class_markdown', 'plot_class_frequencies', 'plot_confusion_matrix', 'plot_pairs',
    'plot_per_class_iou', 'plot_predictions', 'plot_pyramid_bins', 'plot_segmentations',
    'plot_training_curves', 'plot_unpooling', 'present_classes', 'pspnet_feature_size',
    'pspnet_pyramid', 'published_for', 'read_config', 'read_metrics', 'resolve_path', 'restore',
    'restore_evaluated', 'sample_image', 'split_records', 'stages', 'stages_markdown',
    'switch_offsets', 'worst_images',
]
