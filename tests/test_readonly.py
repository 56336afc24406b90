"""Read-only places: `jaxseg eval` of a read-only workdir prints its scores and says the results
file could not be written (exit 0); training's write check (checkpoint.check_writable) refuses a
read-only workdir naming the folder.

Permission bits do not restrict root, so as root the commands run in a child process whose
capability bounding set lacks CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: after exec it is root
without the right to ignore permissions, as an ordinary user is (skipped, saying why, where the
capabilities cannot be dropped).
"""
import hashlib
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from jaxseg import checkpoint, parallel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_checkpoint_damage import _states  # noqa: E402  pylint: disable=g-import-not-at-top
from test_train import tiny_config  # noqa: E402  pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parents[1]
_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 24, 1, 2


# Drops the capabilities that let root ignore permission bits from the bounding set, then execs
# the command: the new program starts without them (a launcher, not a preexec_fn, since forking
# the multithreaded test process is unsafe).
LAUNCHER = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in ({_CAP_DAC_OVERRIDE}, {_CAP_DAC_READ_SEARCH}):
  if libc.prctl({_PR_CAPBSET_DROP}, cap, 0, 0, 0) != 0:
    print('cannot drop capability', cap, 'errno', ctypes.get_errno(), file=sys.stderr)
    sys.exit(99)
os.execv(sys.argv[1], sys.argv[1:])
"""


def run_without_override(args, stderr=subprocess.PIPE):
  """subprocess.run(args) where permission bits apply, as root too (skips when impossible)."""
  if os.geteuid() == 0:
    args = [sys.executable, '-c', LAUNCHER] + list(args)
  result = subprocess.run(args, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT,
                          env=dict(os.environ), timeout=300)
  if os.geteuid() == 0 and result.returncode == 99:
    pytest.skip('running as root and cannot drop CAP_DAC_OVERRIDE: permission bits would not '
                f'restrict this test ({result.stdout}{result.stderr})')
  return result


def make_read_only(folder):
  """chmod a-w on `folder` and everything in it; returns a function that undoes it."""
  paths = [folder] + sorted(folder.rglob('*'))
  modes = {p: p.stat().st_mode for p in paths}
  for p in paths:
    p.chmod(modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))

  def undo():
    for p in reversed(paths):
      p.chmod(modes[p])
  return undo


def _hashes(folder):
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A workdir holding checkpoint 2 of a width-1/16 FCN-8s (random parameters), its dataset
  prepared (the read-only eval reads it)."""
  root = tmp_path_factory.mktemp('readonly')
  config = tiny_config(str(root / 'tfds'), eval_every=-1)
  work = root / 'work'
  writer = checkpoint.Checkpointer(work, config.train.keep_checkpoints)
  writer.save(2, parallel.replicate(_states(config)[2], parallel.create_mesh()), config)
  writer.wait()
  writer.close()
  checkpoint.write_workdir_config(work, config)
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TF)
  pipeline.load_builder(config)
  return work


def test_eval_of_a_read_only_workdir_prints_scores_then_the_unwritten_file(workdir):
  before = _hashes(workdir)
  undo = make_read_only(workdir)
  try:
    result = run_without_override([sys.executable, '-m', 'jaxseg.cli', 'eval', '--workdir',
                                   str(workdir), '--checkpoint', 'latest'],
                                  stderr=subprocess.STDOUT)
  finally:
    undo()
  out = result.stdout
  assert result.returncode == 0, out[-3000:]
  expected = workdir / 'eval' / 'val_step2.json'
  message = f'jaxseg eval: the scores above are not saved: {expected} could not be written ('
  assert message in out and 'Permission denied' in out, out[-3000:]
  assert 'mean IoU' in out and 'triangle' in out  # The table,
  assert out.index('mean IoU') < out.index(message)  # then the message.
  assert 'Traceback' not in out and 'wrote ' not in out
  assert _hashes(workdir) == before and not (workdir / 'eval').exists()


CHECK = ('import sys\n'
         'from jaxseg import checkpoint\n'
         'for path in sys.argv[1:]:\n'
         '  try:\n'
         '    checkpoint.check_writable(path)\n'
         '    print("writable", path)\n'
         '  except PermissionError as e:\n'
         '    print("refused", e)\n')


def test_training_write_check_refuses_a_read_only_workdir(workdir, tmp_path):
  """Before any work: an existing read-only workdir, and a new one in a read-only folder."""
  parent = tmp_path / 'archive'
  parent.mkdir()
  new = parent / 'run'
  writable = tmp_path / 'fresh'
  undo = make_read_only(workdir)
  undo_parent = make_read_only(parent)
  try:
    result = run_without_override([sys.executable, '-c', CHECK, str(workdir), str(new),
                                   str(writable)])
  finally:
    undo()
    undo_parent()
  lines = result.stdout.splitlines()
  assert result.returncode == 0 and len(lines) == 3, result.stdout + result.stderr[-3000:]
  assert lines[0].startswith(f'refused Cannot write into {workdir} (Permission denied): '
                             f'training writes checkpoints, metrics and config.json into its '
                             f'workdir {workdir}.')
  assert 'jaxseg eval --workdir' in lines[0]
  assert lines[1].startswith(f'refused Cannot write into {parent} (Permission denied)')
  assert lines[2] == f'writable {writable}'
  assert not new.exists() and not writable.exists()  # The check creates nothing.
  assert not [p for p in workdir.rglob('.jaxseg-write-check-*')]
