"""Paths a user gives (workdirs, data dirs, weight files): local folders or cloud storage.

Every such path goes through `etils.epath`, so `gs://bucket/run` (or any scheme epath's
backends serve: GCS, S3 through fsspec) reaches orbax, TensorBoard and jaxseg's own JSON files
unchanged. `pathlib.Path('gs://b/run')` would have turned it into the local folder `gs:/b/run`.
"""
import os

from etils import epath

_SCHEME = '://'


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` names cloud storage (has a URL scheme such as gs://)."""
  return _SCHEME in os.fspath(path)


def resolve(path: str | os.PathLike) -> epath.Path:
  """An epath.Path of `path`: URLs as given, local paths made absolute."""
  path = epath.Path(path)
  return path if is_remote(path) else path.absolute()


def write_text_atomic(path: epath.Path, text: str) -> None:
  """Writes `text` to a temporary file beside `path`, then replaces `path` with it.

  Locally readers never see half a file; on object storage the replace is a copy, and an
  interrupted write leaves the old file (and a stray .tmp).
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + '.tmp')
  tmp.write_text(text)
  tmp.replace(path)
