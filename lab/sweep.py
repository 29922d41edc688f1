"""Find and remove a crashed run's leftovers, and nothing else.

A leftover is a domain whose name has the harness prefix AND whose
`<metadata>` carries the harness tag of a run that is no longer alive (its run
lock is free), plus that run's directory under the work dir.  A domain with the
prefix but without the tag, or of a live run, is never touched.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import libvirt
from lxml import etree

from . import loopdev, migration, network
from .hostproc import kernel_has_device_mapper, processes
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


def dm_leftovers(runs: Path, sys_dev=Path("/sys/dev/block"), runner=subprocess.run,
                 locks: Path | None = None) -> list[tuple[str, str]]:
    """Device-mapper devices a dead run of this work dir made: named acc-<run>-*,
    and mapped onto a loop device whose backing file lies in that run's directory
    (`runs` on the lab host; `locks`: where the runs' locks are, default `runs`)."""
    locks = locks or runs
    if runner is subprocess.run and not kernel_has_device_mapper():
        return []
    r = runner(["dmsetup", "ls"], capture_output=True, text=True)
    if r.returncode != 0:
        return []
    out = []
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX) or name.count("-") < 2:
            continue
        run_id = name.split("-")[1]
        if is_locked(locks / f"{run_id}.lock"):
            continue
        table = runner(["dmsetup", "table", name], capture_output=True, text=True).stdout.split()
        majmin = table[3] if len(table) > 3 and table[2] == "linear" else None
        back = sys_dev / majmin / "loop" / "backing_file" if majmin else None
        if back is not None and back.exists() and _inside(Path(back.read_text().strip()), runs / run_id,
                                                          resolve=isinstance(back, Path)):
            out.append((name, run_id))
    return out


def _inside(path: Path, root: Path, resolve: bool = True) -> bool:
    try:
        (path.resolve() if resolve else Path(os.path.normpath(path))).relative_to(
            root.resolve() if resolve else Path(os.path.normpath(root)))
        return True
    except ValueError:
        return False


