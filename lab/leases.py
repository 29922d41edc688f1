"""Controller-side locks: file locks on this machine that mark a run's own directory
here as alive, and serialise the start of a local private libvirtd.  A lock dies with
its process, so a crashed run never holds anything.  What a run holds on its lab host
(its liveness there, ports, devices, slots) is leased there: lab/hostleases.py."""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


class Lease:
    def __init__(self, path: Path, fd: int, value=None):
        self.path, self._fd, self.value = path, fd, value

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def try_lock(path: Path) -> Lease | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return Lease(path, fd)


def is_locked(path: Path) -> bool:
    """True when a live process holds the lock at `path`."""
    lease = try_lock(path)
    if lease is None:
        return True
    lease.release()
    return False
