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

import shutil
import subprocess
from pathlib import Path

from .config import LabConfig
from .errors import LabError
from .leases import try_lock
from .timeouts import Deadline, poll


class DaemonError(LabError):
    """A lab host's private libvirtd could not be prepared or started."""

# Constant scripts; every path reaches them as a positional argument.  They run on this
# machine for a lab host's private daemon and through a lab host's shell for the
# migration target (lab/migration.py).

# The daemon's own /etc/libvirt, once: nothing of the system daemon's (no persistent
# domains, no autostarted networks), its socket in <d>/sock (or $3; "" keeps libvirt's
# default, for a daemon with a /run of its own), and a host UUID if given.
PREPARE_SCRIPT = r'''
set -e
d=$1; host_uuid=${2:-}; sock=${3-$d/sock}
mkdir -p "$d/run" "$d/lib" "$d/cache" "$d/sock" "$d/log"
if [ ! -d "$d/etc" ]; then
  rm -rf "$d/etc.new"
  cp -a /etc/libvirt "$d/etc.new"
  rm -f "$d"/etc.new/qemu/*.xml "$d"/etc.new/qemu/autostart/* "$d"/etc.new/qemu/networks/autostart/*
  printf '\n# acc-harness private daemon\n' >> "$d/etc.new/libvirtd.conf"
  if [ -n "$sock" ]; then printf 'unix_sock_dir = "%s"\n' "$sock" >> "$d/etc.new/libvirtd.conf"; fi
  if [ -n "$host_uuid" ]; then printf 'host_uuid = "%s"\n' "$host_uuid" >> "$d/etc.new/libvirtd.conf"; fi
  mv "$d/etc.new" "$d/etc"
fi
'''

# Stops the daemons by their pid files, only a process started with that pid file
# (never a recycled pid); says what it stopped.
STOP_SCRIPT = r'''
d=$1
for name in libvirtd virtlogd; do
  f="$d/$name.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if grep -qF "$f" "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid"
    i=0; while [ -d "/proc/$pid" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    [ -d "/proc/$pid" ] && kill -9 "$pid"
    echo "stopped $name $pid"
  fi
done
exit 0
'''

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
                raise DaemonError(f"lab host {cfg.name}: daemon = 'private' needs {tool}, which is not installed")
        r = subprocess.run(["sh", "-c", PREPARE_SCRIPT, "sh", str(d)], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise DaemonError(f"lab host {cfg.name}: preparing the private libvirtd's {d} failed: {r.stderr.strip()}")
        (d / "sock" / "libvirt-sock").unlink(missing_ok=True)
        log(f"[lab] starting the private libvirtd of lab host {cfg.name} ({d})")
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", START_SCRIPT, "sh", str(d)],
                           capture_output=True, text=True, timeout=60, start_new_session=True)
        if r.returncode != 0:
            raise DaemonError(f"lab host {cfg.name}: the private libvirtd did not start: {r.stderr.strip() or r.stdout.strip()}")
        poll(lambda: running(cfg), Deadline(30, f"the private libvirtd of lab host {cfg.name} to listen on "
                                                 f"{d / 'sock' / 'libvirt-sock'}"), interval=0.1)
        from .session import Session
        Session(cfg.libvirt_uri, timeout_s=30).close()     # answers, or LabUnreachable says why
    finally:
        lock.release()


def stop(cfg: LabConfig) -> list[str]:
    """Stop the private daemon (its domains must be gone: the sweeper sees to the harness's)."""
    r = subprocess.run(["sh", "-c", STOP_SCRIPT, "sh", str(cfg.private_daemon_dir)], capture_output=True, text=True,
                       timeout=90)
    return [f"{line}: the private daemon of lab host {cfg.name}" for line in r.stdout.splitlines() if line.strip()]


def stop_if_idle(cfg: LabConfig) -> list[str]:
    """At the end of a run: stop the private daemon unless another run holds a slot
    on this host or the daemon still has domains (then it is left, and said so)."""
    if cfg.daemon != "private" or not running(cfg):
        return []
    from .hostexec import LocalHost
    from .hostleases import lease_states
    held = [n for n, st in lease_states(LocalHost(), cfg.host_work_dir / "leases").items()
            if n.startswith("slot-") and st.held]
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
