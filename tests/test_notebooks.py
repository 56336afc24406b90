"""The notebooks run top to bottom against a tiny workdir, and are committed without outputs.

A module fixture trains experiments/demo.py shrunk to a few steps (FCN-8s at width 1/16 on the
tiny synthetic dataset) with the real trainer, so the notebooks and `jaxseg report` read a real
workdir: metrics.jsonl, config.json, eval/val_step<N>.json and a checkpoint. The kernel is the
test's own interpreter (a kernelspec written into a temporary JUPYTER_PATH).
"""
import contextlib
import fcntl
import json
import math
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'notebooks').glob('*.ipynb'))
CELL_TIMEOUT_S = 600
TRAIN_STEPS = 4


@pytest.fixture(scope='module')
def shared_dir(tmp_path_factory):
  """A folder every pytest-xdist worker of this session shares (the session's own otherwise)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@contextlib.contextmanager
def _locked(path: pathlib.Path):
  with open(path, 'w') as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)  # Released when the file closes.
    yield


@pytest.fixture(scope='module')
def data_dir(shared_dir):
  """TFDS data_dir holding the prepared tiny synthetic dataset (prepared once, under a lock)."""
  from jaxseg import visualize  # pylint: disable=g-import-not-at-top
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top
  path = shared_dir / 'notebooks_tfds'
  with _locked(shared_dir / 'notebooks_tfds.lock'):
    pipeline.load_builder(visualize.dataset_config('synthetic_shapes/tiny', str(path)))
  return str(path)


@pytest.fixture(scope='module')
def workdir(shared_dir, data_dir):
  """A real, tiny training run: 4 steps, evaluated and checkpointed at steps 2 and 4.

  Trained once per session: xdist workers wait for the first one's run and reuse it.
  """
  from jaxseg import config_loading, train  # pylint: disable=g-import-not-at-top
  path = shared_dir / 'notebooks_workdir'
  with _locked(shared_dir / 'notebooks_workdir.lock'):
    if not (path / 'done').is_file():
      config = config_loading.load_config(ROOT / 'experiments' / 'demo.py')
      config.model.width = 1 / 16
      config.data.update(dict(dataset='synthetic_shapes/tiny', data_dir=data_dir,
                              crop_size=(32, 32), eval_size=(64, 64), shuffle_buffer=32,
                              prefetch=1))
      config.optim.warmup_steps = 1
      config.eval.batch_size = 8
      config.train.update(dict(batch_size=8, num_steps=TRAIN_STEPS, log_every=1, eval_every=2,
                               checkpoint_every=2, keep_checkpoints=1))
      shutil.rmtree(path, ignore_errors=True)  # A run that died half-way.
      train.train_and_evaluate(config, path)
      (path / 'done').touch()
  return path


@pytest.fixture(scope='module')
def kernel_env(tmp_path_factory):
  """JUPYTER_PATH with a 'python3' kernelspec that runs this interpreter (the venv's)."""
  jupyter = tmp_path_factory.mktemp('jupyter')
  spec = jupyter / 'kernels' / 'python3'
  spec.mkdir(parents=True)
  (spec / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      'display_name': 'Python 3 (jaxseg tests)', 'language': 'python'}))
  return {'JUPYTER_PATH': str(jupyter)}


def test_committed_notebooks_have_no_outputs():
  assert {p.name for p in NOTEBOOKS} == {'architectures.ipynb', 'explore_data.ipynb',
                                         'inspect_results.ipynb'}
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == 'python3', path.name
    for index, cell in enumerate(nb.cells):
      if cell.cell_type == 'code':
        assert cell.outputs == [], f'{path.name} cell {index} has stale outputs'
        assert cell.execution_count is None, f'{path.name} cell {index} has an execution count'


def _run(path: pathlib.Path, env: dict[str, str], monkeypatch) -> nbformat.NotebookNode:
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name='python3',
                                   resources={'metadata': {'path': str(path.parent)}})
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as e:  # Name the notebook; keep the traceback.
    pytest.fail(f'{path.name} failed:\n{e}')
  return nb


def _images(nb) -> int:
  return sum('image/png' in out.get('data', {}) for cell in nb.cells if cell.cell_type == 'code'
             for out in cell.outputs)


def test_inspect_results_runs(workdir, kernel_env, monkeypatch):
  nb = _run(ROOT / 'notebooks' / 'inspect_results.ipynb',
            dict(kernel_env, JAXSEG_WORKDIR=str(workdir), JAXSEG_NUM_IMAGES='2'), monkeypatch)
  assert _images(nb) == 5  # Curves, per-class IoU, confusion matrix, samples, worst images.
  text = json.dumps([cell.outputs for cell in nb.cells if cell.cell_type == 'code'])
  assert 'val_0' in text and 'mean IoU' in text


def test_explore_data_runs(data_dir, kernel_env, monkeypatch):
  nb = _run(ROOT / 'notebooks' / 'explore_data.ipynb',
            dict(kernel_env, JAXSEG_DATASET='synthetic_shapes/tiny', JAXSEG_DATA_DIR=data_dir,
                 JAXSEG_NUM_EXAMPLES='16'), monkeypatch)
  assert _images(nb) == 3  # Samples, frequencies, augmentation.


def test_architectures_runs(kernel_env, monkeypatch):
  nb = _run(ROOT / 'notebooks' / 'architectures.ipynb', kernel_env, monkeypatch)
  assert _images(nb) == 2  # Switches, pyramid bins.
  text = json.dumps([cell.outputs for cell in nb.cells if cell.cell_type == 'code'])
  assert 'ppm/bin6' in text and '6x6x512' in text  # PSPNet's 6x6 bin at full width.


# ---------------------------------------------------------------- the same workdir, via the report
def test_report_on_a_trained_workdir(workdir, tmp_path):
  from jaxseg import report, visualize  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'report'
  path = report.write_report(workdir, out, num_images=2, num_worst=2, log=lambda _: None)
  text = path.read_text()
  for name in ('training_curves', 'per_class_iou', 'confusion_matrix', 'samples',
               'worst_images'):
    assert (out / f'{name}.png').stat().st_size > 5000
    assert f'({name}.png)' in text
  results = visualize.load_eval(workdir)
  assert results['step'] == TRAIN_STEPS and f'at step {TRAIN_STEPS}' in text
  assert f'**{100 * results["mean_iou"]:.1f}**' in text
  for entry in visualize.worst_images(results['per_image'], 2):
    assert entry['id'] in text


def test_restored_predictions_reproduce_the_eval_per_image_scores(workdir):
  """Worst images show the evaluated model's predictions of the very images the eval scored."""
  from jaxseg import metrics, visualize  # pylint: disable=g-import-not-at-top
  results = visualize.load_eval(workdir)
  restored = visualize.restore_evaluated(workdir, results)
  assert restored.step == results['step']
  worst = visualize.worst_images(results['per_image'], 3)
  examples = visualize.load_examples(restored.config, results['split'],
                                     ids=[w['id'] for w in worst])
  assert [e['id'] for e in examples] == [w['id'] for w in worst]
  for entry, example, pred in zip(worst, examples, restored.predict(e['image'] for e in examples)):
    cm = np.asarray(metrics.confusion_matrix(pred[None], example['label'][None],
                                             restored.config.data.num_classes))
    score = metrics.scores_from_confusion(cm)['mean_iou']
    assert math.isclose(score, entry['iou'], rel_tol=1e-6), entry['id']
