"""The `jaxseg` command: train, eval, predict, demo, convert-weights, bn-stats, report, benchmark,
doctor.

  jaxseg train   --config experiments/fcn8s_voc.py --workdir DIR [--config.train.batch_size=8]
  jaxseg eval    --workdir DIR [--split val] [--checkpoint best|latest|STEP]
  jaxseg eval    --config RECIPE --weights FILE [--workdir DIR]   (released models, no training)
  jaxseg predict --workdir DIR | --config RECIPE --weights FILE  --input IMAGES... --output OUT
  jaxseg demo    [--workdir workdirs/demo]

`--config.a.b=value` overrides any field of experiments/default.py, parsed with the field's type
(`--config.data.crop_size=256,256`, `--config.model.sync_bn=false`); a misspelt field fails
with its name. convert-weights, report and benchmark are defined beside their code
(`register(subparsers)` in jaxseg.weights.command, jaxseg.report, jaxseg.benchmark.command,
jaxseg.doctor, jaxseg.bn_stats); every
handler is stored as `func` in the parser defaults and called as `func(args)`.

Bad input (missing file, unknown field, ...) prints `jaxseg: error: ...` with the whole message
(lists of missing files and download instructions span several lines) and exits 2; `--traceback`
shows the Python traceback instead.
"""
from collections.abc import Sequence
import argparse
import json
import logging
import os
import pathlib
import sys
import time
from typing import Any

from jaxseg import accelerators
from jaxseg import bn_stats
from jaxseg import config_loading
from jaxseg import report
from jaxseg import storage
from jaxseg import doctor
from jaxseg.benchmark import command as benchmark_command
from jaxseg.weights import command as weights_command

USAGE_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                PermissionError)
DEMO_PREDICTIONS = 4


# ---------------------------------------------------------------- shared steps
def _load_train_config(args: argparse.Namespace):
  """--config file (or the workdir's config.json when resuming) plus overrides, locked."""
  if args.config:
    config = config_loading.load_config(args.config)
  else:
    saved = storage.resolve(args.workdir) / 'config.json'
    if not saved.is_file():
      raise ValueError(f'no --config given and {saved} does not exist: pass --config '
                       'experiments/<recipe>.py (or resume a workdir that has a config.json)')
    config = config_loading.from_json_file(saved)
  return config_loading.apply_overrides(config, args.config_overrides)


def _torch_before_tensorflow(path: Any, field: str) -> None:
  """torchvision must be imported before TF in one process; .pth weights need torch."""
  if str(path).endswith(('.pth', '.pt')):
    try:
      import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:  # The optional `torch` extra: say what to do, do not go on.
      raise ValueError(f'{field}={path} is a PyTorch file and needs PyTorch (pip install '
                       '"jaxseg[torch]"); or convert it once with `jaxseg convert-weights` and '
                       'pass the .npz') from e


def _restore(args: argparse.Namespace):
  """The model to evaluate/predict: a workdir's checkpoint, or --config with --weights."""
  from jaxseg import inference  # pylint: disable=g-import-not-at-top
  if args.weights:
    if not args.config:
      raise ValueError('--weights needs --config RECIPE (the model and eval settings the '
                       'weights are used with), e.g. --config experiments/fcn8s_voc.py')
    _torch_before_tensorflow(args.weights, '--weights')
    return inference.restore_weights(args.config, args.weights, args.config_overrides)
  if args.config:
    raise ValueError('--config is used with --weights; to evaluate a workdir pass --workdir '
                     'alone (its saved config is used; override fields with --config.FIELD=...)')
  if not args.workdir:
    raise ValueError('pass --workdir DIR (a trained workdir) or --config RECIPE --weights FILE')
  return inference.restore(args.workdir, args.checkpoint, args.config_overrides)


