"""The second libvirt endpoint the migration claims use (USB-9), on the local lab:
a real live migration reaches it and the guest runs there; everything it started is
gone after close, and a dead run's target is stopped by the sweeper."""
import os
import subprocess

import pytest

from lab import config, migration
from lab.domain import VMSpec
from lab.hostexec import LocalHost
from lab.run import Lab
from lab.sweep import sweep

pytestmark = pytest.mark.lab


def daemons_of(target_dir) -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-f", str(target_dir)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "libvirtd" in line or "virtlogd" in line]


def test_a_vm_live_migrates_to_the_target_and_close_leaves_nothing():
    run = Lab(config.load())
    target = migration.MigrationTarget(run.host, run.hdir)
    try:
        if target.missing_tools():
            pytest.skip(f"no {target.missing_tools()} on this machine")
        target.start()
        assert daemons_of(target.dir), "the target's libvirtd and virtlogd are not running"
        vm = run.new_vm(VMSpec("migrate"))
        vm.start()
        moved = vm.migrate(target)
        assert moved.done, f"refused: {moved.refusal}"
        assert target.state(vm.name) == "running"
        assert "VM status: running" in target.monitor(vm.name, "info status")
        assert not vm.domain.is_active(), "the source still runs the migrated domain"
        undone = target.close()
        assert any(f"destroyed {vm.name}" in u for u in undone), undone
        assert not daemons_of(target.dir) and not os.path.exists(target.dir)
    finally:
        target.close()
        run.close()


def test_the_sweeper_stops_a_dead_runs_target():
    cfg = config.load()
    run = Lab(cfg)
    target = migration.MigrationTarget(run.host, run.hdir)
    if target.missing_tools():
        run.close()
        pytest.skip(f"no {target.missing_tools()} on this machine")
    target.start()
    run.leases.close()         # the run dies without its teardown: its lease is free, its target runs
    run.lock.release()
    try:
        undone = sweep(run.session.conn, cfg.work_dir, log=lambda m: None, host=LocalHost())
        assert any(u.startswith("stopped libvirtd") and "the migration target" in u for u in undone), undone
        assert not daemons_of(target.dir) and not os.path.exists(run.hdir)
    finally:
        target.close()
        run.close()
