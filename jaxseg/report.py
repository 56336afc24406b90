"""`jaxseg report --workdir DIR [--output DIR]`: a workdir's results as PNG figures + Markdown.

Writes into OUTPUT (default WORKDIR/report):
  report.md              run summary, metrics table, per-class IoU (VOC leaderboard layout, with
                         the papers' VOC 2012 test numbers for VOC runs), figures
  training_curves.png    loss, learning rate, eval mean IoU over steps (metrics.jsonl)
  per_class_iou.png      IoU per class (latest eval/<split>_step<N>.json)
  confusion_matrix.png   row-normalised confusion matrix
  samples.png            the first eval images: image, ground truth, prediction, overlay
  worst_images.png       the eval images with the lowest IoU, with their predictions
The pictures of images need a checkpoint (the evaluated step's if kept, else the best) and the
dataset; `--num_images 0 --num_worst 0` leaves them out. All logic lives in jaxseg.visualize.
"""
from __future__ import annotations

import argparse
import pathlib
from typing import Any

REPORT_FILE = 'report.md'


def _save(fig: Any, path: pathlib.Path) -> str:
  fig.savefig(path, dpi=100)
  return path.name


def write_report(workdir: str | pathlib.Path, output: str | pathlib.Path | None = None, *,
                 split: str | None = None, num_images: int = 4, num_worst: int = 4,
                 log: Any = print) -> pathlib.Path:
  """Writes the figures and report.md for `workdir` into `output`; returns report.md's path.

  Raises:
    FileNotFoundError: the workdir, or both its metrics.jsonl and eval results, are missing.
    ValueError: a negative image count, or an unknown split.
  """
  from jaxseg import visualize  # pylint: disable=g-import-not-at-top  (matplotlib)
  from jaxseg.data import classes  # pylint: disable=g-import-not-at-top
  if num_images < 0 or num_worst < 0:
    raise ValueError(f'--num_images ({num_images}) and --num_worst ({num_worst}) must be >= 0')
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f'workdir {workdir} does not exist')
  output = pathlib.Path(output) if output is not None else workdir / 'report'
  has_metrics = (workdir / visualize.METRICS_FILE).is_file()
  has_evals = bool(visualize.eval_files(workdir))
  if not has_metrics and not has_evals:
    raise FileNotFoundError(f'{workdir} has neither {visualize.METRICS_FILE} nor '
                            f'{visualize.EVAL_DIR}/<split>_step<N>.json: nothing to report '
                            '(train it first, or run `jaxseg eval`)')
  output.mkdir(parents=True, exist_ok=True)
  config = visualize.read_config(workdir) if (workdir / visualize.CONFIG_FILE).is_file() else None
  dataset = config.data.dataset if config is not None else ''
  palette = (classes.spec_for_data(config.data).palette if config is not None
             else visualize.palette_for(dataset))

  lines = [f'# jaxseg report: `{workdir}`', '']
  if config is not None:
    lines += [f'Model **{config.model.name}** (width {config.model.width}) on '
              f'**{dataset}**, {config.train.num_steps} steps of batch '
              f'{config.train.batch_size}, optimiser {config.optim.name} '
              f'(lr {config.optim.learning_rate}, schedule {config.optim.schedule}), '
              f'eval mode {config.eval.mode}.', '']

  # ------------------------------------------------------------ curves
  if has_metrics:
    records = visualize.read_metrics(workdir)
    train, _ = visualize.split_records(records)
    name = _save(visualize.plot_training_curves(records, title=f'Training: {workdir.name}'),
                 output / 'training_curves.png')
    last = train[-1] if train else None
    lines += ['## Training', '']
    if last is not None:
      lines += [f'{len(train)} logged intervals up to step {last["step"]}; last interval loss '
                f'{last["loss"]:.4f}, learning rate {last["lr"]:.3g}'
                + (f', {last["images_per_sec"]:.1f} images/s' if 'images_per_sec' in last
                   else '') + '.', '']
    lines += [f'![training curves]({name})', '']
    log(f'wrote {output / name}')

  # ------------------------------------------------------------ scores
  if not has_evals:
    lines += ['## Evaluation', '', f'No `{visualize.EVAL_DIR}/<split>_step<N>.json` yet: run '
              f'`jaxseg eval --workdir {workdir}`.', '']
    return _finish(output, lines, log)
  results = visualize.load_eval(workdir, split)
  names = list(results.get('class_names') or
               visualize.class_names_for(dataset, len(results['per_class_iou'])))
  lines += [f'## Evaluation: {results["split"]} at step {results["step"]}', '',
            f'{results.get("num_images", "?")} images, from `{pathlib.Path(results["path"]).name}`'
            ' (percent).', '', visualize.metrics_markdown(results), '']
  published = visualize.published_for(names)
  lines += ['### Per-class IoU', '',
            visualize.leaderboard_markdown({f'this run ({results["split"]})': results}, names,
                                           published), '']
  if published:
    lines += ['Published rows are PASCAL VOC 2012 *test* results of the full models (sources '
              'in the rows; a dash: not printed there); this run is scored on '
              f'`{results["split"]}`, so the comparison is indicative only.', '']
  name = _save(visualize.plot_per_class_iou(
      results['per_class_iou'], names, palette,
      title=f'Per-class IoU, {results["split"]} step {results["step"]}'),
      output / 'per_class_iou.png')
  lines += [f'![per-class IoU]({name})', '']
  log(f'wrote {output / name}')
  if 'confusion_matrix' in results:
    name = _save(visualize.plot_confusion_matrix(
        results['confusion_matrix'], names,
        title=f'Confusion matrix, {results["split"]} step {results["step"]} (% of true class)'),
        output / 'confusion_matrix.png')
    lines += ['### Confusion matrix', '', f'![confusion matrix]({name})', '']
    log(f'wrote {output / name}')

  # ------------------------------------------------------------ images
  if num_images or num_worst:
    lines += _image_sections(visualize, workdir, output, results, names, palette, num_images,
                             num_worst, log)
  return _finish(output, lines, log)


