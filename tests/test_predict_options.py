"""`jaxseg predict` options: --probs files, --mode/--flip, tiled prediction, progress, messages.

The model is demo.py's FCN-8s at width 1/16 with random weights (scores differ between classes
and depend on context), saved as a workdir's checkpoint; references are NumPy or one-pass
programs of jaxseg.inference.modes on the same canvas.
"""
import io
import re

import jax
import matplotlib
import numpy as np
import PIL.Image
import pytest

from jaxseg import checkpoint, cli, config_loading, optim, parallel, train
from jaxseg.data import classes, pipeline
from jaxseg.inference import files, modes, predictor as predictor_lib, tiling

DEMO = str(config_loading.experiments_dir() / 'demo.py')
WIDTH = '0.0625'
CLASSES = 7
PALETTE = classes.palette_for('synthetic_shapes')


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _image(seed, height, width):
  """Smooth blobs plus noise: structure the net's receptive field sees."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:height, :width]
  base = 127 + 100 * np.sin(x[..., None] / (3 + rng.uniform(0, 5, 3)) + y[..., None] / 7)
  return np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def net(tmp_path_factory):
  """(config with eval.mode=whole, model, variables, a workdir with them as its checkpoint).

  Random He-scaled weights from the abstract train state: no initialisation is compiled.
  """
  config = config_loading.apply_overrides(config_loading.load_config(DEMO),
                                          [('model.width', WIDTH), ('eval.mode', 'whole')])
  model = train.build_model(config)
  mesh = parallel.create_mesh()
  tx, _ = optim.create_optimizer(config, train.backbone_prefixes(config))
  shapes = train.create_train_state(config, model, tx, mesh, abstract=True)
  rng = np.random.default_rng(0)

  def param(leaf):
    scale = np.sqrt(2 / np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.1
    return rng.normal(0, scale, leaf.shape).astype(leaf.dtype)

  zeros = lambda leaf: np.zeros(leaf.shape, leaf.dtype)
  state = train.TrainState(
      step=zeros(shapes.step), params=jax.tree.map(param, shapes.params),
      batch_stats=jax.tree.map(zeros, shapes.batch_stats),
      opt_state=jax.tree.map(zeros, shapes.opt_state), rng=zeros(shapes.rng))
  workdir = tmp_path_factory.mktemp('workdir')
  writer = checkpoint.Checkpointer(workdir)
  writer.save(0, parallel.replicate(state, mesh), config)
  writer.wait()
  writer.close()
  checkpoint.write_workdir_config(workdir, config)
  return config, model, {'params': state.params, 'batch_stats': state.batch_stats}, workdir


@pytest.fixture(scope='module')
def whole(net):
  """The CLI's Predictor (bucket 8; canvases at least the 64x64 training crop), whole mode."""
  config, model, variables, _ = net
  return predictor_lib.predictor_from_config(config, model, variables, bucket=8)


def _canvas(config, image, size=(64, 64), normalise=True):
  """The (normalised) canvas the Predictor builds: the image top left, the uint8 mean past it."""
  fill = np.round(pipeline.mean_pixel(config.data.normalization)).astype(np.uint8)
  canvas = np.tile(fill, (1, *size, 1))
  canvas[0, :image.shape[0], :image.shape[1]] = image
  return pipeline.normalize(canvas, config.data.normalization) if normalise else canvas


def _images(folder, sizes):
  folder.mkdir()
  paths = []
  for k, (h, w) in enumerate(sizes):
    paths.append(folder / f'img{k}.png')
    PIL.Image.fromarray(_image(k, h, w)).save(paths[-1])
  return paths


# ---------------------------------------------------------------- --probs
def test_probs_all_are_the_softmax_of_one_pass_and_give_the_labels(net, whole, tmp_path):
  config, model, variables, _ = net
  paths = _images(tmp_path / 'in', [(40, 56), (33, 50)])
  log = io.StringIO()
  written = files.predict_files(whole, paths, tmp_path / 'out', PALETTE, log=log,
                                errors=io.StringIO(), probs='all')
  assert len(written['written']) == 2 and not written['failed']
  apply = jax.jit(modes.model_apply_fn(model, variables))
  for k, path in enumerate(paths):
    image = np.asarray(PIL.Image.open(path))
    h, w = image.shape[:2]
    probs = np.load(tmp_path / 'out' / f'img{k}_probs.npy')
    assert probs.shape == (h, w, CLASSES) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    want = _softmax(np.asarray(apply(_canvas(config, image)), np.float64)[0, :h, :w])
    np.testing.assert_allclose(probs, want, atol=1e-5)
    label = np.asarray(PIL.Image.open(tmp_path / 'out' / f'img{k}.png'))
    np.testing.assert_array_equal(label, probs.argmax(-1))
    assert len(np.unique(label)) > 1  # A real test of the argmax.
    assert PIL.Image.open(tmp_path / 'out' / f'img{k}_overlay.png').size == (w, h)
  assert f'{paths[1]} -> {tmp_path / "out" / "img1.png"} (33x50)\n' in log.getvalue()


