"""jaxseg.visualize and jaxseg.report on small inputs, against independent references.

References: VOCdevkit's colour values, NumPy brute force, PyTorch (max_pool2d indices and
adaptive_avg_pool1d), and workdirs written by the trainer's and evaluator's own writers.
"""
import argparse
import json
import math
import pathlib

import numpy as np
import pytest

from jaxseg import checkpoint, inference, metrics, report, visualize
from jaxseg.data import classes

torch = pytest.importorskip('torch')


# ---------------------------------------------------------------- label images
def test_voc_colours_match_the_devkit():
  palette = visualize.palette_for('voc2012_segmentation')
  label = np.array([[0, 1, 15], [20, 255, 7]])
  # VOCdevkit labelcolormap: background, aeroplane, person / tvmonitor, void, car.
  expected = np.array([[[0, 0, 0], [128, 0, 0], [192, 128, 128]],
                       [[0, 64, 128], [224, 224, 192], [128, 128, 128]]])
  np.testing.assert_array_equal(visualize.colorize(label, palette), expected)


@pytest.mark.parametrize('dataset', classes.DATASET_NAMES)
def test_ignore_colour_is_distinct_from_every_class(dataset):
  palette = visualize.palette_for(dataset)
  n = classes.dataset_spec(dataset).num_classes
  colours = {tuple(c) for c in palette[:n]}
  # ADE20K's published table (semseg's ade20k_colors.txt) draws road and skyscraper alike.
  repeats = {'ade20k': 1}.get(dataset, 0)
  assert len(colours) == n - repeats and tuple(palette[255]) not in colours


def test_colorize_and_overlay_errors():
  palette = visualize.palette_for('camvid')
  with pytest.raises(ValueError, match='label values must lie in 0..255'):
    visualize.colorize(np.array([[256]]), palette)
  with pytest.raises(ValueError, match=r'palette must have shape \(256, 3\)'):
    visualize.colorize(np.zeros((2, 2), int), palette[:11])
  with pytest.raises(ValueError, match='differ in size'):
    visualize.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), int), palette)


def test_overlay_blends_classes_and_keeps_ignored_pixels():
  palette = visualize.palette_for('synthetic_shapes')
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
  label = rng.integers(0, 7, (5, 6))
  label[0, :3] = 255
  out = visualize.overlay(image, label, palette, alpha=0.25)
  expected = np.round(0.75 * image + 0.25 * palette[label].astype(float)).astype(np.uint8)
  expected[0, :3] = image[0, :3]
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(visualize.overlay(image, label, palette, alpha=0.0), image)


def test_legend_lists_only_present_classes_and_ignore():
  names = classes.SYNTHETIC_CLASSES
  palette = visualize.palette_for('synthetic_shapes')
  handles = visualize.legend_handles([np.array([[0, 3], [3, 255]]), np.array([[6, 0]]), None],
                                     names, palette)
  assert [h.get_label() for h in handles] == ['background', 'triangle', 'cross', 'ignore (255)']
  np.testing.assert_allclose(handles[1].get_facecolor()[:3], palette[3] / 255)


# ---------------------------------------------------------------- switches, bins, counts
def test_switch_offsets_agree_with_torch_max_pool_indices():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 8, 10)).astype(np.float32)  # NCHW for torch.
  _, indices = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2, 2, return_indices=True)
  offsets = visualize.switch_offsets(indices.numpy().transpose(0, 2, 3, 1), input_width=10)
  windows = x.reshape(2, 3, 4, 2, 5, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 4, 5, 4)
  np.testing.assert_array_equal(offsets, windows.argmax(-1).transpose(0, 2, 3, 1))
  with pytest.raises(ValueError, match='do not index a 2x2'):
    visualize.switch_offsets(indices.numpy().transpose(0, 2, 3, 1), input_width=7)


