"""A private libvirt daemon for a lab host that has none of its own to give
(`host.daemon = "private"`): libvirtd and virtlogd in their own mount namespace,
with /etc/libvirt, /run/libvirt, /var/lib/libvirt and /var/cache/libvirt bound
from `<work_dir>/daemon`, serving `qemu+unix:///system?socket=<work_dir>/daemon/sock/libvirt-sock`.

It is a second, independent libvirt endpoint on the same machine: its own
domains, its own QEMU driver state.  The harness drives it exactly like any
other lab host's libvirt, through its URI.  QEMU logs stay in the shared
/var/log/libvirt/qemu (domain names are unique per run).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from .config import LabConfig
from .leases import try_lock
from .timeouts import Deadline, poll

# Constant script; every path reaches it as a positional argument.
START_SCRIPT = r'''
set -e
d=$1
mount --bind "$d/etc" /etc/libvirt
mount --bind "$d/run" /run/libvirt
mount --bind "$d/lib" /var/lib/libvirt
mount --bind "$d/cache" /var/cache/libvirt
virtlogd -d -p "$d/virtlogd.pid"
exec libvirtd -d -p "$d/libvirtd.pid"
'''


def _pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if str(pidfile).encode() in cmd else None      # ours, not a recycled pid


def running(cfg: LabConfig) -> bool:
    d = cfg.private_daemon_dir
    return _pid(d / "libvirtd.pid") is not None and (d / "sock" / "libvirt-sock").exists()


def _prepare(d: Path) -> None:
    for sub in ("run", "lib", "cache", "sock"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    etc = d / "etc"
    if not etc.exists():
        tmp = d / "etc.new"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree("/etc/libvirt", tmp, symlinks=True)
        # Nothing of the system daemon's: no persistent domains, no autostarted networks.
        for pattern in ("qemu/*.xml", "qemu/autostart/*", "qemu/networks/autostart/*"):
            for f in tmp.glob(pattern):
                f.unlink()
        with open(tmp / "libvirtd.conf", "a") as f:
            f.write(f'\n# acc-harness private daemon\nunix_sock_dir = "{d / "sock"}"\n')
        tmp.rename(etc)


def ensure(cfg: LabConfig, log=print) -> None:
    """Start the lab host's private libvirtd unless it runs (idempotent, safe
    against two runs starting it at once)."""
    if cfg.daemon != "private":
        return
    d = cfg.private_daemon_dir
    d.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(60, f"the private libvirtd of lab host {cfg.name} to take its start lock")
    lock = poll(lambda: try_lock(d / "start.lock"), deadline, interval=0.2)
    try:
        if running(cfg):
            return
        for tool in ("unshare", "libvirtd", "virtlogd", "mount"):
            if not shutil.which(tool):
                raise RuntimeError(f"lab host {cfg.name}: daemon = 'private' needs {tool}, which is not installed")
        _prepare(d)
        (d / "sock" / "libvirt-sock").unlink(missing_ok=True)
        log(f"[lab] starting the private libvirtd of lab host {cfg.name} ({d})")
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", START_SCRIPT, "sh", str(d)],
                           capture_output=True, text=True, timeout=60, start_new_session=True)
        if r.returncode != 0:
            raise RuntimeError(f"lab host {cfg.name}: the private libvirtd did not start: {r.stderr.strip() or r.stdout.strip()}")
        poll(lambda: running(cfg), Deadline(30, f"the private libvirtd of lab host {cfg.name} to listen on "
                                                 f"{d / 'sock' / 'libvirt-sock'}"), interval=0.1)
        from .session import Session
        Session(cfg.libvirt_uri, timeout_s=30).close()     # answers, or LabUnreachable says why
    finally:
        lock.release()


def stop(cfg: LabConfig) -> list[str]:
    """Stop the private daemon (its domains must be gone: the sweeper sees to the harness's)."""
    d = cfg.private_daemon_dir
    done = []
    for name in ("libvirtd", "virtlogd"):
        pid = _pid(d / f"{name}.pid")
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            poll(lambda: _pid(d / f"{name}.pid") is None or not Path(f"/proc/{pid}").exists(),
                 Deadline(30, f"{name} {pid} of lab host {cfg.name} to exit"), interval=0.1)
            done.append(f"stopped private {name} {pid} of lab host {cfg.name}")
    return done


def stop_if_idle(cfg: LabConfig) -> list[str]:
    """At the end of a run: stop the private daemon unless another run holds a slot
    on this host or the daemon still has domains (then it is left, and said so)."""
    if cfg.daemon != "private" or not running(cfg):
        return []
    from .leases import is_locked
    held = [p.name for p in sorted((cfg.work_dir / "slots").glob("slot-*.lock")) if is_locked(p)]
    if held:
        return [f"left the private libvirtd of {cfg.name} running: {len(held)} slot(s) held by other runs"]
    import libvirt
    try:
        conn = libvirt.open(cfg.libvirt_uri)
        try:
            doms = [d.name() for d in conn.listAllDomains()]
        finally:
            conn.close()
    except libvirt.libvirtError as e:
        return [f"left the private libvirtd of {cfg.name} running: it did not answer ({e.get_error_message()})"]
    if doms:
        return [f"left the private libvirtd of {cfg.name} running: it has domains {', '.join(doms)}"]
    return stop(cfg)