def _with(config, *overrides):
  return config_loading.apply_overrides(config_loading.from_dict(config.to_dict()), overrides)


@pytest.mark.parametrize('rule', ['mean', 'product'])
def test_probs_of_an_ensemble_are_its_rule_on_probabilities_or_its_scores_softmaxed(net, rule):
  """The model ensembled with itself (its workdir as eval.ensemble_with): 'mean' averages two
  probability maps (written as they are, not softmaxed again); 'product' multiplies scores,
  a x max(0, a), whose softmax is written."""
  config, model, variables, workdir = net
  both = _with(config, ('eval.ensemble_with', str(workdir)), ('eval.ensemble_rule', rule))
  predictor = predictor_lib.predictor_from_config(both, model, variables, bucket=8)
  image = _image(3, 40, 56)
  logits = np.asarray(jax.jit(modes.model_apply_fn(model, variables))(_canvas(config, image)),
                      np.float64)[0, :40, :56]
  want = _softmax(logits) if rule == 'mean' else _softmax(logits * np.maximum(logits, 0))
  np.testing.assert_allclose(predictor.probabilities(image), want, atol=1e-5)


def test_probs_with_the_crf_are_its_marginals(net):
  from jaxseg.ops import crf  # pylint: disable=g-import-not-at-top
  config, model, variables, _ = net
  refined = _with(config, ('eval.crf', 'true'), ('crf.iterations', '3'))
  predictor = predictor_lib.predictor_from_config(refined, model, variables, bucket=8)
  image = _image(4, 40, 56)
  logits = jax.jit(modes.model_apply_fn(model, variables))(_canvas(config, image))
  rgb = np.asarray(_canvas(config, image, normalise=False))
  want = crf.dense_crf(jax.nn.softmax(logits, -1), rgb, np.array([[40, 56]], np.int32),
                       crf.CrfParams.from_config(refined))
  got = predictor.probabilities(image)
  np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(got, np.asarray(want)[0, :40, :56], atol=1e-5)


def test_cli_mode_slide_flip_writes_the_confidence_of_that_eval_mode(net, tmp_path, capsys):
  """--mode slide --crop-size --stride --flip --probs max: config.eval as those flags say, and
  the confidence is the max of modes.inference_fn's slide + flip probabilities."""
  config, model, variables, workdir = net
  (path,) = _images(tmp_path / 'in', [(40, 56)])
  out = tmp_path / 'out'
  assert cli.main(['predict', '--workdir', str(workdir), '--input', str(path), '--output',
                   str(out), '--bucket', '8', '--mode', 'slide', '--crop-size', '32', '32',
                   '--stride', '16', '16', '--flip', '--probs', 'max']) == 0
  captured = capsys.readouterr()
  assert 'fcn8s step 0, eval.mode=slide, flip\n' in captured.out
  assert 'predicted 1 of 1 images' in captured.out
  assert re.search(r'^predict: 1 images in [0-9.]+ s', captured.err, re.M)  # Not a terminal.
  infer = jax.jit(modes.inference_fn(modes.model_apply_fn(model, variables), 'slide', (32, 32),
                                     (16, 16), flip=True))
  image = np.asarray(PIL.Image.open(path))
  want = np.asarray(infer(_canvas(config, image), np.array([[40, 56]])))[0, :40, :56]
  confidence = np.load(out / 'img0_confidence.npy')
  assert confidence.shape == (40, 56) and confidence.dtype == np.float32
  np.testing.assert_allclose(confidence, want.max(-1), atol=1e-5)
  label = np.asarray(PIL.Image.open(out / 'img0.png'))
  np.testing.assert_allclose(np.take_along_axis(want, label[..., None], -1)[..., 0], confidence,
                             atol=1e-5)  # The label is the most probable class.
  heat = PIL.Image.open(out / 'img0_confidence.png')
  assert heat.mode == 'RGB' and heat.size == (56, 40)
  inferno = matplotlib.colormaps['inferno']  # An integer indexes the colormap's 256 colours.
  rgb = inferno(np.round(confidence * 255).astype(int))[..., :3] * 255
  np.testing.assert_allclose(np.asarray(heat), rgb, atol=0.5)
  assert not (out / 'img0_probs.npy').exists()


