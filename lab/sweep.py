"""Find and remove a crashed run's leftovers, and nothing else.

A leftover is a domain whose name has the harness prefix AND whose `<metadata>`
carries the harness tag of a run that is no longer alive, plus that run's files,
bridges, device-mapper and loop devices, helpers and saved host state on the lab host.
A run is alive while its lease on the lab host is held (lab/hostleases.py), whatever
controller started it: the sweeper takes a dead run's lease before it removes anything
of it, so it never touches a live run of another controller, and two sweepers never
sweep one run.  A domain with the prefix but without the tag, or of a live run, is
never touched.  (A tag of an older harness, without the lab host's work dir, is judged
by the run lock in the controller's work dir, as that harness did.)
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import libvirt
from lxml import etree

from . import loopdev, migration, netns, network
from .hostexec import LabPath
from .hostproc import host_processes, kernel_has_device_mapper
from .hostleases import run_lease
from .leases import is_locked
from .xml import META_NS

PREFIX = "acc-"


def harness_tag(dom: libvirt.virDomain) -> etree._Element | None:
    try:
        return etree.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, META_NS).encode())
    except libvirt.libvirtError:
        return None


def undefine(dom: libvirt.virDomain) -> None:
    """Undefine with everything libvirt keeps beside the definition; drivers
    that know fewer flags get fewer."""
    flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
             | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    for f in (flags, flags & ~libvirt.VIR_DOMAIN_UNDEFINE_NVRAM, 0):
        try:
            dom.undefineFlags(f)
            return
        except libvirt.libvirtError as e:
            if e.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT,
                                          libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
                raise


def dm_leftovers(host, runs, dead) -> list[tuple[str, str]]:
    """Device-mapper devices a dead run of this work dir made on the lab host: named
    acc-<run>-*, and mapped onto a loop device whose backing file lies in that run's
    directory, or, whatever their table (a run killed mid-fault leaves an error or delay
    table; a one-direction fault's all-error device never has another), named for a run
    whose directory is still in this work dir (`runs` on the lab host; `dead(run_id)`:
    the run is dead).  Devices that map onto another come first."""
    try:
        if not kernel_has_device_mapper(text=host.read_text("/proc/misc")) or not host.which("dmsetup"):
            return []
    except OSError:
        return []
    r = host.run("dmsetup", "ls", check=False)
    if not r.ok:
        return []
    out = []
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX) or name.count("-") < 2:
            continue
        run_id = name.split("-")[1]
        table = host.run("dmsetup", "table", name, check=False).stdout.split()
        majmin = table[3] if len(table) > 3 and table[2] == "linear" else None
        back = f"/sys/dev/block/{majmin}/loop/backing_file" if majmin else None
        ours = (back is not None and host.exists(back) and _inside(Path(host.read_text(back).strip()), runs / run_id)) \
            or host.is_dir(runs / run_id)
        if ours and dead(run_id):
            out.append((name, run_id))
    return sorted(out, key=lambda nr: nr[0].endswith("-err"))


def _inside(path: Path, root: Path) -> bool:
    """`path` lies under `root` (both paths on the same host, compared as written)."""
    try:
        Path(os.path.normpath(path)).relative_to(Path(os.path.normpath(root)))
        return True
    except ValueError:
        return False


def helper_leftovers(host, runs, dead) -> list[tuple[int, str]]:
    """Helper processes (nbdkit) on the lab host serving files of a dead run: they run
    detached from the harness, so when a run dies only the sweeper ends them."""
    found = []
    for pid, argv in host_processes(host):
        if Path(argv[0]).name != "nbdkit":
            continue
        for a in argv[1:]:
            rel = a.split(str(runs) + "/", 1)        # --unix RUNS/<run>/... or error-*-file=RUNS/<run>/...
            if len(rel) == 2:
                run_id = rel[1].split("/", 1)[0]
                if run_id and dead(run_id):
                    found.append((pid, run_id))
                break
    return found


class DeadRuns:
    """Which runs are dead on the lab host, decided once per run: a run is dead when this
    sweeper can take its lease (then it holds it until the sweep ends, and removes it)."""

    def __init__(self, leases, host_work_dir, owners: dict):
        self.leases, self.hwd, self.owners = leases, LabPath(str(host_work_dir)), owners
        self._verdict: dict[str, bool] = {}
        self.claimed = []

    def __call__(self, run_id: str, hostdir=None) -> bool:
        key = str(run_lease(hostdir or self.hwd, run_id))
        if key not in self._verdict:
            if self.leases.holds(key):
                self._verdict[key] = False        # this sweeper's own run
            else:
                lease = self.leases.take(key, owner=f"sweeper: {self.leases.owner}")
                if lease is not None:
                    self.claimed.append(lease)
                self._verdict[key] = lease is not None
        return self._verdict[key]

    def judged(self, run_id: str) -> bool:
        """Something of this run (on this lab host work dir) was already found and judged."""
        return str(run_lease(self.hwd, run_id)) in self._verdict

    def whose(self, run_id: str) -> str:
        owner = self.owners.get(f"run-{run_id}.lock", "")
        return f" (its lease said: {owner})" if owner else ""

    def release(self) -> None:
        for lease in self.claimed:
            lease.release(remove=True)
        self.claimed = []


def _tag_is_dead(tag, dead: DeadRuns, work_dir: Path, runs: Path) -> bool:
    run_id = tag.get("run", "")
    if not run_id:
        return False
    if tag.get("hostdir"):
        return dead(run_id, tag.get("hostdir"))
    # an older harness's tag: its controller's run lock, if that controller is this work dir
    return tag.get("dir") == str(work_dir) and not is_locked(runs / f"{run_id}.lock")


def _sweep_domains(conn, work_dir: Path, runs: Path, dead: DeadRuns, host) -> list[str]:
    undone: list[str] = []
    for dom in conn.listAllDomains():
        name = dom.name()
        if not name.startswith(PREFIX):
            continue
        tag = harness_tag(dom)
        if tag is None:
            continue                      # has our prefix but is not ours: never touch
        if not _tag_is_dead(tag, dead, work_dir, runs):
            continue                      # a live run (of any controller), or another lab config's old run
        run_id = tag.get("run")
        try:
            if dom.isActive():
                dom.destroy()
                undone.append(f"destroyed leftover domain {name} of dead run {run_id}")
            undefine(dom)
            undone.append(f"undefined leftover domain {name} of dead run {run_id}{dead.whose(run_id)}")
        except libvirt.libvirtError as e:
            undone.append(f"could not remove leftover domain {name}: {e.get_error_message()}")
        files_root = LabPath(tag.get("hostdir") or str(dead.hwd)) / "runs" / run_id
        for f in tag.iter("{*}file"):
            p = LabPath(f.get("path", ""))
            if _inside(p, files_root) and len(p.parts) > len(files_root.parts) and host.exists(p):
                host.rmtree(p)
                undone.append(f"removed {p}{host.on}")
    return undone


def sweep(conn: libvirt.virConnect, work_dir: Path, log=print, *, host, host_work_dir=None,
          leases=None) -> list[str]:
    """The leftovers of dead runs on this lab host.  `host`: the lab host (LocalHost for
    this machine), where its files, bridges, dm and loop devices and helpers are swept;
    `host_work_dir`: the harness's work dir there; `leases`: the run's LeaseHolder there
    (None: one for this sweep).  This machine's own run directories (`work_dir`/runs) go
    by their controller-side run locks."""
    from .hostleases import LeaseHolder, controller_identity, lease_states
    hwd = LabPath(str(host_work_dir or work_dir))
    own = leases is None
    if own:
        leases = LeaseHolder(host, hwd / "leases", controller_identity(work_dir) + " (sweep)")
    dead = DeadRuns(leases, hwd, {n: st.owner for n, st in lease_states(host, hwd / "leases").items()})
    try:
        undone = _sweep(conn, work_dir, host, hwd, dead)
    finally:
        dead.release()
        if own:
            leases.close()
    for line in undone:
        log(f"sweep: {line}")
    return undone


def _sweep(conn, work_dir: Path, host, hwd: LabPath, dead: DeadRuns) -> list[str]:
    """Everything a dead run left, in the order things hold each other: domains first, then
    links and namespaces, devices (dm, loop, helpers), the runs' directories on the lab host
    (after putting back the host state they saved), lone leases, this machine's run dirs."""
    runs, host_runs = work_dir / "runs", hwd / "runs"
    undone = _sweep_domains(conn, work_dir, runs, dead, host)
    undone += _sweep_links(host, host_runs, dead)
    undone += _sweep_devices(host, host_runs, dead)
    undone += _sweep_run_dirs(host, host_runs, dead)
    lone = [n[4:-5] for n in dead.owners if n.startswith("run-") and n.endswith(".lock")]
    for run_id in lone:
        if not dead.judged(run_id) and dead(run_id):
            undone.append(f"released the lease of dead run {run_id}, which had left nothing else{host.on}"
                          f"{dead.whose(run_id)}")
    return undone + _sweep_controller_dirs(runs, host_runs)


def _sweep_links(host, host_runs: LabPath, dead: DeadRuns) -> list[str]:
    undone = []
    for br, (run_id, hostdir) in network.harness_bridges(host).items():
        if dead(run_id, hostdir):
            host.run("ip", "link", "del", br, check=False)
            undone.append(f"removed leftover bridge {br} of dead run {run_id}{host.on}")
    for name, run_id in netns.leftovers(host, PREFIX):
        # this work dir's runs only (its run directory is there until swept, below)
        if host.is_dir(host_runs / run_id) and dead(run_id):
            host.run("ip", "netns", "del", name, check=False)
            undone.append(f"removed leftover network namespace {name} of dead run {run_id}{host.on}")
    return undone


def _sweep_devices(host, host_runs: LabPath, dead: DeadRuns) -> list[str]:
    undone = []
    for name, run_id in dm_leftovers(host, host_runs, dead):
        host.run("dmsetup", "remove", "--force", name, check=False)
        undone.append(f"removed leftover device-mapper device {name} of dead run {run_id}{host.on}")
    for dev, back in loopdev.list_loops(host):
        parts = Path(back).parts
        if back and _inside(Path(back), host_runs) and len(parts) > len(host_runs.parts) \
                and dead(parts[len(host_runs.parts)]):
            loopdev.detach(host, dev)
            undone.append(f"detached leftover loop device {dev} ({back}){host.on}")
    for pid, run_id in helper_leftovers(host, host_runs, dead):
        if host.run("kill", "-9", str(pid), check=False).ok:
            undone.append(f"killed leftover nbdkit {pid} of dead run {run_id}{host.on}")
    return undone


def _sweep_run_dirs(host, host_runs: LabPath, dead: DeadRuns) -> list[str]:
    """A dead run's directory on the lab host, after the host state it saved is put back
    and its migration target stopped."""
    from .pci import HostState
    try:
        entries = host.listdir(host_runs)
    except FileNotFoundError:
        entries = []
    undone = []
    for name in entries:
        if host.is_dir(host_runs / name) and dead(name):
            for saved in sorted(n for n in host.listdir(host_runs / name) if n.startswith("host-state-")):
                undone += [f"{line} (left by dead run {name})"
                           for line in HostState.restore_saved(host_runs / name / saved, host=host)]
            undone += [f"{line} (left by dead run {name})"
                       for line in migration.stop(host, host_runs / name / migration.DIR_NAME)]
            host.rmtree(host_runs / name)
            undone.append(f"removed leftover run directory {host_runs / name}{host.on}{dead.whose(name)}")
    return undone


def _sweep_controller_dirs(runs: Path, host_runs: LabPath) -> list[str]:
    """This machine's own run dirs of dead runs (by their run locks), when the lab host's
    are elsewhere (else they went above, by lease), and stale run locks."""
    undone = []
    if runs.is_dir():
        for entry in sorted(runs.iterdir()):
            if entry.is_dir() and str(runs) != str(host_runs) and not is_locked(runs / f"{entry.name}.lock"):
                shutil.rmtree(entry, ignore_errors=True)
                undone.append(f"removed leftover run directory {entry}")
        for lock in runs.glob("*.lock"):
            if not (runs / lock.stem).exists() and not is_locked(lock):
                lock.unlink(missing_ok=True)
    return undone
