"""Configuring Disk I/O Suspension (IOS-8, IOS-9 here; IOS-1..7 need the
openEuler `retry` extension).  Faults are real: the storage under the VM's disk
fails (dm-error, or nbdkit's error filter where the host has no device-mapper)."""
import allure
import libvirt
import pytest

from fixtures.plugin import claims
from lab import faults, host
from lab.domain import VMSpec
from lab.timeouts import Deadline, poll
from lab.virsh import virsh

IO_ERROR_LINES = ("I/O error", "Buffer I/O error", "blk_update_request", "EXT4-fs error", "Remounting filesystem read-only")


@pytest.fixture
def fault(lab):
    backend = faults.make_backend(host.fault_backend(lab.cfg, host.probe(lab.cfg)), lab.dir / "faults", lab.run_id)
    allure.dynamic.parameter("fault backend", backend.name)
    with backend:
        lab.push_undo(f"healed and removed fault backend {backend.name}", backend.remove)
        allure.attach(backend.describe(), name="fault backend", attachment_type=allure.attachment_type.TEXT)
        yield backend
        lab.undo_now(backend.remove)


def paused_waiter(vm):
    return vm.run.session.events.waiter(vm.dom, "lifecycle", lambda e: e.detail["event"] == "suspended")


def in_background(guest, command, tag):
    """Start `command` in the guest, detached; its exit code lands in /tmp/<tag>.rc."""
    guest.run("setsid sh -c %s > /dev/null 2>&1 < /dev/null &", f"{command} > /tmp/{tag}.log 2>&1; echo $? > /tmp/{tag}.rc")


def background_rc(guest, tag, seconds=60):
    return int(poll(lambda: guest.run("cat /tmp/%s.rc", f"{tag}").stdout.strip(),
                    Deadline(seconds, f"the guest's {tag} to finish"), interval=0.3))


def assert_no_guest_io_errors(guest):
    dmesg = guest.check_output("dmesg")
    bad = [line for line in dmesg.splitlines() if any(p in line for p in IO_ERROR_LINES)]
    assert not bad, f"the guest saw I/O errors: {bad[:5]}"


@claims("IOS-8", "IOS-9")
def test_stop_policy_suspends_the_vm_and_resume_completes_the_io(fault, vms):
    vm = vms.define(VMSpec("ios-stop", devices=[
        fault.disk("vdb", error_policy="stop", rerror_policy="stop", cache="none", serial="acc-fault")]))
    vm.start()
    g = vm.guest
    dev = g.block.find("acc-fault").name
    g.run("/usr/sbin/mke2fs -q -t ext4 /dev/%s && mkdir -p /mnt/f && mount /dev/%s /mnt/f", dev, dev, check=True)
    digest = g.check_output("dd if=/dev/urandom of=/tmp/p bs=1M count=4 2>/dev/null; sha256sum /tmp/p").split()[0]
    boot_id = g.boot_id()

    with paused_waiter(vm) as pause_w:
        fault.fail("all")
        in_background(g, "dd if=/tmp/p of=/mnt/f/data bs=1M conv=fsync", "write")
        ev = pause_w.wait(Deadline(30, "the VM to be suspended by the storage fault"))
    assert ev.detail["detail"] == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR
    state, reason = vm.dom.state()
    assert (state, reason) == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR), \
        f"domain state {vm.state()} after the storage fault"
    assert "vdb" in vm.dom.diskErrors(), f"libvirt's disk errors: {vm.dom.diskErrors()}"

    fault.heal()
    virsh(vm.run.cfg.libvirt_uri, "resume", vm.name).check()
    assert background_rc(g, "write") == 0, g.run("cat /tmp/write.log").stdout
    g.run("sync; echo 3 > /proc/sys/vm/drop_caches", check=True)
    assert g.check_output("sha256sum /mnt/f/data").split()[0] == digest, "the data written across the fault is wrong"
    mount = g.check_output("grep ' /mnt/f ' /proc/mounts").split()
    assert mount[3].split(",")[0] == "rw", f"the file system is no longer read-write: {mount}"
    assert g.boot_id() == boot_id, "the guest rebooted"
    assert_no_guest_io_errors(g)


@claims("IOS-8")
def test_read_and_write_error_policies_are_separate(fault, vms):
    """werror=report hands write errors to the guest while rerror=stop suspends on reads."""
    vm = vms.define(VMSpec("ios-split", devices=[
        fault.disk("vdb", error_policy="report", rerror_policy="stop", cache="none", serial="acc-fault")]))
    vm.start()
    g = vm.guest
    dev = g.block.find("acc-fault").name
    g.block.write_and_verify(dev, mib=2)

    fault.fail("write")
    r = g.run("dd if=/dev/zero of=/dev/%s bs=64k count=4 oflag=direct", dev, timeout=60)
    fault.heal()
    assert r.rc != 0, "a write error under error_policy='report' must reach the guest"
    assert "I/O error" in g.check_output("dmesg | tail -n 20"), "the guest kernel logged no I/O error"
    assert vm.state()[0] == "running", "error_policy='report' must not suspend the VM"

    with paused_waiter(vm) as pause_w:
        fault.fail("read")
        in_background(g, f"dd if=/dev/{dev} of=/dev/null bs=64k count=16 iflag=direct", "read")
        pause_w.wait(Deadline(30, "the VM to be suspended on a read error"))
    assert vm.dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR]
    fault.heal()
    virsh(vm.run.cfg.libvirt_uri, "resume", vm.name).check()
    assert background_rc(g, "read") == 0, "the suspended read did not complete after resume"