def test_mode_flags_set_the_eval_fields(net):
  config = config_loading.load_config(DEMO)
  args = cli.build_parser().parse_args(['predict', '--input', 'x', '--output', 'y', '--mode',
                                        'multiscale', '--scales', '0.5', '1.25', '--no-flip',
                                        '--crop-size', '48', '40', '--stride', '32', '24'])
  args.config_overrides = []
  cli._predict_mode_overrides(args)  # pylint: disable=protected-access
  config = config_loading.apply_overrides(config, args.config_overrides)
  e = config.eval
  assert (e.mode, e.scales, e.flip, e.crop_size, e.stride) == (
      'multiscale', (0.5, 1.25), False, (48, 40), (32, 24))
  args = cli.build_parser().parse_args(['predict', '--input', 'x', '--output', 'y'])
  assert (args.mode, args.flip, args.probs, args.max_canvas, args.tile_batch) == (
      None, None, None, None, 4)  # The model's own eval settings; no --probs files.


# ---------------------------------------------------------------- tiling
def _numpy_tiled(apply, config, image, tile, stride):
  """Windows cut, padded with the uint8 mean pixel and averaged in NumPy, one window per pass."""
  fill = np.round(pipeline.mean_pixel(config.data.normalization)).astype(np.uint8)
  h, w = image.shape[:2]
  total, count = np.zeros((h, w, CLASSES)), np.zeros((h, w, 1))
  for y in modes.window_starts(h, tile[0], stride[0]):
    for x in modes.window_starts(w, tile[1], stride[1]):
      crop = image[y:y + tile[0], x:x + tile[1]]
      window = np.tile(fill, (1, *tile, 1))
      window[0, :crop.shape[0], :crop.shape[1]] = crop
      logits = np.asarray(apply(pipeline.normalize(window, config.data.normalization)))[0]
      total[y:y + crop.shape[0], x:x + crop.shape[1]] += logits[:crop.shape[0], :crop.shape[1]]
      count[y:y + crop.shape[0], x:x + crop.shape[1]] += 1
  return _softmax(total / count)


def test_tiled_equals_slide_mode_and_numpy_in_any_window_batch(net):
  config, model, variables, _ = net
  tile, stride = (32, 32), (16, 24)
  kwargs = dict(bucket=8, max_canvas=4096, tile=tile, tile_stride=stride)
  by_four = predictor_lib.predictor_from_config(config, model, variables, tile_batch=4, **kwargs)
  image = _image(7, 56, 72)  # 3 x 3 windows: batches of 4, 4 and 1 (+3 fill windows).
  assert by_four.is_tiled(56, 72) and tiling.num_windows(56, 72, tile, stride) == 9
  probs = by_four.probabilities(image)
  assert probs.shape == (56, 72, CLASSES) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  apply = modes.model_apply_fn(model, variables)
  # The same windows in one pass: modes.slide averages their logits, then one softmax.
  one_pass = jax.jit(lambda x: jax.nn.softmax(modes.slide(apply, x, tile, stride), -1))
  normalised = pipeline.normalize(image[None], config.data.normalization)
  np.testing.assert_allclose(probs, np.asarray(one_pass(normalised))[0], atol=1e-5)
  all_at_once = predictor_lib.predictor_from_config(config, model, variables, tile_batch=9,
                                                    **kwargs)
  np.testing.assert_allclose(all_at_once.probabilities(image), probs, atol=1e-6)
  np.testing.assert_array_equal(by_four(image), probs.argmax(-1))
  # Shorter than the window: windows padded with the mean pixel, as the one-pass canvas.
  strip = _image(8, 20, 72)
  np.testing.assert_allclose(by_four.probabilities(strip),
                             _numpy_tiled(jax.jit(apply), config, strip, tile, stride), atol=1e-5)
  assert not by_four.is_tiled(24, 40)  # Its canvas, 64 x 64 (the training crop), is one pass.


def test_tiling_refuses_proposals_and_bad_windows(net, tmp_path):
  config, model, variables, _ = net
  boxes = tmp_path / 'boxes.json'
  boxes.write_text('{"a": [[0, 0, 10, 10, 1.0]]}')
  proposals = config_loading.apply_overrides(config_loading.from_dict(config.to_dict()), [
      ('eval.mode', 'proposals'), ('eval.proposals', str(boxes))])
  p = predictor_lib.Predictor(proposals, model, variables, max_canvas=100, tile=(8, 8))
  with pytest.raises(ValueError, match=r"the image is 20x30, a canvas of more than --max-canvas "
                     r"100 pixels, and eval.mode='proposals' cannot be tiled"):
    p.probabilities(np.zeros((20, 30, 3), np.uint8), 'a')
  with pytest.raises(ValueError, match=r'--tile-batch 0 must be >= 1'):
    predictor_lib.Predictor(config, model, variables, tile_batch=0)
  with pytest.raises(ValueError, match=r'the window stride 40x8 \(--tile-stride\) is larger than '
                     r'the window 32x32 \(--tile\)'):
    predictor_lib.Predictor(config, model, variables, tile=(32, 32), tile_stride=(40, 8))
  with pytest.raises(ValueError, match=r'the window 473x473 \(config.eval.crop_size \(the default '
                     r'--tile\)\) is 223,729 pixels, more than --max-canvas 100,000'):
    large = config_loading.apply_overrides(config_loading.from_dict(config.to_dict()), [
        ('eval.crop_size', '473,473'), ('eval.stride', '316,316')])
    predictor_lib.Predictor(large, model, variables, max_canvas=100_000)


