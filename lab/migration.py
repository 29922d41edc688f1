"""A second libvirt endpoint on the lab host, for claims about live migration (USB-9).

libvirtd and virtlogd in their own mount namespace on the lab host (the layout of
lab/daemon.py's private daemon, but made and started through the lab host's shell,
so it works on a remote host too), with a host UUID of its own so libvirt takes it
for another host.  The source libvirtd migrates to it peer to peer over the unix
socket; QEMU's migration stream goes over the lab host's loopback only.

It lives in the run's directory on the lab host: the run's teardown destroys what
it holds and stops it, and the sweeper stops the endpoint of a dead run before it
removes that run's directory.
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

import libvirt

from .hostexec import LabPath
from .daemon import PREPARE_SCRIPT, START_SCRIPT, STOP_SCRIPT
from .timeouts import Deadline, poll
from .errors import LabError

DIR_NAME = "migration-target"

# The daemons of lab/daemon.py, but blind to systemd-machined: both daemons number
# their domains from 1, so the migrating domain would be registered twice under
# machined's one name for it (qemu-<id>-<name>: "Machine ... already exists").  Without
# the system bus the target puts its QEMU in plain cgroups of its own.
_START = r'''
set -e
d=$1
if [ -d /run/dbus ]; then mkdir -p "$d/no-dbus"; mount --bind "$d/no-dbus" /run/dbus; fi
''' + START_SCRIPT


class MigrationTargetError(LabError):
    """The second libvirt endpoint could not be set up: a lab problem, not a finding."""


@dataclass
class Migrated:
    """The outcome of a live migration: refused (libvirt's message) or done."""
    refusal: str | None

    @property
    def done(self) -> bool:
        return self.refusal is None


class MigrationTarget:
    def __init__(self, host, run_dir):
        self.host = host
        self.dir = LabPath(str(run_dir)) / DIR_NAME
        self.host_uuid = str(uuid.uuid4())

    @property
    def uri(self) -> str:
        """The target's URI as the lab host's own libvirtd reaches it (peer to peer)."""
        return f"qemu+unix:///system?socket={self.dir}/sock/libvirt-sock"

    def missing_tools(self) -> list[str]:
        return [t for t in ("unshare", "libvirtd", "virtlogd", "virsh") if not self.host.which(t)]

    def start(self, deadline: Deadline | None = None) -> "MigrationTarget":
        missing = self.missing_tools()
        if missing:
            raise MigrationTargetError(f"lab host {self.host.name} has no {', '.join(missing)}: a second libvirt "
                                       f"endpoint for migration claims cannot be started there")
        self.host.run("sh", "-c", PREPARE_SCRIPT, "sh", str(self.dir), self.host_uuid)
        r = self.host.run("unshare", "--mount", "--propagation", "private", "sh", "-c", _START, "sh",
                          str(self.dir), check=False, timeout=60)
        if not r.ok:
            raise MigrationTargetError(f"the migration target's libvirtd on {self.host.name} did not start: "
                                       f"{(r.stderr or r.stdout).strip()[-400:]}")
        poll(lambda: self.virsh("version", check=False).ok,
             deadline or Deadline(30, f"the migration target's libvirtd on {self.host.name} to answer at {self.uri}"),
             interval=0.3)
        return self

    def virsh(self, *args, check: bool = True):
        """virsh against the target, run on the lab host (only the lab host reaches its socket)."""
        return self.host.run("virsh", "-c", self.uri, *args, check=check, timeout=60)

    def state(self, name: str) -> str:
        r = self.virsh("domstate", name, check=False)
        return r.stdout.strip() if r.ok else f"absent ({r.stderr.strip()})"

    def monitor(self, name: str, command: str) -> str:
        return self.virsh("qemu-monitor-command", "--hmp", name, command).stdout

    def close(self) -> list[str]:
        """Destroy whatever runs there, stop the daemons, remove the directory."""
        undone = []
        if self.host.exists(str(self.dir / "libvirtd.pid")):
            names = self.virsh("list", "--name", check=False).stdout.split()
            for name in names:
                self.virsh("destroy", name, check=False)
                undone.append(f"destroyed {name} on the migration target")
        undone += stop(self.host, self.dir)
        self.host.rmtree(self.dir)
        undone.append(f"removed the migration target {self.dir} on {self.host.name}")
        return undone


def stop(host, target_dir) -> list[str]:
    """Stop the target's daemons (by their pid files) wherever they run; [] if none ran."""
    r = host.run("sh", "-c", STOP_SCRIPT, "sh", str(target_dir), check=False, timeout=90)
    return [f"{line}: the migration target on {host.name}" for line in r.stdout.splitlines() if line.strip()]


def migrate_live(dom: libvirt.virDomain, target: MigrationTarget, deadline: Deadline) -> Migrated:
    """Live-migrate `dom` peer to peer to `target`, the stream on the lab host's loopback.
    A migration still running at the deadline is aborted and fails the wait.  Disks stay
    where they are (same host: shared storage), so libvirt's cache-mode check is waived."""
    params = {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1",
              libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "127.0.0.1"}
    flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_UNSAFE
    out: dict = {}

    def run():
        try:
            dom.migrateToURI3(target.uri, params, flags)
            out["result"] = Migrated(None)
        except libvirt.libvirtError as e:
            out["result"] = Migrated(e.get_error_message())

    t = threading.Thread(target=run, name="migrate", daemon=True)
    t.start()
    t.join(deadline.remaining)
    if t.is_alive():
        try:
            dom.abortJob()
        except libvirt.libvirtError:
            pass
        t.join(30)
        raise deadline.fail("the live migration to finish or be refused")
    return out["result"]
