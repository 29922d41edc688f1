"""Leases: file locks that keep two runs (or two xdist workers) from taking the
same port, and that mark a run as alive.  A lock dies with its process, so a
crashed run never holds anything."""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from .errors import LabError


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


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def lease_port(lease_dir: Path, base: int, span: int = 2000) -> Lease:
    for port in range(base, base + span):
        lease = try_lock(lease_dir / f"port-{port}.lock")
        if lease is None:
            continue
        if _port_free(port):
            lease.value = port
            return lease
        lease.release()
    raise PortsExhausted(f"no free local port in {base}..{base + span - 1} for guest SSH; "
                       "fix: change [ssh] port_base in the lab config")


def _claim(path: Path, owner: str, value) -> Lease | None:
    """Take the lock at `path` and write who holds it into the file (for the refusal of the next one)."""
    lease = try_lock(path)
    if lease is not None:
        os.ftruncate(lease._fd, 0)
        os.pwrite(lease._fd, owner.encode(), 0)
        lease.value = value
    return lease


class PortsExhausted(LabError, RuntimeError):
    """Every guest SSH forward port of the lab's range is taken: the lab config's to fix."""


class DeviceBusy(LabError, RuntimeError):
    pass


def lease_device(lease_dir: Path, kind: str, ident: str, owner: str, deadline=None) -> Lease:
    """An exclusive lease on a scarce host device (a PF, a USB device, an HPRE),
    across runs and xdist workers.  Waits until `deadline` (a Deadline) for a
    busy device, then refuses naming the holder."""
    import time
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in ident)
    path = lease_dir / f"dev-{kind}-{safe}.lock"
    while True:
        lease = _claim(path, owner, ident)
        if lease is not None:
            return lease
        if deadline is None or deadline.expired:
            holder = path.read_text().strip() if path.exists() else "unknown"
            raise DeviceBusy(f"{kind} {ident} is leased by {holder}; "
                             + ("waited " + f"{deadline.budget:.0f}s; " if deadline else "")
                             + "run again when that run ends, or give this run another device in the lab config")
        time.sleep(0.2)


class HostBusy(LabError, RuntimeError):
    pass


def lease_host_slot(cfg, owner: str, deadline, log=None) -> Lease:
    """One of the lab host's `slots`: held by one xdist worker or run for its whole
    session, so no more workers drive a host than it was declared for, also
    across separate runs.  Waits until `deadline`, then refuses naming the holders."""
    import time
    slot_dir = cfg.work_dir / "slots"
    said = False
    while True:
        for i in range(cfg.slots):
            lease = _claim(slot_dir / f"slot-{i}.lock", owner, i)
            if lease is not None:
                return lease
        holders = "; ".join(p.read_text().strip() or "?" for p in sorted(slot_dir.glob("slot-*.lock"))[:cfg.slots])
        if deadline.expired:
            raise HostBusy(f"lab host {cfg.name}: all {cfg.slots} slot(s) are held ({holders}); waited "
                           f"{deadline.budget:.0f}s; fix: wait for those runs, or raise [host] slots in {cfg.path.name}")
        if log and not said:
            log(f"[lab] waiting for a free slot on lab host {cfg.name} (held by: {holders})")
            said = True
        time.sleep(0.5)