# ---------------------------------------------------------------- progress
class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_bar_on_a_terminal_and_a_summary_otherwise(whole, tmp_path):
  paths = _images(tmp_path / 'in', [(40, 56)] * 3)
  out, log, terminal = tmp_path / 'out', io.StringIO(), _Terminal()
  files.predict_files(whole, paths, out, PALETTE, log=log, errors=terminal)
  bar = terminal.getvalue()
  assert re.search(r'predict: 100%.*3/3 .*img2\.png', bar) and '\r' in bar
  lines = log.getvalue().splitlines()  # stdout as before: one line per image, then the total.
  assert lines == [f'{p} -> {out / p.name} (40x56)' for p in paths] + [
      f'predicted 3 of 3 images into {out}']
  quiet, log = io.StringIO(), io.StringIO()
  files.predict_files(whole, paths, out, PALETTE, log=log, errors=quiet)
  assert re.fullmatch(r'predict: 3 images in [0-9.]+ s \([0-9.]+ s/image\)\n', quiet.getvalue())
  assert log.getvalue().splitlines() == lines
  silent = io.StringIO()
  files.predict_files(whole, paths, out, PALETTE, log=io.StringIO(), errors=silent,
                      progress=False)
  assert silent.getvalue() == ''


# ---------------------------------------------------------------- messages
@pytest.mark.parametrize('flags, message', [
    (['--tile-batch', '0'], '--tile-batch 0 must be >= 1 (windows per device pass)'),
    (['--max-canvas', '-1'], '--max-canvas -1 must be >= 0 (0 = never tile)'),
    (['--tile', '0', '64'], '--tile 0 64: give two positive sizes (height width)'),
    (['--scales', '1', '0'], '--scales 1.0 0.0: every scale must be > 0'),
    (['--mode', 'slide', '--crop-size', '4096', '4096'],
     'the window 4096x4096 (--crop-size) is 16,777,216 pixels, more than --max-canvas 4,194,304 '
     '(the most pixels predicted in one pass): give a smaller window or a larger --max-canvas'),
    (['--mode', 'slide', '--crop-size', '32', '32', '--stride', '48', '16'],
     'the window stride 48x16 (--stride) is larger than the window 32x32 (--crop-size)'),
    (['--mode', 'whole', '--scales', '0.5'], '--scales is used by eval.mode=multiscale; this '
     'prediction uses eval.mode=whole: add --mode multiscale'),
    (['--mode', 'whole', '--stride', '8', '8'], '--crop-size/--stride set the windows of --mode '
     'slide or multiscale; this prediction uses eval.mode=whole'),
    (['--proposals', 'selective_search', '--flip'], '--flip is not used by eval.mode=proposals'),
    (['--mode', 'slide', '--proposals', 'selective_search'],
     '--mode slide and --proposals both set config.eval.mode; pass one'),
])
def test_bad_flags_exit_2_naming_the_flag_before_the_model_loads(tmp_path, capsys, flags,
                                                                 message):
  (path,) = _images(tmp_path / 'in', [(8, 8)])
  argv = ['predict', '--workdir', str(tmp_path / 'no_workdir'), '--input', str(path),
          '--output', str(tmp_path / 'out'), *flags]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert message in err and 'does not exist' not in err  # The workdir was never looked at.
  assert not (tmp_path / 'out').exists()


def test_unknown_probs_value_is_refused_naming_the_flag(whole, tmp_path, capsys):
  with pytest.raises(SystemExit):
    cli.build_parser().parse_args(['predict', '--input', 'x', '--output', 'y', '--probs', 'sum'])
  assert "argument --probs: invalid choice: 'sum' (choose from all, max)" in (
      capsys.readouterr().err.replace("'all', 'max'", 'all, max'))
  (path,) = _images(tmp_path / 'in', [(8, 8)])
  with pytest.raises(ValueError, match=r"--probs 'sum' is unknown; use one of all, max"):
    files.predict_files(whole, [path], tmp_path / 'out', PALETTE, log=io.StringIO(), probs='sum')


def test_max_canvas_default_is_documented(capsys):
  with pytest.raises(SystemExit):
    cli.build_parser().parse_args(['predict', '--help'])
  assert f'{tiling.MAX_CANVAS:,}' in capsys.readouterr().out.replace('\n', ' ')
