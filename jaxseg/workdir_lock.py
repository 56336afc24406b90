"""One `jaxseg train` per workdir: a lock held by the running job, stale after a crash.

Two trainers on one workdir would overwrite each other's checkpoints and metrics. The running job
(process 0 of a multi-host job; the others trust it) holds a claim file in <workdir>/lock/ from
before anything is written to the workdir until it exits (normally, on an exception or on
SIGTERM); a second trainer is refused at once with a message naming the holder.

Scheme (the same code for local folders and object storage, through etils.epath — object stores
have no exclusive create): each contender writes its own claim <workdir>/lock/<token>.json
(host, pid, start time, heartbeat), then lists the folder. It holds the lock only when its claim
is the only live one; otherwise it deletes its claim and is refused. With a strongly consistent
listing (local file systems, GCS, S3) two contenders cannot both see only their own claim: the
later lister sees the earlier writer's claim. Two processes starting in the same instant may both
be refused (never both admitted); a rerun then succeeds.

A claim is stale, and taken over with a warning, when
  - its holder ran on this host (same hostname and pid namespace) and that pid is gone (or now
    names another process: its start time differs), e.g. after `kill -9`: detected at once;
  - its holder ran elsewhere (another VM, container or pid namespace: its pid cannot be checked)
    and its heartbeat, which the holder rewrites every HEARTBEAT_SECONDS, is older than
    STALE_AFTER_SECONDS by this host's clock (clocks must agree to well within that).
A holder on this host whose pid is alive keeps the lock however old its heartbeat (a stopped
process, `kill -STOP`, still owns its workdir). A holder that finds its claim gone (taken over
while it was thought dead) reports `lost` and the trainer stops without saving.
"""
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from etils import epath

from jaxseg import storage

LOCK_DIR = 'lock'
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 300.0
_SUFFIX = '.json'
_HELD: set[str] = set()  # Tokens of the locks this process holds now.


class WorkdirLockedError(PermissionError):
  """Another live `jaxseg train` holds the workdir."""


def _pid_namespace() -> str | None:
  try:
    return str(os.stat('/proc/self/ns/pid').st_ino)
  except OSError:
    return None