def test_deconvnet_switches_unpool_to_the_window_maxima():
  image = np.random.default_rng(2).integers(0, 256, (34, 30, 3), dtype=np.uint8)
  maps = visualize.deconvnet_switches(image, width=1 / 16)
  before, unpooled = maps['before'], maps['unpooled']
  assert before.shape == unpooled.shape == (34, 30, 4) and maps['pooled'].shape == (17, 15, 4)
  windows = before.reshape(17, 2, 15, 2, 4).max((1, 3))
  np.testing.assert_allclose(maps['pooled'], windows)
  # One value per window survives unpooling, at its maximum.
  np.testing.assert_allclose(unpooled.reshape(17, 2, 15, 2, 4).max((1, 3)), windows)
  assert ((unpooled != 0).reshape(17, 2, 15, 2, 4).sum((1, 3)) <= 1).all()


@pytest.mark.parametrize('size,bins', [(60, 6), (60, 4), (7, 3), (5, 5), (3, 6)])
def test_bin_edges_are_torch_adaptive_pooling_windows(size, bins):
  ramp = np.arange(size, dtype=np.float64) ** 2
  ours = [ramp[a:b].mean() for a, b in visualize.bin_edges(size, bins)]
  theirs = torch.nn.functional.adaptive_avg_pool1d(torch.tensor(ramp)[None, None], bins)
  np.testing.assert_allclose(ours, theirs[0, 0].numpy())


def test_pspnet_pyramid_levels():
  image = np.random.default_rng(3).integers(0, 256, (65, 65, 3), dtype=np.uint8)
  feature, pooled, upsampled = visualize.pspnet_pyramid(image)
  assert feature.shape == (9, 9, 3)  # Output stride 8: 65 -> 33 -> 17 -> 9.
  assert {b: p.shape for b, p in pooled.items()} == {b: (b, b, 3) for b in (1, 2, 3, 6)}
  np.testing.assert_allclose(pooled[1][0, 0], feature.mean((0, 1)), rtol=1e-5)
  np.testing.assert_allclose(upsampled[1], np.broadcast_to(pooled[1], (9, 9, 3)), rtol=1e-5)
  fig = visualize.plot_pyramid_bins(image, feature, pooled, upsampled)
  assert [ax.get_title() for ax in fig.axes[:5]] == [
      'input 65x65', '1x1 bins', '2x2 bins', '3x3 bins', '6x6 bins']


def test_class_pixel_counts_match_numpy():
  rng = np.random.default_rng(4)
  labels = [rng.choice([0, 1, 2, 5, 255], size=(7, 9)) for _ in range(3)]
  counts, ignored = visualize.class_pixel_counts(labels, 6)
  flat = np.concatenate([l.ravel() for l in labels])
  np.testing.assert_array_equal(counts, [(flat == c).sum() for c in range(6)])
  assert ignored == (flat == 255).sum()


# ---------------------------------------------------------------- tables
def _results(per_class, mean=None):
  return {'per_class_iou': per_class, 'mean_iou': np.nanmean(per_class) if mean is None else mean,
          'pixel_accuracy': 0.9, 'mean_accuracy': 0.5, 'fw_iou': 0.8}


def test_leaderboard_layout_and_published_rows():
  iou = list(np.linspace(0.1, 0.9, 21))
  iou[4] = math.nan
  table = visualize.leaderboard_markdown({'ours (val)': _results(iou)}, classes.VOC_CLASSES,
                                         ['FCN-8s', 'DeconvNet', 'PSPNet'])
  lines = table.splitlines()
  header = [c.strip() for c in lines[0].strip('|').split('|')]
  assert header == ['method', 'mean'] + list(classes.VOC_CLASSES)
  rows = {l.split('|')[1].strip(): [c.strip() for c in l.strip('|').split('|')][1:]
          for l in lines[2:]}
  ours = rows['ours (val)']
  assert ours[0] == f'**{100 * np.nanmean(iou):.1f}**' and ours[1] == '10.0' and ours[5] == '—'
  fcn = next(v for k, v in rows.items() if k.startswith('FCN-8s'))
  # Yu & Koltun 2016, Table 2: aeroplane 76.8, chair 21.4, tvmonitor 55.1; mean 62.2.
  assert fcn[0] == '**62.2**' and fcn[1] == '—'
  assert (fcn[2], fcn[10], fcn[21]) == ('76.8', '21.4', '55.1')
  deconv = next(v for k, v in rows.items() if k.startswith('DeconvNet'))
  psp = next(v for k, v in rows.items() if k.startswith('PSPNet'))
  assert deconv[0] == '**69.6**' and psp[0] == '**82.6**'
  assert set(deconv[1:]) == set(psp[1:]) == {'—'}  # Per-class not verified: no numbers.


