"""The harness against the real local lab: failures end fast with a clear
reason, a SIGKILLed run is swept, the NoCloud image path works."""
import dataclasses
import os
import signal
import subprocess
import sys
import time

import libvirt
import pytest

from lab import config
from lab import xml as X
from lab.arch import profile
from lab.domain import VMSpec
from lab.guest.console import GuestPanic
from lab.run import Lab
from lab.session import LabUnreachable, Session
from lab.sweep import harness_tag
from lab.timeouts import Deadline, poll

pytestmark = pytest.mark.lab
REPO = config.REPO


@pytest.fixture(scope="module")
def cfg():
    return config.load()


def test_unreachable_libvirt_fails_within_seconds():
    t = time.monotonic()
    with pytest.raises(LabUnreachable, match="cannot connect to libvirt.*libvirtd running"):
        Session("qemu+unix:///system?socket=/nonexistent/libvirt-sock", timeout_s=10)
    assert time.monotonic() - t < 10


def test_pytest_with_unreachable_lab_exits_with_one_clear_line(tmp_path, pytester_like):
    lab = tmp_path / "lab.toml"
    lab.write_text((REPO / "labs/local.toml").read_text().replace(
        'libvirt_uri = "qemu:///system"', 'libvirt_uri = "qemu+unix:///system?socket=/nonexistent/sock"'))
    t = time.monotonic()
    r = pytester_like("--lab", str(lab), "suites/test_serial.py", "-k", "SER_1 or pty_console", timeout=120)
    assert time.monotonic() - t < 60
    assert r.returncode != 0
    assert "is not usable: cannot connect to libvirt" in r.stdout + r.stderr


def test_guest_paused_while_booting_fails_fast_and_is_retried_when_the_lab_says_so(cfg):
    """A booting guest that something pauses (on the nested lab: KVM's emulation failure)
    ends the wait at once as a HypervisorFault; with [host] boot_retries it is started
    again and the fault is kept in the VM's evidence."""
    import threading

    from lab.access import HypervisorFault
    run = Lab(dataclasses.replace(cfg, boot_retries=1))
    try:
        vm = run.new_vm(VMSpec("paused"))
        vm.start(wait=False)
        vm.domain.handle.suspend()
        t = time.monotonic()
        with pytest.raises(HypervisorFault, match="paused by the hypervisor while booting"):
            vm.wait_ready(Deadline(60, "a guest that was paused"))
        assert time.monotonic() - t < 10, "the pause is seen long before the boot deadline"
        vm.destroy()

        def pause_first_boot():            # the first boot is paused as soon as it runs
            poll(vm.domain.is_active, Deadline(30, "the first boot"), interval=0.01)
            vm.domain.handle.suspend()
        threading.Thread(target=pause_first_boot, daemon=True).start()
        vm.start(Deadline(60, "a boot after one paused boot"))
        assert vm.guest.run("true", check=False).ok and len(vm.boot_faults) == 1
        assert "paused by the hypervisor" in vm.evidence()["hypervisor faults of retried boots"]
    finally:
        run.close()


def test_guest_that_never_boots_fails_fast_with_the_panic(cfg):
    run = Lab(cfg)
    try:
        vm = run.new_vm(VMSpec("nonboot", extra_cmdline="rdinit=/nonexistent"))
        t = time.monotonic()
        with pytest.raises(GuestPanic, match="Kernel panic"):
            vm.start(Deadline(60, "a guest that cannot boot"))
        assert time.monotonic() - t < 30, "the panic is seen long before the boot deadline"
    finally:
        run.close()


def test_nocloud_seed_delivers_the_key(cfg):
    run = Lab(dataclasses.replace(cfg, image_access="nocloud"))
    try:
        vm = run.new_vm(VMSpec("nocloud"))
        cmdline = vm.domain.inactive_xml().find("os/cmdline").text
        assert "acc.sshkey" not in cmdline, "in this mode the key must come from the seed only"
        vm.start()
        assert "ssh keys taken from NoCloud seed" in vm.serial_text()
        keys = vm.guest.check_output("cat /root/.ssh/authorized_keys")
        assert run.key.public_blob in keys
    finally:
        run.close()


def _domains_of_pid(conn, pid):
    out = []
    for d in conn.listAllDomains():
        tag = harness_tag(d) if d.name().startswith("acc-") else None
        if tag is not None and tag.get("pid") == str(pid):
            out.append((d, tag.get("run")))
    return out


def test_sigkill_mid_suite_is_swept_next_run_and_foreign_domains_survive(cfg):
    conn = libvirt.open(cfg.libvirt_uri)
    foreign_el = X.domain("acc-foreign-not-ours", virt_type=cfg.virt_type, arch=profile(cfg.arch))
    foreign = conn.defineXML(X.to_string(foreign_el))   # our prefix, but no harness tag
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "suites/test_serial.py",
                             "-k", "pty_console"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        doms = poll(lambda: [d for d, _ in _domains_of_pid(conn, proc.pid) if d.isActive()],
                    Deadline(120, "the child run to start a VM"), interval=0.5)
        run_id = _domains_of_pid(conn, proc.pid)[0][1]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert doms[0].isActive(), "the killed run left its VM behind (the case the sweeper exists for)"
        run_dir = cfg.work_dir / "runs" / run_id
        assert run_dir.exists()

        from lab.hostexec import LocalHost
        from lab.hostleases import lease_states
        # its lease holder reads end-of-file when the killed process's pipe closes: then the run is dead
        def lease_free():
            st = lease_states(LocalHost(), cfg.host_work_dir / "leases").get(f"run-{run_id}.lock")
            return st is None or not st.held
        poll(lease_free, Deadline(10, f"the killed run {run_id}'s lease to be free"), interval=0.1)
        sweeper = Lab(cfg)       # a new run sweeps at start
        try:
            assert not [d for d in conn.listAllDomains() if (harness_tag(d) is not None and
                                                             harness_tag(d).get("run") == run_id)]
            assert not run_dir.exists(), "the dead run's overlays and logs are gone"
            assert any(run_id in line for line in sweeper.swept)
            assert conn.lookupByName("acc-foreign-not-ours").UUIDString() == foreign.UUIDString()
        finally:
            sweeper.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        foreign.undefine()
        conn.close()


def test_guest_host_key_is_pinned_from_the_console(cfg):
    from lab.guest.ssh import SSH, HostKeyMismatch
    run = Lab(cfg)
    try:
        vm = run.new_vm(VMSpec("hostkey"))
        vm.start()
        assert vm.access.host_key and vm.access.host_key.startswith("AAAAC3NzaC1lZDI1NTE5"), "the console announced the host key"
        assert vm.guest.ssh.host_key == vm.access.host_key
        wrong = "AAAAC3NzaC1lZDI1NTE5AAAAI" + "A" * 43
        with pytest.raises(HostKeyMismatch, match="not the guest's own"):
            SSH("127.0.0.1", vm.ssh_port, run.key, host_key=wrong).connect(Deadline(10, "SSH to an impostor"))
    finally:
        run.close()