def _pid_start(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
  try:
    stat = _read(f'/proc/{pid}/stat')
  except OSError:
    return None
  return stat.rsplit(')', 1)[1].split()[19]  # Field 22; the name in (...) may hold spaces.


def _read(path: str) -> str:
  with open(path, encoding='utf-8', errors='replace') as f:
    return f.read()


def _pid_alive(pid: int, start: str | None) -> bool:
  """Whether `pid` runs on this host and is the process that started at `start`."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Exists, owned by another user.
  try:
    if _read(f'/proc/{pid}/stat').rsplit(')', 1)[1].split()[0] == 'Z':
      return False  # A zombie: dead, not yet reaped by its parent.
  except OSError:
    pass
  return start is None or _pid_start(pid) in (None, start)


def describe(claim: dict[str, Any]) -> str:
  """'host H, pid P, started T' of a claim."""
  started = claim.get('started', '?')
  return f'host {claim.get("host", "?")}, pid {claim.get("pid", "?")}, started {started}'


class WorkdirLock:
  """The lock on `workdir`: `acquire()` or refuse, heartbeat while held, `release()`.

  Also a context manager. Read-only commands (`jaxseg eval`, `predict`) take none.
  """

  def __init__(self, workdir: str | os.PathLike, *, command: str = '',
               heartbeat_seconds: float = HEARTBEAT_SECONDS,
               stale_after_seconds: float = STALE_AFTER_SECONDS):
    self.workdir = storage.resolve(workdir)
    self.directory = self.workdir / LOCK_DIR
    self.token = uuid.uuid4().hex
    self.path = self.directory / f'{self.token}{_SUFFIX}'
    self.heartbeat_seconds = float(heartbeat_seconds)
    self.stale_after_seconds = float(stale_after_seconds)
    now = time.time()
    self._claim = {'host': socket.gethostname(), 'pid': os.getpid(),
                   'pid_namespace': _pid_namespace(), 'pid_start': _pid_start(os.getpid()),
                   'started': time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(now)),
                   'heartbeat': now, 'command': command, 'token': self.token}
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.lost = False

  # -- claims
  def _claims(self) -> list[tuple[epath.Path, dict[str, Any] | None]]:
    """(path, contents or None when unreadable) of every claim in the lock folder."""
    if not self.directory.is_dir():
      return []
    out = []
    for path in sorted(self.directory.iterdir()):
      if not path.name.endswith(_SUFFIX):
        continue  # A heartbeat's temporary file.
      try:
        out.append((path, json.loads(path.read_text())))
      except FileNotFoundError:
        continue  # Released meanwhile.
      except (ValueError, OSError):
        out.append((path, None))
    return out

  def _stale_reason(self, path: epath.Path, claim: dict[str, Any] | None) -> str | None:
    """Why the claim is stale, or None when its holder may be alive."""
    now = time.time()
    if claim is None:  # Unreadable: stale only once old by its modification time.
      try:
        age = now - path.stat().mtime
      except OSError:
        return None
      return (f'is unreadable and {age:.0f} s old' if age > self.stale_after_seconds else None)
    same_host = (claim.get('host') == self._claim['host']
                 and claim.get('pid_namespace') == self._claim['pid_namespace'])
    if same_host and isinstance(claim.get('pid'), int):
      if claim['pid'] == os.getpid():
        return None if claim.get('token') in _HELD else 'was left by this process'
      return None if _pid_alive(claim['pid'], claim.get('pid_start')) else 'is no longer running'
    age = now - float(claim.get('heartbeat', 0.0))
    if age > self.stale_after_seconds:
      return (f'sent no heartbeat for {age:.0f} s (stale after {self.stale_after_seconds:.0f} s; '
              'its pid cannot be checked from this host)')
    return None

  def _live_others(self) -> list[tuple[epath.Path, dict[str, Any] | None]]:
    """Claims other than ours whose holder may be alive; stale ones are removed, with a warning."""
    live = []
    for path, claim in self._claims():
      if path.name == self.path.name:
        continue
      reason = self._stale_reason(path, claim)
      if reason is None:
        live.append((path, claim))
        continue
      logging.warning('Taking over the lock of workdir %s: its holder (%s) %s; removing %s.',
                      self.workdir, describe(claim or {}), reason, path)
      for leftover in (path, path.parent / (path.name + '.tmp')):  # With a killed heartbeat's.
        try:
          leftover.unlink()
        except FileNotFoundError:
          pass
    return live

  def _refusal(self, path: epath.Path, claim: dict[str, Any] | None, race: bool) -> str:
    if claim is None:
      holder = f'a claim that cannot be read ({path})'
    else:
      age = time.time() - float(claim.get('heartbeat', 0.0))
      holder = f'{describe(claim)}, last heartbeat {age:.0f} s ago'
    what = ('another `jaxseg train` is starting on it at the same moment' if race
            else 'another `jaxseg train` is running on it')
    pid = claim.get('pid', 'PID') if claim else 'PID'
    host = claim.get('host', 'its host') if claim else 'its host'
    return (f'workdir {self.workdir} is locked: {what} ({holder}; lock file {path}). Wait for it '
            f'to finish, stop it (`kill {pid}` on {host}: it saves a checkpoint and exits), or '
            'train into another --workdir. A holder that died without releasing the lock is '
            'detected: at once on the same host, after '
            f'{self.stale_after_seconds:.0f} s without a heartbeat from another host (or delete '
            f'{path} once you are sure it is gone).')

  # -- acquire / heartbeat / release
  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirLockedError naming the live holder."""
    others = self._live_others()
    if others:
      raise WorkdirLockedError(self._refusal(*others[0], race=False))
    self._write()
    others = self._live_others()  # Someone who claimed at the same time.
    if others:
      self._unlink()
      raise WorkdirLockedError(self._refusal(*others[0], race=True))
    _HELD.add(self.token)
    self._thread = threading.Thread(target=self._beat, name='jaxseg-workdir-lock', daemon=True)
    self._thread.start()

  def _write(self) -> None:
    self._claim['heartbeat'] = time.time()
    storage.write_text_atomic(self.path, json.dumps(self._claim, indent=2) + '\n')

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      try:
        if not self.path.exists():
          self.lost = True
          logging.error('The lock %s of workdir %s was removed (taken over by another process '
                        'that thought this one dead); this run stops.', self.path, self.workdir)
          return
        self._write()
      except OSError as e:  # Storage hiccup: the next beat retries.
        logging.warning('Could not refresh the workdir lock %s: %s', self.path, e)

  def _unlink(self) -> None:
    try:
      self.path.unlink()
    except FileNotFoundError:
      pass
    if not storage.is_remote(self.directory):  # Object storage has no empty folders to remove.
      try:
        self.directory.rmdir()
      except (OSError, ValueError):  # epath raises ValueError for a folder not empty.
        pass  # Not empty (another claim) or gone.

  def release(self) -> None:
    """Stops the heartbeat and removes the claim (and the lock folder when empty)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=10)
      self._thread = None
    if self.token in _HELD:
      _HELD.discard(self.token)
      if not self.lost:
        self._unlink()

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