def test_published_rows_need_voc_classes():
  with pytest.raises(ValueError, match='VOC 2012 results'):
    visualize.leaderboard_markdown({'x': _results([0.5] * 7)}, classes.SYNTHETIC_CLASSES,
                                   ['FCN-8s'])
  with pytest.raises(ValueError, match='unknown published'):
    visualize.leaderboard_markdown({}, classes.VOC_CLASSES, ['SegNet'])
  with pytest.raises(ValueError, match='3 per-class values for 7 classes'):
    visualize.leaderboard_markdown({'x': _results([0.5] * 3)}, classes.SYNTHETIC_CLASSES)
  assert visualize.published_for(classes.SYNTHETIC_CLASSES) == ()
  assert 'FCN-8s' in visualize.published_for(classes.VOC_CLASSES)


def test_metrics_and_image_tables():
  assert visualize.metrics_markdown(_results([0.2, math.nan], mean=0.2)).splitlines()[2] == (
      '| 90.0 | 50.0 | 20.0 | 80.0 |')
  with pytest.raises(ValueError, match=r"results lack \['fw_iou'\]"):
    visualize.metrics_markdown({'pixel_accuracy': 1, 'mean_accuracy': 1, 'mean_iou': 1})
  per_image = [{'id': 'a', 'iou': 0.5, 'pixel_accuracy': 0.9},
               {'id': 'b', 'iou': None, 'pixel_accuracy': None},
               {'id': 'c', 'iou': 0.25, 'pixel_accuracy': 0.8},
               {'id': 'd', 'iou': math.nan, 'pixel_accuracy': 0.1}]
  worst = visualize.worst_images(per_image, 5)
  assert [w['id'] for w in worst] == ['c', 'a']
  assert visualize.images_markdown(worst).splitlines()[2] == '| c | 25.0 | 80.0 |'


# ---------------------------------------------------------------- figures
def test_figures_carry_class_names_and_values(tmp_path):
  names = classes.SYNTHETIC_CLASSES
  palette = visualize.palette_for('synthetic_shapes')
  iou = [0.9, 0.5, math.nan, 0.25, 0.0, 0.1, 0.3]
  fig = visualize.plot_per_class_iou(iou, names, palette)
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_yticklabels()] == list(names)
  np.testing.assert_allclose([p.get_width() for p in ax.patches],
                             [90, 50, 0, 25, 0, 10, 30])
  assert 'absent' in [t.get_text() for t in ax.texts]

  cm = np.array([[8, 2, 0], [0, 0, 0], [1, 1, 2]])
  norm = visualize.normalize_confusion(cm)
  np.testing.assert_allclose(norm[[0, 2]], [[0.8, 0.2, 0], [0.25, 0.25, 0.5]])
  assert np.isnan(norm[1]).all()
  fig = visualize.plot_confusion_matrix(cm, names[:3])
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == list(names[:3])
  assert (ax.get_xlabel(), ax.get_ylabel()) == ('predicted class', 'true class')
  with pytest.raises(ValueError, match='2 class names for a 3x3'):
    visualize.plot_confusion_matrix(cm, names[:2])

  rng = np.random.default_rng(5)
  images = rng.integers(0, 256, (2, 12, 16, 3), dtype=np.uint8)
  labels = rng.choice([0, 2, 255], size=(2, 12, 16))
  preds = rng.choice([0, 4], size=(2, 12, 16))
  fig = visualize.plot_segmentations(images, labels, preds, names, palette, ['x', 'y'])
  assert [ax.get_title() for ax in fig.axes[:4]] == [
      'image', 'ground truth', 'prediction', 'prediction overlay']
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend == ['background', 'square', 'star', 'ignore (255)']
  fig.savefig(tmp_path / 'grid.png')
  assert (tmp_path / 'grid.png').stat().st_size > 1000
  with pytest.raises(ValueError, match='2 images but 1 predictions'):
    visualize.plot_segmentations(images, labels, preds[:1], names, palette)

  fig = visualize.plot_class_frequencies([90, 10, 0, 0, 0, 0, 0], names, palette, ignored=25)
  assert '20.0% ignored' in fig.axes[0].get_title()


