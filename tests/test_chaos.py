"""Chaos on the local lab: libvirtd restarted under a running VM, QEMU killed
under a test, a guest that hangs.  Each ends in a reconnect or a clear failure
within its deadline, and the next step works."""
import os
import shutil
import signal
import subprocess
import time

import pytest

from lab import config
from lab.access import GuestNotReady
from lab.domain import VMSpec
from lab.run import Lab
from lab.timeouts import Deadline, WaitTimeout, poll

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def run():
    r = Lab(config.load())
    yield r
    r.close()


def restart_libvirtd():
    if shutil.which("systemctl") and os.path.exists("/run/systemd/system"):
        subprocess.run(["systemctl", "restart", "libvirtd"], check=True)
        return
    # The system libvirtd by its pid file: a lab host's private libvirtd may run beside it.
    pid = int(open("/run/libvirtd.pid").read().strip())
    os.kill(pid, signal.SIGTERM)
    poll(lambda: not os.path.exists(f"/proc/{pid}"), Deadline(30, f"libvirtd {pid} to exit"), interval=0.2)
    subprocess.run(["libvirtd", "-d"], check=True)


def test_libvirtd_restart_under_a_running_vm_reconnects(run):
    vm = run.new_vm(VMSpec("chaos-libvirtd"))
    vm.start()
    boot_id = vm.boot_id
    before = run.session.reconnects
    restart_libvirtd()
    assert vm.guest.boot_id() == boot_id, "the guest kept running through the restart"
    assert vm.domain.state()[0] == "running"                  # reconnects on first use
    assert run.session.reconnects == before + 1
    assert vm.domain.live_xml().find("name").text == vm.name
    # events flow on the new connection: a clean power-off is seen
    vm.poweroff(Deadline(60, "power-off after the reconnect"))
    assert not vm.domain.is_active()
    run.release(vm)


def test_qemu_killed_under_a_test_fails_fast_and_the_next_vm_boots(run):
    vm = run.new_vm(VMSpec("chaos-qemu"))
    vm.start()
    os.kill(vm.qemu.pid(), signal.SIGKILL)
    t = time.monotonic()
    with pytest.raises((WaitTimeout, GuestNotReady, ConnectionError, EOFError, OSError)):
        vm.guest.run("sleep 30", timeout=20)
    assert time.monotonic() - t < 25
    poll(lambda: not vm.domain.is_active(), Deadline(20, "libvirt to see QEMU gone"))
    assert "shut off" in vm.evidence()["live domain XML"] or not vm.domain.is_active()
    run.release(vm)
    nxt = run.new_vm(VMSpec("chaos-next"))
    nxt.start()
    assert nxt.guest.boot_id()
    run.release(nxt)


def test_guest_that_hangs_in_boot_fails_within_the_boot_deadline(run):
    # init=/bin/sleep-forever: the kernel boots, userspace never says it is ready
    vm = run.new_vm(VMSpec("chaos-hang", extra_cmdline="rdinit=/bin/sh"))
    t = time.monotonic()
    with pytest.raises(WaitTimeout, match="end of the boot"):
        vm.start(Deadline(20, "a guest that hangs"))
    assert time.monotonic() - t < 30
    assert "Linux version" in vm.serial_text(), "the console evidence is there"
    run.release(vm)


TRIALS = int(os.environ.get("ACC_CHAOS_TRIALS", "10"))
CHILD_SUITES = ["suites/test_nics.py", "suites/test_ios.py", "suites/test_snapshots.py"]


def leftovers_of_dead_runs(cfg):
    """Everything a dead run of this work dir could have left: domains, run
    directories, bridges, loop devices, nbdkit processes."""
    import libvirt

    from lab import loopdev, network
    from lab.hostexec import LocalHost
    from lab.hostleases import lease_states
    from lab.sweep import harness_tag
    runs = cfg.work_dir / "runs"
    held = {n for n, st in lease_states(LocalHost(), cfg.host_work_dir / "leases").items() if st.held}
    dead = lambda rid: f"run-{rid}.lock" not in held          # noqa: E731
    found = []
    conn = libvirt.open(cfg.libvirt_uri)
    try:
        for d in conn.listAllDomains():
            tag = harness_tag(d) if d.name().startswith("acc-") else None
            if tag is not None and tag.get("hostdir") == str(cfg.host_work_dir) and dead(tag.get("run")):
                found.append(f"domain {d.name()}")
    finally:
        conn.close()
    found += [f"run dir {p}" for p in runs.iterdir() if p.is_dir() and dead(p.name)] if runs.exists() else []
    found += [f"bridge {b}" for b, rid in network.harness_bridges(LocalHost(), cfg.host_work_dir).items()
              if dead(rid[0])]
    found += [f"loop {d} ({b})" for d, b in loopdev.list_loops(LocalHost()) if str(runs) in b]
    ps = subprocess.run(["pgrep", "-af", "nbdkit"], capture_output=True, text=True).stdout
    found += [f"process {line}" for line in ps.splitlines() if str(runs) in line]
    return found


