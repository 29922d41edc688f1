"""Find and remove a crashed run's leftovers, and nothing else.

A leftover is a domain whose name has the harness prefix AND whose
`<metadata>` carries the harness tag of a run that is no longer alive (its run
lock is free), plus that run's directory under the work dir.  A domain with the
prefix but without the tag, or of a live run, is never touched.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import libvirt
from lxml import etree

from . import loopdev, migration, network
from .hostexec import LabPath
from .hostproc import host_processes, kernel_has_device_mapper
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


def dm_leftovers(host, runs: Path, locks: Path | None = None) -> list[tuple[str, str]]:
    """Device-mapper devices a dead run of this work dir made on the lab host: named
    acc-<run>-*, and mapped onto a loop device whose backing file lies in that run's
    directory (`runs` on the lab host; `locks`: where the runs' locks are, default `runs`)."""
    locks = locks or runs
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
        if is_locked(locks / f"{run_id}.lock"):
            continue
        table = host.run("dmsetup", "table", name, check=False).stdout.split()
        majmin = table[3] if len(table) > 3 and table[2] == "linear" else None
        back = f"/sys/dev/block/{majmin}/loop/backing_file" if majmin else None
        if back is not None and host.exists(back) and _inside(Path(host.read_text(back).strip()), runs / run_id):
            out.append((name, run_id))
    return out


def _inside(path: Path, root: Path) -> bool:
    """`path` lies under `root` (both paths on the same host, compared as written)."""
    try:
        Path(os.path.normpath(path)).relative_to(Path(os.path.normpath(root)))
        return True
    except ValueError:
        return False


def helper_leftovers(host, runs: Path, locks: Path | None = None) -> list[tuple[int, str]]:
    """Helper processes (nbdkit) on the lab host serving files of a dead run: they run
    detached from the harness, so when a run dies only the sweeper ends them."""
    locks = locks or runs
    found = []
    for pid, argv in host_processes(host):
        if Path(argv[0]).name != "nbdkit":
            continue
        for a in argv[1:]:
            rel = a.split(str(runs) + "/", 1)        # --unix RUNS/<run>/... or error-*-file=RUNS/<run>/...
            if len(rel) == 2:
                run_id = rel[1].split("/", 1)[0]
                if run_id and not is_locked(locks / f"{run_id}.lock"):
                    found.append((pid, run_id))
                break
    return found


def _sweep_domains(conn, work_dir: Path, runs: Path, files_root: Path, host) -> list[str]:
    undone: list[str] = []
    for dom in conn.listAllDomains():
        name = dom.name()
        if not name.startswith(PREFIX):
            continue
        tag = harness_tag(dom)
        if tag is None:
            continue                      # has our prefix but is not ours: never touch
        run_id = tag.get("run", "")
        if tag.get("dir") != str(work_dir):
            continue                      # a run with another work dir (another lab config) owns it
        if not run_id or is_locked(runs / f"{run_id}.lock"):
            continue                      # a live run (this one or a concurrent one)
        try:
            if dom.isActive():
                dom.destroy()
                undone.append(f"destroyed leftover domain {name} of dead run {run_id}")
            undefine(dom)
            undone.append(f"undefined leftover domain {name} of dead run {run_id}")
        except libvirt.libvirtError as e:
            undone.append(f"could not remove leftover domain {name}: {e.get_error_message()}")
        for f in tag.iter("{*}file"):
            p = LabPath(f.get("path", ""))
            if _inside(p, files_root) and len(p.parts) > len(files_root.parts) + 1 and host.exists(p):
                host.rmtree(p)
                undone.append(f"removed {p}" + ("" if str(files_root) == str(work_dir) else f" on {host.name}"))
    return undone


def sweep(conn: libvirt.virConnect, work_dir: Path, log=print, host=None, host_work_dir=None) -> list[str]:
    """The leftovers of this work dir's dead runs.  `host`: the lab host (None: this
    machine), where its files, bridges, dm and loop devices and helpers are swept;
    `host_work_dir`: the harness's work dir there.  The runs' locks stay in this
    machine's `work_dir`."""
    from .hostexec import LocalHost
    host = host or LocalHost()
    runs = work_dir / "runs"
    host_runs = LabPath(host_work_dir or work_dir) / "runs"
    dead = lambda run_id: not is_locked(runs / f"{run_id}.lock")     # noqa: E731
    on = "" if str(host_runs) == str(runs) else f" on {host.name}"
    undone = _sweep_domains(conn, work_dir, runs, host_runs.parent, host)
    for br, run_id in network.harness_bridges(host, work_dir).items():
        if dead(run_id):
            host.run("ip", "link", "del", br, check=False)
            undone.append(f"removed leftover bridge {br} of dead run {run_id}{on}")
    for name, run_id in dm_leftovers(host, host_runs, locks=runs):
        host.run("dmsetup", "remove", "--force", name, check=False)
        undone.append(f"removed leftover device-mapper device {name} of dead run {run_id}{on}")
    for dev, back in loopdev.list_loops(host):
        parts = Path(back).parts
        if back and _inside(Path(back), host_runs) and len(parts) > len(host_runs.parts) \
                and dead(parts[len(host_runs.parts)]):
            loopdev.detach(host, dev)
            undone.append(f"detached leftover loop device {dev} ({back}){on}")
    for pid, run_id in helper_leftovers(host, host_runs, locks=runs):
        if host.run("kill", "-9", str(pid), check=False).ok:
            undone.append(f"killed leftover nbdkit {pid} of dead run {run_id}{on}")
    if runs.is_dir():
        for saved in sorted(runs.glob("*/host-state-*.json")):
            if dead(saved.parent.name):
                from .pci import HostState
                undone += [f"{line} (left by dead run {saved.parent.name})"
                           for line in HostState.restore_saved(saved, host=host)]
                saved.unlink()
    try:
        entries = host.listdir(host_runs)
    except FileNotFoundError:
        entries = []
    for name in entries:
        if host.is_dir(host_runs / name) and dead(name):
            undone += [f"{line} (left by dead run {name})"
                       for line in migration.stop(host, host_runs / name / migration.DIR_NAME)]
            host.rmtree(host_runs / name)
            undone.append(f"removed leftover run directory {host_runs / name}{on}")
    if runs.is_dir():
        for entry in sorted(runs.iterdir()):
            if entry.is_dir() and dead(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                undone.append(f"removed leftover run directory {entry}")
        for lock in runs.glob("*.lock"):
            if not (runs / lock.stem).exists() and not is_locked(lock):
                lock.unlink(missing_ok=True)
    for line in undone:
        log(f"sweep: {line}")
    return undone