def test_training_curves_plot_the_logged_values(tmp_path):
  from jaxseg import train  # pylint: disable=g-import-not-at-top
  writer = train.MetricWriter(tmp_path, resume_step=0)
  for step, loss in ((10, 2.0), (20, 1.5), (30, float('nan'))):
    writer.write(step, 'train', {'loss': loss, 'lr': 0.01 / step, 'images_per_sec': 5.0})
  writer.write(30, 'val', {'pixel_accuracy': 0.8, 'mean_accuracy': 0.4, 'mean_iou': 0.3,
                           'fw_iou': 0.7, 'per_class_iou': [0.6, float('nan')]})
  writer.close()
  records = visualize.read_metrics(tmp_path)
  assert math.isnan(records[2]['loss']) and math.isnan(records[3]['per_class_iou'][1])
  fig = visualize.plot_training_curves(records)
  loss_ax, lr_ax, eval_ax = fig.axes
  np.testing.assert_allclose(loss_ax.lines[0].get_xydata(), [[10, 2.0], [20, 1.5]])
  np.testing.assert_allclose(lr_ax.lines[0].get_ydata(), [0.001, 0.0005, 0.01 / 30])
  np.testing.assert_allclose(eval_ax.lines[0].get_xydata(), [[30, 30.0]])
  assert eval_ax.get_legend().get_texts()[0].get_text() == 'val mean IoU'