def test_sigkill_at_random_points_is_swept_by_the_next_run(tmp_path):
    import json
    import random

    from lab.hostexec import LocalHost
    from lab.hostleases import lease_states
    cfg = config.load()
    seed = int(os.environ.get("ACC_CHAOS_SEED", time.time()))
    rng = random.Random(seed)
    report = []
    for trial in range(TRIALS):
        results = tmp_path / f"allure-{trial}"
        delay = rng.uniform(1.0, 25.0)
        proc = subprocess.Popen([os.sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--alluredir",
                                 str(results), *CHILD_SUITES], cwd=config.REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)                    # a random point of the suite, not a wait for anything
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        # its lease holders read end-of-file a moment after the kill: then its runs are dead
        poll(lambda: not [s for s in lease_states(LocalHost(), cfg.host_work_dir / "leases").values()
                          if s.held and f" pid {proc.pid} " in s.owner],
             Deadline(10, f"the killed run's leases (pid {proc.pid}) to be free"), interval=0.1)
        Lab(cfg).close()                     # the next run: it sweeps at start
        left = leftovers_of_dead_runs(cfg)
        for f in results.glob("*.json") if results.exists() else []:
            try:
                json.loads(f.read_text())
            except ValueError:
                left.append(f"unreadable Allure file {f.name}")
        report.append(f"trial {trial + 1}: killed after {delay:.1f}s, leftovers: {left or 'none'}")
        assert not left, f"seed {seed}: " + "\n".join(report)
    print("\n".join(report))


def test_two_runs_at_once_do_not_collide_and_share_no_device():
    import threading

    from lab.hostleases import DeviceBusy
    cfg = config.load()
    a, b = Lab(cfg), Lab(cfg)
    try:
        vms, errors = [], []

        def boot(r):
            try:
                vm = r.new_vm(VMSpec("concurrent"))
                vm.start()
                vms.append(vm)
            except Exception as e:        # reported below
                errors.append(e)

        threads = [threading.Thread(target=boot, args=(r,)) for r in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert len({v.name for v in vms}) == 2 and len({v.ssh_port for v in vms}) == 2
        assert len({v.mac for v in vms}) == 2 and len({v.guest.boot_id() for v in vms}) == 2
        a.lease_device("usb", "0781:5567@1-3")
        t = time.monotonic()
        with pytest.raises(DeviceBusy, match=f"is held by controller .* run {a.run_id}"):
            b.lease_device("usb", "0781:5567@1-3", wait_s=1)
        assert time.monotonic() - t < 5
    finally:
        a.close()
        b.close()
    b2 = Lab(cfg)
    try:
        b2.lease_device("usb", "0781:5567@1-3")       # free again once the holder closed
    finally:
        b2.close()


def test_a_libvirtd_that_stops_answering_is_judged_and_its_qemu_killed_through_the_host():
    """libvirt's daemon stops answering under a running VM (SIGSTOP of local-b's private
    libvirtd: no other part of CI talks to it).  The test's libvirt call ends at the
    keepalive, not never; the run names the daemon's state and the VM's QEMU (a stopped
    daemon is the lab's problem; a running one that answers nobody, as a QEMU flooding it
    with events leaves it, is a finding: tests/test_hostproc.py); teardown kills the QEMU
    through the lab host without waiting on libvirt; once the daemon answers again the
    domain is undefined and the next run starts clean."""
    import threading

    import libvirt

    from lab import daemon
    from lab.errors import LabError
    from lab.sweep import PREFIX
    cfg = config.load(config.REPO / "labs" / "local-b.toml")
    was_running = daemon.running(cfg)
    daemon.ensure(cfg)
    pidfile = cfg.private_daemon_dir / "libvirtd.pid"
    run = Lab(cfg)
    stopped = None
    try:
        vm = run.new_vm(VMSpec("chaos-mute"))
        vm.start()
        qemu = vm.qemu.pid()
        stopped = int(pidfile.read_text().strip())
        os.kill(stopped, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(libvirt.libvirtError):
            vm.domain.handle.state()
        waited = time.monotonic() - t0
        assert waited < 40, f"the call waited {waited:.0f} s for a daemon that does not answer (keepalive 5 s x 3)"
        assert run.session.unanswered
        judged = run.session.judge("a test's call failed")
        assert isinstance(judged, LabError), f"a SIGSTOPped daemon is the lab's problem, not a finding: {judged}"
        assert f"libvirtd (pid {stopped}) state T" in str(judged) and f"QEMU of {vm.name} (pid {qemu})" in str(judged)

        def wake_after_the_kill():       # the flooding QEMU gone, the daemon answers again
            poll(lambda: not os.path.exists(f"/proc/{qemu}"), Deadline(60, f"QEMU {qemu} to be killed"), interval=0.1)
            os.kill(stopped, signal.SIGCONT)
        waker = threading.Thread(target=wake_after_the_kill, daemon=True)
        waker.start()
        undone = run.release(vm)
        waker.join(5)
        assert any(f"killed QEMU {qemu}" in u for u in undone), undone
        assert any(f"undefined domain {vm.name}" in u for u in undone), undone
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        run.close()
    nxt = Lab(cfg)
    try:
        left = [d.name() for d in nxt.session.conn.listAllDomains() if d.name().startswith(PREFIX + run.run_id)]
        assert not left and not nxt.swept, f"left after the run: {left}; swept by the next run: {nxt.swept}"
    finally:
        nxt.close()
        if not was_running:
            daemon.stop(cfg)