def checkpoint_arg(value: str) -> str | int:
  if value in ('best', 'latest'):
    return value
  try:
    return int(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{value!r}: use best, latest or a step number') from None


def _print_results(results: dict[str, Any], header: str) -> None:
  from jaxseg import metrics  # pylint: disable=g-import-not-at-top
  print(header)
  print(metrics.format_table(results, results.get('class_names')))


# ---------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
  from jaxseg import train  # pylint: disable=g-import-not-at-top
  config = _load_train_config(args)
  _torch_before_tensorflow(config.model.init_from, 'config.model.init_from')
  final = train.train_and_evaluate(config, args.workdir,
                                   allow_config_change=args.allow_config_change)
  summary = ', '.join(f'{k} {v:.4f}' for k, v in final.items()
                      if isinstance(v, float) and k != 'step')
  print(f'trained to step {final.get("step")} in {args.workdir}: {summary}')
  return 0


def _inference_overrides(args: argparse.Namespace) -> None:
  """--crf, --proposals and --ensemble-with as the config.eval fields they stand for."""
  extra = []
  if args.crf:
    extra.append(('eval.crf', 'true'))
  if args.proposals:
    extra += [('eval.mode', 'proposals'), ('eval.proposals', args.proposals)]
  if args.ensemble_with:
    extra.append(('eval.ensemble_with', args.ensemble_with))
  args.config_overrides = list(args.config_overrides) + extra


def cmd_eval(args: argparse.Namespace) -> int:
  """Scores a workdir's checkpoint (or --weights) on a split; prints the table.

  Writes <workdir>/eval/<split>_step<N>.json. When that file cannot be written (a read-only
  workdir) the table is still printed, then a line on stderr names the file and the reason, and
  the exit code stays 0: the scores were computed and shown.
  """
  from jaxseg import inference, launch  # pylint: disable=g-import-not-at-top
  # One process per host, as `jaxseg train`: each reads its share of the split and the
  # confusion matrix is summed across hosts. Must run before anything touches a device.
  launch.initialize_from_environment()
  _inference_overrides(args)
  restored = _restore(args)
  config, step = restored.config, restored.step
  source = args.weights or f'step {step}'
  step = None if args.weights else step
  split = args.split or config.data.eval_split
  start = time.perf_counter()
  results = inference.evaluate(config, restored.model, restored.variables, restored.mesh, split,
                               workdir=args.workdir, step=step, progress=True)
  seconds = time.perf_counter() - start
  _print_results(results, f'{config.model.name} {source} on {config.data.dataset} {split} '
                 f'({results["num_images"]} images, eval.mode={config.eval.mode}, '
                 f'{seconds:.1f} s):')
  import jax  # pylint: disable=g-import-not-at-top
  if args.workdir and jax.process_index() == 0:  # The only process that writes it.
    if 'results_file_error' in results:
      sys.stdout.flush()  # After the table, also when both streams go to one file.
      print(f'jaxseg eval: the scores above are not saved: {results["results_file_error"]}',
            file=sys.stderr, flush=True)
    else:
      print(f'wrote {results["results_file"]}')
  return 0


def _check_predict_flags(args: argparse.Namespace) -> None:
  """Flag values wrong whatever the model (before it loads), naming the flag."""
  if args.tile_batch < 1:
    raise ValueError(f'--tile-batch {args.tile_batch} must be >= 1 (windows per device pass)')
  if args.max_canvas is not None and args.max_canvas < 0:
    raise ValueError(f'--max-canvas {args.max_canvas} must be >= 0 (0 = never tile)')
  for flag, value in (('--crop-size', args.crop_size), ('--stride', args.stride),
                      ('--tile', args.tile), ('--tile-stride', args.tile_stride)):
    if value is not None and min(value) < 1:
      raise ValueError(f'{flag} {value[0]} {value[1]}: give two positive sizes (height width)')
  if args.scales is not None and min(args.scales) <= 0:
    raise ValueError(f'--scales {" ".join(map(str, args.scales))}: every scale must be > 0')
  if args.mode and args.proposals:
    raise ValueError(f'--mode {args.mode} and --proposals both set config.eval.mode; pass one '
                     '(--proposals is eval.mode=proposals)')


def _predict_mode_overrides(args: argparse.Namespace) -> None:
  """--mode, --flip/--no-flip, --scales, --crop-size, --stride as config.eval fields."""
  extra = []
  if args.mode:
    extra.append(('eval.mode', args.mode))
  if args.flip is not None:
    extra.append(('eval.flip', str(args.flip).lower()))
  if args.scales is not None:
    extra.append(('eval.scales', ','.join(map(str, args.scales))))
  for field, value in (('eval.crop_size', args.crop_size), ('eval.stride', args.stride)):
    if value is not None:
      extra.append((field, f'{value[0]},{value[1]}'))
  args.config_overrides = list(args.config_overrides) + extra


def _check_predict_mode(args: argparse.Namespace, mode: str | None, crop: Any, stride: Any,
                        max_canvas: int) -> None:
  """The mode flags against the mode and windows they end up with: called with the flags alone
  before the model loads (None: not known yet), and with the model's config.eval after."""
  from jaxseg.inference import tiling  # pylint: disable=g-import-not-at-top
  if mode is not None and args.scales is not None and mode != 'multiscale':
    raise ValueError(f'--scales is used by eval.mode=multiscale; this prediction uses '
                     f'eval.mode={mode}: add --mode multiscale')
  if mode is not None and (args.crop_size or args.stride) and mode not in ('slide', 'multiscale'):
    raise ValueError(f'--crop-size/--stride set the windows of --mode slide or multiscale; this '
                     f'prediction uses eval.mode={mode} (the windows of tiled prediction are '
                     '--tile/--tile-stride)')
  if args.flip and mode == 'proposals':
    raise ValueError("--flip is not used by eval.mode=proposals (DeconvNet's instance-wise "
                     'inference); drop --flip or pass --mode whole|slide|multiscale')
  if mode in (None, 'slide', 'multiscale') and crop is not None:
    crop = tuple(int(v) for v in crop)
    stride = crop if stride is None else tuple(int(v) for v in stride)  # Unknown: no check.
    tiling.check_window(crop, stride, max_canvas,
                        ('--crop-size' if args.crop_size else 'config.eval.crop_size',
                         '--stride' if args.stride else 'config.eval.stride'))


def cmd_predict(args: argparse.Namespace) -> int:
  from jaxseg import inference  # pylint: disable=g-import-not-at-top
  from jaxseg.data import classes  # pylint: disable=g-import-not-at-top
  from jaxseg.inference import files, images, tiling  # pylint: disable=g-import-not-at-top
  max_pixels = images.MAX_PIXELS if args.max_pixels is None else args.max_pixels
  if max_pixels < 0:
    raise ValueError(f'--max-pixels {max_pixels} must be >= 0 (0 = no limit)')
  _check_predict_flags(args)
  max_canvas = tiling.MAX_CANVAS if args.max_canvas is None else args.max_canvas
  _check_predict_mode(args, args.mode or ('proposals' if args.proposals else None),
                      args.crop_size, args.stride, max_canvas)
  files.plan_outputs(args.input, args.output, args.probs)  # Bad paths fail before the model loads.
  _inference_overrides(args)
  _predict_mode_overrides(args)
  restored = _restore(args)
  config = restored.config
  e = config.eval
  _check_predict_mode(args, e.mode, e.crop_size, e.stride, max_canvas)
  predictor = inference.predictor_from_config(
      config, restored.model, restored.variables, bucket=args.bucket, max_canvas=max_canvas,
      tile=args.tile, tile_stride=args.tile_stride, tile_batch=args.tile_batch)
  source = args.weights or f'step {restored.step}'
  extras = ''.join(f', {k}' for k, on in (('flip', config.eval.flip), ('CRF', config.eval.crf),
                                            (f'ensemble with {config.eval.ensemble_with}',
                                             config.eval.ensemble_with)) if on)
  print(f'{config.model.name} {source}, eval.mode={config.eval.mode}{extras}')
  if max_canvas:
    (th, tw), (sh, sw) = predictor.tile, predictor.tile_stride
    print(f'images whose canvas exceeds {max_canvas:,} pixels (--max-canvas) are tiled: windows '
          f'of {th}x{tw} every {sh}x{sw}, {args.tile_batch} per pass')
  written = inference.predict_files(predictor, args.input, args.output,
                                    classes.spec_for_data(config.data).palette,
                                    max_pixels=max_pixels or None, probs=args.probs)
  return 1 if written['failed'] else 0


def cmd_demo(args: argparse.Namespace) -> int:
  """Train experiments/demo.py on the embedded dataset, evaluate, predict a few val images."""
  from jaxseg import inference, train  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  demo_path = config_loading.experiments_dir() / 'demo.py'
  config = config_loading.apply_overrides(config_loading.load_config(demo_path),
                                          args.config_overrides)
  workdir = storage.resolve(args.workdir)
  print(f'jaxseg demo: {config.model.name} (width {config.model.width}) on '
        f'{config.data.dataset}, {config.train.num_steps} steps, workdir {workdir}', flush=True)
  train.train_and_evaluate(config, workdir, allow_config_change=args.allow_config_change)
  trained = time.perf_counter()

  restored = inference.restore(workdir, 'latest', args.config_overrides)
  step = restored.step
  saved = inference.results_path(workdir, config.data.eval_split, step)
  if saved.is_file():  # The trainer's final evaluation of this very step.
    results = json.loads(saved.read_text())
  else:
    results = inference.evaluate(config, restored.model, restored.variables, restored.mesh,
                                 workdir=workdir, step=step)
  results = _nan_for_none(results)
  _print_results(results, f'{config.data.dataset} {results["split"]} after {step} steps '
                 f'({results["num_images"]} images):')

  written = inference.write_examples(config, restored.predictor, workdir / 'predictions',
                                     args.num_predictions)
  total = time.perf_counter() - start
  print(f'predictions for {len(written)} {results["split"]} images in {workdir / "predictions"}')
  print(f'demo mean IoU {100 * results["mean_iou"]:.2f}% (predicting background everywhere: '
        f'{100 * _background_only_miou(results["confusion_matrix"]):.2f}%); wall time '
        f'{total:.0f} s (training incl. data generation and compilation {trained - start:.0f} s)')
  return 0


def _nan_for_none(results: dict[str, Any]) -> dict[str, Any]:
  """Undo JSON's null-for-NaN in the score fields."""
  out = dict(results)
  for key in ('pixel_accuracy', 'mean_accuracy', 'mean_iou', 'fw_iou'):
    out[key] = float('nan') if out.get(key) is None else out[key]
  for key in ('per_class_iou', 'per_class_accuracy'):
    if key in out:
      out[key] = [float('nan') if v is None else v for v in out[key]]
  return out


def _background_only_miou(confusion: Any) -> float:
  """Mean IoU of the trivial prediction 'class 0 everywhere': the floor a model must beat."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxseg import metrics  # pylint: disable=g-import-not-at-top
  truth = np.asarray(confusion).sum(1)
  trivial = np.zeros((len(truth), len(truth)))
  trivial[:, 0] = truth
  return metrics.scores_from_confusion(trivial)['mean_iou']


# ---------------------------------------------------------------- parser
def _add_inference_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument('--crf', action='store_true',
                 help='refine with the dense CRF (config.eval.crf; parameters config.crf.*)')
  p.add_argument('--proposals', help="DeconvNet's instance-wise inference over these object "
                 "proposals: a file or folder keyed by image id (file stem), or "
                 "'selective_search' (sets config.eval.mode=proposals, config.eval.proposals)")
  p.add_argument('--ensemble-with', '--ensemble_with', dest='ensemble_with',
                 help='a second trained workdir whose prediction is combined with this one '
                 "(config.eval.ensemble_with, rule config.eval.ensemble_rule), e.g. EDeconvNet's "
                 'FCN-8s')


def build_parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--traceback', action='store_true',
                      help='show the Python traceback of an error')
  parser = argparse.ArgumentParser(
      prog='jaxseg', description='FCN, DeconvNet and PSPNet semantic segmentation in JAX.',
      epilog='Config overrides: --config.FIELD=VALUE for any field of experiments/default.py, '
      'e.g. --config.train.batch_size=8 --config.data.crop_size=256,256')
  sub = parser.add_subparsers(dest='command', metavar='COMMAND')
  sub.required = True

  p = sub.add_parser('train', parents=[common], help='train a model (resumes from the workdir)')
  p.add_argument('--config', help='experiment file defining get_config(), e.g. '
                 'experiments/fcn8s_voc.py (default: the workdir\'s config.json)')
  p.add_argument('--workdir', required=True, help='checkpoints, logs and results go here')
  p.add_argument('--allow_config_change', '--allow-config-change', action='store_true',
                 help='resume a workdir even if its model/data config differs')
  p.set_defaults(func=cmd_train)

  weights_help = ('a trained model\'s weights (FCN/PSPNet .caffemodel, semseg .pth checkpoint, '
                  'converted .npz), with --config; instead of a workdir\'s checkpoint')
  p = sub.add_parser('eval', parents=[common], help='evaluate a trained workdir or weights file')
  p.add_argument('--workdir', help='trained workdir (with --weights: where eval/ results go)')
  p.add_argument('--config', help='recipe for --weights, e.g. experiments/pspnet101_voc.py')
  p.add_argument('--weights', help=weights_help)
  p.add_argument('--split', help='dataset split (default: config.data.eval_split)')
  p.add_argument('--checkpoint', type=checkpoint_arg, default='best',
                 help='best (by eval mean IoU; latest if none evaluated), latest or a step')
  _add_inference_flags(p)
  p.set_defaults(func=cmd_eval)

  p = sub.add_parser('predict', parents=[common], help='segment image files')
  p.add_argument('--workdir', help='trained workdir')
  p.add_argument('--config', help='recipe for --weights')
  p.add_argument('--weights', help=weights_help)
  p.add_argument('--input', required=True, nargs='+', help='image files or folders of images')
  p.add_argument('--output', required=True,
                 help='folder for <name>.png and <name>_overlay.png (and the --probs files)')
  p.add_argument('--checkpoint', type=checkpoint_arg, default='best')
  p.add_argument('--bucket', type=int, default=64,
                 help='pad images to multiples of this (fewer recompilations)')
  p.add_argument('--max-pixels', '--max_pixels', dest='max_pixels', type=int,
                 help='refuse (report and skip) images with more pixels, read from the file '
                 'header before decoding: a guard against decompression bombs (default '
                 "178,956,970 = jaxseg.inference.images.MAX_PIXELS, PIL's limit; 0 = no limit)")
  p.add_argument('--probs', choices=('all', 'max'),
                 help='also write the class probabilities: all = <name>_probs.npy, float32 '
                 '(H, W, classes); max = <name>_confidence.npy, float32 (H, W), the predicted '
                 "class's probability, and <name>_confidence.png, its heat map")
  p.add_argument('--mode', choices=('whole', 'slide', 'multiscale'),
                 help='inference mode (config.eval.mode; default: the model\'s)')
  p.add_argument('--flip', action=argparse.BooleanOptionalAction, default=None,
                 help='average with the horizontally flipped prediction (config.eval.flip)')
  p.add_argument('--scales', type=float, nargs='+', metavar='S',
                 help='scales of --mode multiscale (config.eval.scales), e.g. 0.5 0.75 1 1.25 '
                 '1.5 1.75')
  p.add_argument('--crop-size', '--crop_size', dest='crop_size', type=int, nargs=2,
                 metavar=('H', 'W'), help='window of --mode slide/multiscale '
                 '(config.eval.crop_size)')
  p.add_argument('--stride', type=int, nargs=2, metavar=('H', 'W'),
                 help='window stride of --mode slide/multiscale (config.eval.stride)')
  p.add_argument('--max-canvas', '--max_canvas', dest='max_canvas', type=int, metavar='PIXELS',
                 help='images whose padded canvas has more pixels are predicted window by '
                 'window (--tile), so device memory is bounded by --tile-batch windows, not the '
                 'image (default 4,194,304 = 2048 x 2048 = '
                 'jaxseg.inference.tiling.MAX_CANVAS; 0 = never tile)')
  p.add_argument('--tile', type=int, nargs=2, metavar=('H', 'W'),
                 help='window of tiled prediction (default: config.eval.crop_size)')
  p.add_argument('--tile-stride', '--tile_stride', dest='tile_stride', type=int, nargs=2,
                 metavar=('H', 'W'), help='stride of tiled prediction (default: '
                 'config.eval.stride with the eval crop, else 2/3 of --tile)')
  p.add_argument('--tile-batch', '--tile_batch', dest='tile_batch', type=int, default=4,
                 metavar='K', help='windows per device pass in tiled prediction (default 4)')
  _add_inference_flags(p)
  p.set_defaults(func=cmd_predict)

  p = sub.add_parser('demo', parents=[common],
                     help='train + evaluate experiments/demo.py on the embedded dataset (CPU)')
  p.add_argument('--workdir', default='workdirs/demo')
  p.add_argument('--num_predictions', '--num-predictions', type=int, default=DEMO_PREDICTIONS)
  p.add_argument('--allow_config_change', '--allow-config-change', action='store_true')
  p.set_defaults(func=cmd_demo)

  for register in (weights_command.register, report.register, benchmark_command.register,
                   doctor.register, bn_stats.register):
    register(sub)
  for subparser in sub.choices.values():
    if '--traceback' not in subparser._option_string_actions:  # pylint: disable=protected-access
      subparser.add_argument('--traceback', action='store_true',
                             help='show the Python traceback of an error')
  return parser


def _setup_logging() -> None:
  """INFO messages from jaxseg's own code; warnings and errors from everyone."""
  package = str(pathlib.Path(__file__).resolve().parent)

  def keep(record: logging.LogRecord) -> bool:
    if record.pathname.startswith(package):
      return True
    if '/orbax/' in record.pathname:  # Its read-only-manager warnings are expected in eval.
      return record.levelno >= logging.ERROR
    return record.levelno >= logging.WARNING

  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter('%(message)s'))
  handler.addFilter(keep)
  root = logging.getLogger()
  root.handlers[:] = [handler]
  root.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
  # Before any JAX backend starts: XLA flags for GPUs, the compilation cache, NO_GCE_CHECK.
  accelerators.prepare_process(os.environ)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  try:
    rest, overrides = config_loading.split_overrides(argv)
  except ValueError as e:
    parser.error(str(e))  # Exits 2.
  args = parser.parse_args(rest)
  args.config_overrides = overrides
  if overrides and args.command not in ('train', 'eval', 'predict', 'demo'):
    parser.error(f'{args.command} takes no --config.* overrides')
  _setup_logging()
  try:
    return int(args.func(args) or 0)
  except KeyboardInterrupt:
    print('jaxseg: interrupted', file=sys.stderr)
    return 130
  except FloatingPointError as e:  # train.NonFiniteLossError: a training failure, not a usage one.
    if args.traceback:
      raise
    print(f'jaxseg {args.command}: {e}', file=sys.stderr)
    return 1
  except USAGE_ERRORS as e:
    if args.traceback:
      raise
    message = str(e).strip() or type(e).__name__  # Whole: lists and instructions span lines.
    print(f'jaxseg: error: {message}  (--traceback for details)', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