def test_reading_a_workdir_names_bad_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    visualize.read_metrics(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='metrics.jsonl does not exist'):
    visualize.read_metrics(tmp_path)
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "split": "train", "loss": 1}\n{oops\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl:2 is not valid JSON'):
    visualize.read_metrics(tmp_path)
  with pytest.raises(FileNotFoundError, match='run `jaxseg eval'):
    visualize.load_eval(tmp_path)


def _eval_results(cm, names, ids):
  results = dict(metrics.scores_from_confusion(cm))
  results.update(confusion_matrix=np.asarray(cm), class_names=list(names), split='val',
                 per_image=[{'id': i, 'iou': 0.1 * k, 'pixel_accuracy': 0.5}
                            for k, i in enumerate(ids)], num_images=len(ids))
  return results


def _fake_workdir(path, dataset='synthetic_shapes', names=classes.SYNTHETIC_CLASSES):
  """A workdir written by the project's own writers, without training (no checkpoint)."""
  from jaxseg import config_loading  # pylint: disable=g-import-not-at-top
  config = visualize.dataset_config(dataset)
  checkpoint.write_workdir_config(path, config)
  n = len(names)
  cm = np.random.default_rng(6).integers(0, 50, (n, n)) + np.eye(n, dtype=int) * 200
  cm[-1] = 0  # A class absent from the ground truth.
  for step in (5, 10):
    inference.write_results(_eval_results(cm * step, names, ['a', 'b', 'c']), path, 'val', step)
  inference.write_results(_eval_results(cm, names, ['z']), path, 'train', 10)
  assert config_loading.from_json_file(path / 'config.json').data.eval_split == 'val'
  return cm


def test_load_eval_picks_split_and_step(tmp_path):
  cm = _fake_workdir(tmp_path)
  results = visualize.load_eval(tmp_path)
  assert (results['split'], results['step']) == ('val', 10)
  np.testing.assert_array_equal(results['confusion_matrix'], cm * 10)
  expected = metrics.scores_from_confusion(cm * 10)
  np.testing.assert_allclose(results['per_class_iou'], expected['per_class_iou'])
  assert math.isnan(results['per_class_accuracy'][-1])  # null in the file, NaN again.
  assert visualize.load_eval(tmp_path, step=5)['step'] == 5
  assert visualize.load_eval(tmp_path, 'train')['per_image'][0]['id'] == 'z'
  with pytest.raises(ValueError, match="no eval results for split 'test'.*val_step10"):
    visualize.load_eval(tmp_path, 'test')
  assert [(s, n) for s, n, _ in visualize.eval_files(tmp_path)] == [
      ('train', 10), ('val', 5), ('val', 10)]


def test_report_without_checkpoints(tmp_path):
  from jaxseg import train  # pylint: disable=g-import-not-at-top
  _fake_workdir(tmp_path)
  writer = train.MetricWriter(tmp_path, resume_step=0)
  for step in (5, 10):
    writer.write(step, 'train', {'loss': 1.0 / step, 'lr': 0.1, 'images_per_sec': 3.0})
  writer.close()
  written = []
  path = report.write_report(tmp_path, tmp_path / 'out', log=written.append)
  text = path.read_text()
  assert path == tmp_path / 'out' / 'report.md'
  assert 'No checkpoint in the workdir' in text and 'FCN-8s' not in text
  for name in ('training_curves', 'per_class_iou', 'confusion_matrix'):
    assert (tmp_path / 'out' / f'{name}.png').is_file() and f'({name}.png)' in text
  assert '| method | mean | background | disk |' in text
  assert any('report.md' in w for w in written)


def test_report_of_a_voc_run_adds_the_papers(tmp_path):
  _fake_workdir(tmp_path, 'voc2012_segmentation', classes.VOC_CLASSES)
  text = report.write_report(tmp_path, num_images=0, num_worst=0, log=lambda _: None).read_text()
  assert '| FCN-8s (VOC12 test;' in text and '**82.6**' in text and 'indicative only' in text
  assert (tmp_path / 'report' / 'report.md').is_file()


def test_report_errors_and_cli(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    report.write_report(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match='nothing to report'):
    report.write_report(tmp_path)
  with pytest.raises(ValueError, match='must be >= 0'):
    report.write_report(tmp_path, num_images=-1)
  parser = argparse.ArgumentParser(prog='jaxseg')
  report.register(parser.add_subparsers(dest='command'))
  args = parser.parse_args(['report', '--workdir', str(tmp_path), '--num-images', '0'])
  assert args.func is report.cmd_report and args.num_images == 0 and args.output is None
  _fake_workdir(tmp_path)
  assert args.func(args) == 0
  assert json.loads((tmp_path / 'config.json').read_text())['data']['dataset'] == (
      'synthetic_shapes')
  assert pathlib.Path(tmp_path / 'report' / 'per_class_iou.png').is_file()


# ---------------------------------------------------------------- data and models
@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
  return visualize.dataset_config('synthetic_shapes/tiny',
                                  str(tmp_path_factory.mktemp('tfds')))


def test_load_examples_by_count_and_by_id(tiny_config):
  first = visualize.load_examples(tiny_config, 'val', count=3)
  assert len({e['id'] for e in first}) == 3
  assert first[0]['image'].shape == (64, 64, 3) and first[0]['label'].shape == (64, 64)
  ids = [first[2]['id'], 'not-an-id', first[0]['id']]
  picked = visualize.load_examples(tiny_config, 'val', ids=ids)
  assert [e['id'] for e in picked] == [first[2]['id'], first[0]['id']]
  np.testing.assert_array_equal(picked[1]['label'], first[0]['label'])
  np.testing.assert_array_equal(picked[0]['image'], first[2]['image'])
  with pytest.raises(ValueError, match="'test' is not a split"):
    visualize.load_examples(tiny_config, 'test', count=1)


def test_augment_pair_is_the_pipeline_transform(tiny_config):
  example = visualize.load_examples(tiny_config, 'train', count=1)[0]
  image, label = example['image'], example['label']
  identity = visualize.dataset_config('synthetic_shapes/tiny', tiny_config.data.data_dir,
                                      crop_size=(64, 64), scale_range=(1.0, 1.0), hflip=False)
  out_image, out_label = visualize.augment_pair(identity, image, label, seed=0)
  np.testing.assert_array_equal(out_label, label)
  assert np.abs(out_image.astype(int) - image).max() <= 1  # Normalise + denormalise round trip.
  heavy = visualize.dataset_config('synthetic_shapes/tiny', tiny_config.data.data_dir,
                                   crop_size=(48, 40), scale_range=(0.5, 2.0),
                                   rotate_degrees=10.0)
  a = visualize.augment_pair(heavy, image, label, seed=3)
  b = visualize.augment_pair(heavy, image, label, seed=3)
  assert a[0].shape == (48, 40, 3) and a[1].shape == (48, 40) and a[0].dtype == np.uint8
  np.testing.assert_array_equal(a[1], b[1])
  assert set(np.unique(a[1])) <= set(np.unique(label)) | {255}


def test_stages_and_parameter_counts():
  from jaxseg import models  # pylint: disable=g-import-not-at-top
  model = models.create_model('fcn8s', 5, width=1 / 16)
  rows = visualize.stages(model, (1, 64, 64, 3), max_depth=1)
  assert [r.path for r in rows] == ['backbone', 'fc6', 'fc7', 'score_fr', 'upscore2',
                                    'score_pool4', 'upscore_pool4', 'score_pool3', 'upscore8']
  backbone = dict(rows[0].shapes)
  assert backbone['pool5'] == (1, 2, 2, 32) and backbone['block1'] == (1, 64, 64, 4)
  # By hand: VGG16 / 16 (3x3 convs with bias), fc6 7x7 and fc7 1x1 (256), three 1x1 scores,
  # bias-free upsamplings 4x4, 4x4, 16x16 of 5 -> 5 channels.
  widths = [3, 4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32]
  vgg = sum(9 * a * b + b for a, b in zip(widths, widths[1:]))
  head = (49 * 32 * 256 + 256) + (256 * 256 + 256) + (256 * 5 + 5) + (32 * 5 + 5) + (16 * 5 + 5)
  upsampling = (16 + 16 + 256) * 5 * 5
  total = vgg + head + upsampling
  assert visualize.parameter_count(model, (1, 64, 64, 3)) == total
  assert sum(r.params for r in rows) == total
  assert rows[0].params == vgg and rows[1].params == 49 * 32 * 256 + 256
  table = visualize.stages_markdown(rows)
  assert '| fc6 | 2x2x256 | 401,664 |' in table


def test_pspnet_stages_list_parents_before_their_parts():
  from jaxseg import models  # pylint: disable=g-import-not-at-top
  model = models.create_model('pspnet50', 3, width=1 / 16, stage_sizes=(1, 1, 1, 1))
  paths = [r.path for r in visualize.stages(model, (1, 65, 65, 3), max_depth=2)]
  assert paths == ['backbone', 'backbone/conv1', 'backbone/layer1_0', 'backbone/layer2_0',
                   'backbone/layer3_0', 'backbone/layer4_0', 'ppm', 'ppm/bin1', 'ppm/bin2',
                   'ppm/bin3', 'ppm/bin6', 'cls', 'cls/conv_bn', 'cls/classifier', 'aux',
                   'aux/conv_bn', 'aux/classifier']


def test_report_through_the_cli(tmp_path, capsys):
  from jaxseg import cli  # pylint: disable=g-import-not-at-top
  assert cli.main(['report', '--workdir', str(tmp_path / 'missing')]) == 2
  assert 'does not exist' in capsys.readouterr().err
  _fake_workdir(tmp_path)
  assert cli.main(['report', '--workdir', str(tmp_path), '--output', str(tmp_path / 'r'),
                   '--num_images', '0', '--num_worst', '0']) == 0
  assert f'wrote {tmp_path / "r" / "report.md"}' in capsys.readouterr().out
