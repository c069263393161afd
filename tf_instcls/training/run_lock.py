"""One training run per model_dir: ``model_dir/run.lock``.

A run holds an exclusive ``flock`` on the file while it trains and writes its holder
(host, pid, start time) into it. A second run on the same model_dir fails at once with
a message naming the holder. The operating system drops the lock when its process ends,
however it ends (kill -9 included; after a machine crash, when the shared filesystem's
lock service notices), so a lock is never stale for long: a run that finds the file
unlocked but still naming a holder takes it over with a warning (that holder died
without releasing it). The file stays, empty, when a run ends normally.

Only the training loop takes it (process 0 for a multi-client run, which then tells the
others); evaluation, export and analysis read checkpoints and need no lock. The lock
relies on the filesystem's ``flock``: local filesystems and NFSv4 honour it.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket

from absl import logging

LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """Another live run holds the model_dir."""


def _holder_text(holder: dict) -> str:
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started "
            f"{holder.get('started', '?')}")


class RunLock:
    """``acquire()`` / ``release()`` the model_dir of a training run."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._fd: int | None = None
        self.created_dir = self.created_file = False

    def acquire(self) -> None:
        """Takes the lock or raises :class:`RunLockedError` naming the live holder."""
        self.created_dir = not os.path.isdir(self.model_dir)
        os.makedirs(self.model_dir, exist_ok=True)
        self.created_file = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _read(self.path)
            raise RunLockedError(
                f"{self.model_dir} is in use by another training run ({_holder_text(holder)};"
                f" {self.path}). Wait for it to end, stop it, or use another --model_dir. "
                "Evaluation and export need no lock and can read its checkpoints now.") from None
        previous = _read(self.path, fd)
        if previous:
            logging.warning("%s: taking over the lock of a run that ended without releasing "
                            "it (%s); its process is gone", self.path, _holder_text(previous))
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self, *, remove: bool = False) -> None:
        """Empties the file and drops the lock; ``remove``: also delete what acquiring
        created (a refused run leaves the model_dir as it found it)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        if remove and self.created_file:
            os.remove(self.path)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        if remove and self.created_dir:
            try:
                os.rmdir(self.model_dir)
            except OSError:  # not empty: something else was written there
                pass


def _read(path: str, fd: int | None = None) -> dict:
    """The holder written in the lock file ({} when empty or unreadable)."""
    try:
        if fd is not None:
            text = os.pread(fd, 4096, 0).decode()
        else:
            with open(path) as f:
                text = f.read(4096)
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
