"""A trained run's model on examples: restore a workdir's checkpoint, plot what it predicts.

Restoring is jaxseg.inference's (`Restored`); JAX, the model and the checkpoint library are
imported inside the functions that restore.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
import pathlib
from typing import Any

from matplotlib.figure import Figure

from jaxseg.visualize.figures import plot_segmentations
from jaxseg.visualize.workdir import existing_workdir


def _percent(x: float) -> str:
  return 'n/a' if x is None or math.isnan(x) else f'{100 * x:.1f}'


def restore(workdir: str | pathlib.Path, checkpoint: str | int = 'best') -> Any:
  """jaxseg.inference.restore of an existing workdir's checkpoint ('best', 'latest' or a step)."""
  from jaxseg import inference  # pylint: disable=g-import-not-at-top
  path = existing_workdir(workdir)
  if not (path / 'checkpoints').is_dir():
    raise FileNotFoundError(f'{path / "checkpoints"} does not exist: the workdir has no '
                            'checkpoint to predict with')
  return inference.restore(path, checkpoint)


def checkpoint_steps(workdir: str | pathlib.Path) -> list[int]:
  """Steps of the checkpoints kept in the workdir (empty if none)."""
  from jaxseg import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  path = existing_workdir(workdir)
  if not (path / 'checkpoints').is_dir():
    return []
  checkpointer = checkpoint_lib.Checkpointer(path, read_only=True)
  try:
    return checkpointer.all_steps()
  finally:
    checkpointer.close()


def restore_evaluated(workdir: str | pathlib.Path, results: Mapping[str, Any]) -> Any:
  """The checkpoint an eval result was computed with if still kept, else the best one."""
  step = results.get('step')
  return restore(workdir, step if step in checkpoint_steps(workdir) else 'best')


def plot_predictions(restored: Any, examples: Sequence[Mapping[str, Any]],
                     class_names: Sequence[str], palette: Any,
                     scores: Mapping[str, float] | None = None, title: str = '') -> Figure:
  """`plot_segmentations` of examples (from `load_examples`) with the restored model's output.

  `scores` ({id: IoU fraction}) adds each image's IoU to its row title.
  """
  if not examples:
    raise ValueError('no examples to predict')
  predictions = restored.predict(e['image'] for e in examples)
  titles = [e['id'] if scores is None or e['id'] not in scores
            else f'{e["id"]}\nIoU {_percent(scores[e["id"]])}%' for e in examples]
  return plot_segmentations([e['image'] for e in examples], [e['label'] for e in examples],
                            predictions, class_names, palette, row_titles=titles,
                            title=title or f'{restored.config.model.name} step {restored.step}')
