"""Workdirs on cloud storage: jaxseg hands gs:// paths to etils.epath unchanged.

A fake bucket: epath's backend is mocked so that gs://bucket/... lands in a temporary folder,
and every path the backend receives is recorded. Code that went through pathlib instead would
write into a local folder named 'gs:' and the bucket would stay empty.
"""
import json
import os
import pathlib
import sys
from unittest import mock

import numpy as np
import pytest
from etils.epath import gpath
from etils.epath import testing as epath_testing

from jaxseg import checkpoint
from jaxseg import config_loading
from jaxseg import inference
from jaxseg import storage
from jaxseg import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'experiments'))
import default  # noqa: E402  pylint: disable=g-import-not-at-top

BUCKET = 'gs://bucket/'


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """(folder backing gs://bucket/, list of the gs:// paths the storage backend was asked for)."""
  backing = tmp_path / 'bucket'
  backing.mkdir()
  monkeypatch.chdir(tmp_path)  # A stray local 'gs:' folder would appear here.
  asked = []

  def local(path):
    path = os.fspath(path)
    if path.startswith(str(backing)):  # The real backend calling back with a mapped path.
      return path
    asked.append(path)
    assert path.startswith(BUCKET), f'not a bucket path: {path}'
    return str(backing / path[len(BUCKET):])

  def one(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def two(original, path, dst, *args, **kwargs):
    return original(local(path), local(dst), *args, **kwargs)

  fns = {name: one for name in ('open', 'exists', 'isdir', 'listdir', 'glob', 'makedirs',
                                'mkdir', 'remove', 'rmtree', 'stat')}
  fns.update(rename=two, replace=two, copy=two)
  with mock.patch.object(gpath, '_is_tf_installed', lambda: False), \
      epath_testing.mock_epath(**fns):
    yield backing, asked
  assert not (tmp_path / 'gs:').exists(), 'a gs:// path was written as a local folder'


def test_remote_paths_are_kept_whole():
  assert storage.is_remote('gs://b/run') and not storage.is_remote('runs/x')
  assert str(storage.resolve('gs://b/run')) == 'gs://b/run'
  assert storage.resolve('runs/x').is_absolute()


def test_workdir_files_reach_the_bucket(bucket):
  backing, asked = bucket
  workdir = BUCKET + 'runs/psp'
  config = default.get_config()
  config.train.num_steps = 7
  checkpoint.write_workdir_config(workdir, config)
  assert checkpoint.read_workdir_config(workdir)['train']['num_steps'] == 7
  assert config_loading.from_json_file(workdir + '/config.json').train.num_steps == 7
  assert json.loads((backing / 'runs/psp/config.json').read_text())['train']['num_steps'] == 7

  results = {'mean_iou': 0.5, 'confusion_matrix': np.eye(2, dtype=np.int64)}
  path = inference.write_results(results, workdir, 'val', 3)
  assert str(path) == workdir + '/eval/val_step3.json'
  assert json.loads((backing / 'runs/psp/eval/val_step3.json').read_text())['mean_iou'] == 0.5

  # TensorBoard's writer goes through TF's own GCS client, which the fake bucket cannot serve.
  writer = train.MetricWriter(storage.resolve(workdir), resume_step=0, tensorboard=False)
  writer.write(1, 'train', {'loss': 2.0})
  writer.write(2, 'train', {'loss': 1.5})
  writer.close()
  lines = (backing / 'runs/psp/metrics.jsonl').read_text().splitlines()
  assert [json.loads(l)['loss'] for l in lines] == [2.0, 1.5]
  resumed = train.MetricWriter(storage.resolve(workdir), resume_step=1, tensorboard=False)
  resumed.write(2, 'train', {'loss': 1.25})
  resumed.close()
  lines = (backing / 'runs/psp/metrics.jsonl').read_text().splitlines()
  assert [json.loads(l)['loss'] for l in lines] == [2.0, 1.25]
  assert asked and all(p.startswith(BUCKET) for p in asked)


def test_weights_read_from_the_bucket(bucket):
  from jaxseg.weights import files  # pylint: disable=g-import-not-at-top
  backing, _ = bucket
  with pytest.raises(FileNotFoundError, match='gs://bucket/w/vgg16.npz does not exist'):
    files.read_weights(BUCKET + 'w/vgg16.npz')
  (backing / 'w').mkdir()
  (backing / 'w/vgg16.npz').write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='cannot read weights file gs://bucket/w/vgg16.npz'):
    files.read_weights(BUCKET + 'w/vgg16.npz')


def test_missing_bucket_files_are_named_as_urls(bucket):
  del bucket
  with pytest.raises(FileNotFoundError, match='gs://bucket/nothing/config.json not found'):
    config_loading.from_json_file(BUCKET + 'nothing/config.json')
  assert checkpoint.read_workdir_config(BUCKET + 'nothing') is None