def helper_leftovers(runs: Path, proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """Helper processes (nbdkit) serving files of a dead run.  They exit with their
    parent (--exit-with-parent), except when the parent dies before nbdkit arms
    that; then only the sweeper ends them."""
    found = []
    for pid, argv in processes(proc):
        if Path(argv[0]).name != "nbdkit":
            continue
        for a in argv[1:]:
            rel = a.split(str(runs) + "/", 1)        # --unix RUNS/<run>/... or error-*-file=RUNS/<run>/...
            if len(rel) == 2:
                run_id = rel[1].split("/", 1)[0]
                if run_id and not is_locked(runs / f"{run_id}.lock"):
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
            p = Path(f.get("path", ""))
            if host is not None:
                if _inside(p, files_root, resolve=False) and len(p.parts) > len(files_root.parts) + 1 \
                        and host.exists(p):
                    host.rmtree(p)
                    undone.append(f"removed {p} on {host.name}")
            elif p.exists() and _inside(p, work_dir):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                undone.append(f"removed {p}")
    return undone


def _sweep_remote(work_dir: Path, runs: Path, host_runs: Path, host) -> list[str]:
    """A remote lab host's leftovers of this work dir's dead runs."""
    from .hostexec import HostPath, runner_for
    undone: list[str] = []
    runner = runner_for(host)
    dead = lambda run_id: not is_locked(runs / f"{run_id}.lock")     # noqa: E731
    for br, run_id in network.harness_bridges(work_dir, runner=runner).items():
        if dead(run_id):
            network.host_run("ip", "link", "del", br, check=False, runner=runner)
            undone.append(f"removed leftover bridge {br} of dead run {run_id} on {host.name}")
    if host.which("dmsetup"):
        for name, run_id in dm_leftovers(host_runs, HostPath(host, "/sys/dev/block"), runner, locks=runs):
            runner(["dmsetup", "remove", "--force", name])
            undone.append(f"removed leftover device-mapper device {name} of dead run {run_id} on {host.name}")
    for dev, back in loopdev.list_loops(runner):
        parts = Path(back).parts
        if back and _inside(Path(back), host_runs, resolve=False) and len(parts) > len(host_runs.parts) \
                and dead(parts[len(host_runs.parts)]):
            loopdev.detach(dev, runner)
            undone.append(f"detached leftover loop device {dev} ({back}) on {host.name}")
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
        if dead(name):
            undone += [f"{line} (left by dead run {name})" for line in migration.stop(host, host_runs / name / migration.DIR_NAME)]
            host.rmtree(host_runs / name)
            undone.append(f"removed leftover run directory {host_runs / name} on {host.name}")
    if runs.is_dir():
        for entry in sorted(runs.iterdir()):
            if entry.is_dir() and dead(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                undone.append(f"removed leftover run directory {entry}")
        for lock in runs.glob("*.lock"):
            if not (runs / lock.stem).exists() and not is_locked(lock):
                lock.unlink(missing_ok=True)
    return undone


def sweep(conn: libvirt.virConnect, work_dir: Path, log=print, host=None, host_work_dir=None) -> list[str]:
    """`host`: the lab host's executor when it is remote (its files, bridges, dm and
    loop devices are swept there; the runs' locks stay in this machine's work_dir)."""
    runs = work_dir / "runs"
    undone: list[str] = []
    if host is not None and not host.local:
        undone += _sweep_domains(conn, work_dir, runs, Path(host_work_dir), host)
        undone += _sweep_remote(work_dir, runs, Path(host_work_dir) / "runs", host)
        for line in undone:
            log(f"sweep: {line}")
        return undone
    undone += _sweep_domains(conn, work_dir, runs, work_dir, None)
    for br, run_id in network.harness_bridges(work_dir).items():
        if not is_locked(runs / f"{run_id}.lock"):
            network.host_run("ip", "link", "del", br, check=False)
            undone.append(f"removed leftover bridge {br} of dead run {run_id}")
    for name, run_id in dm_leftovers(runs):
        subprocess.run(["dmsetup", "remove", "--force", name], capture_output=True, text=True)
        undone.append(f"removed leftover device-mapper device {name} of dead run {run_id}")
    for dev, back in loopdev.list_loops():
        parts = Path(back).parts
        if back and _inside(Path(back), runs) and len(parts) > len(runs.parts) \
                and not is_locked(runs / f"{parts[len(runs.parts)]}.lock"):
            loopdev.detach(dev)
            undone.append(f"detached leftover loop device {dev} ({back})")
    for pid, run_id in helper_leftovers(runs):
        try:
            os.kill(pid, signal.SIGKILL)
            undone.append(f"killed leftover nbdkit {pid} of dead run {run_id}")
        except ProcessLookupError:
            pass
    if runs.is_dir():
        for saved in sorted(runs.glob("*/host-state-*.json")):
            if not is_locked(runs / f"{saved.parent.name}.lock"):
                from .pci import HostState
                undone += [f"{line} (left by dead run {saved.parent.name})" for line in HostState.restore_saved(saved)]
                saved.unlink()
        for entry in sorted(runs.iterdir()):
            if entry.is_dir() and not is_locked(runs / f"{entry.name}.lock"):
                if (entry / migration.DIR_NAME).is_dir():
                    from .hostexec import LocalHost
                    undone += [f"{line} (left by dead run {entry.name})"
                               for line in migration.stop(LocalHost(), entry / migration.DIR_NAME)]
                shutil.rmtree(entry, ignore_errors=True)
                undone.append(f"removed leftover run directory {entry}")
        for lock in runs.glob("*.lock"):
            if not (runs / lock.stem).exists() and not is_locked(lock):
                lock.unlink(missing_ok=True)
    for line in undone:
        log(f"sweep: {line}")
    return undone