def _image_sections(visualize: Any, workdir: pathlib.Path, output: pathlib.Path,
                    results: dict[str, Any], names: list[str], palette: Any, num_images: int,
                    num_worst: int, log: Any) -> list[str]:
  """Sample and worst-image figures, predicted with the evaluated step's checkpoint if kept."""
  if not visualize.checkpoint_steps(workdir):
    return ['## Predictions', '', 'No checkpoint in the workdir: no prediction figures.', '']
  restored = visualize.restore_evaluated(workdir, results)
  split = results['split']
  lines = ['## Predictions', '', f'{split} images predicted with the checkpoint of step '
           f'{restored.step}' + ('' if restored.step == results['step'] else
                                 f' (step {results["step"]} is no longer kept)') + '.', '']
  if num_images:
    examples = visualize.load_examples(restored.config, split, count=num_images)
    name = _save(visualize.plot_predictions(
        restored, examples, names, palette,
        title=f'{split}: the first {len(examples)} images (step {restored.step})'),
        output / 'samples.png')
    lines += [f'![samples]({name})', '']
    log(f'wrote {output / name}')
  worst = visualize.worst_images(results.get('per_image', []), num_worst)
  examples = (visualize.load_examples(restored.config, split, ids=[w['id'] for w in worst])
              if num_worst and worst else [])
  if examples:
    name = _save(visualize.plot_predictions(
        restored, examples, names, palette, scores={w['id']: w['iou'] for w in worst},
        title=f'{split}: the {len(examples)} images with the lowest IoU (step {restored.step})'),
        output / 'worst_images.png')
    lines += ['### Worst images by IoU', '', visualize.images_markdown(worst), '',
              f'![worst images]({name})', '']
    log(f'wrote {output / name}')
  return lines


def _finish(output: pathlib.Path, lines: list[str], log: Any) -> pathlib.Path:
  path = output / REPORT_FILE
  path.write_text('\n'.join(lines).rstrip() + '\n')
  log(f'wrote {path}')
  return path


def cmd_report(args: argparse.Namespace) -> int:
  write_report(args.workdir, args.output, split=args.split, num_images=args.num_images,
               num_worst=args.num_worst)
  return 0


def register(subparsers: Any) -> None:
  """Adds `jaxseg report` to the CLI (jaxseg.cli calls this for its plug-ins)."""
  p = subparsers.add_parser('report', help='figures (PNG) and a Markdown report of a workdir')
  p.add_argument('--workdir', required=True, help='a trained workdir')
  p.add_argument('--output', help='folder for report.md and the PNGs (default WORKDIR/report)')
  p.add_argument('--split', help='eval split to report (default: config.data.eval_split)')
  p.add_argument('--num_images', '--num-images', type=int, default=4,
                 help='eval images shown with their predictions (0: none)')
  p.add_argument('--num_worst', '--num-worst', type=int, default=4,
                 help='lowest-IoU eval images shown (0: none)')
  p.set_defaults(func=cmd_report)
