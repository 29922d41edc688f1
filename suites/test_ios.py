"""Configuring Disk I/O Suspension (IOS-8, IOS-9 here; IOS-1..7 need the
openEuler `retry` extension).  Faults are real: the storage under the VM's disk
fails (dm-error, or nbdkit's error filter where the host has no device-mapper)."""
import threading

import libvirt
import pytest

from fixtures.plugin import claims
from lab.domain import VMSpec
from lab.timeouts import Deadline, poll
from lab.virsh import virsh

IO_ERROR_LINES = ("I/O error", "Buffer I/O error", "blk_update_request", "EXT4-fs error", "Remounting filesystem read-only")


def boot_with(vms, role, *devices):
    vm = vms.define(VMSpec(role, devices=list(devices)))
    vm.start()
    return vm


def paused_waiter(vm):
    return vm.run.session.events.waiter(vm.dom, "lifecycle", lambda e: e.detail["event"] == "suspended")


class in_background:
    """`command` started in the guest, detached; its exit code lands in /tmp/<tag>.rc.
    The SSH exchange that starts it runs in a thread: the command's own I/O may suspend
    the VM before that exchange is over (a suspended guest cannot answer), and no fixed
    sleep covers that on a slow lab host.  Wait for what the command causes (the suspend
    event, a pending I/O), then `rc()` collects the start and the exit code."""

    def __init__(self, guest, command, tag):
        self.guest, self.tag, self._error = guest, tag, None

        def start():
            try:
                guest.run("setsid sh -c %s > /dev/null 2>&1 < /dev/null &",
                          f"{command} > /tmp/{tag}.log 2>&1; echo $? > /tmp/{tag}.rc", timeout=600, check=True)
            except BaseException as e:      # handed to rc() in the test's thread
                self._error = e
        self._thread = threading.Thread(target=start, name=f"guest-{tag}", daemon=True)
        self._thread.start()

    def rc(self, seconds=60) -> int:
        d = Deadline(seconds, f"the guest's {self.tag} to finish")
        self._thread.join(max(d.remaining, 0.1))
        if self._thread.is_alive():
            raise d.fail("the SSH command that starts it did not return")
        if self._error is not None:
            raise self._error
        return int(poll(lambda: self.guest.run("cat /tmp/%s.rc", self.tag).stdout.strip(), d, interval=0.3))


def assert_no_guest_io_errors(guest):
    dmesg = guest.check_output("dmesg")
    bad = [line for line in dmesg.splitlines() if any(p in line for p in IO_ERROR_LINES)]
    assert not bad, f"the guest saw I/O errors: {bad[:5]}"


@claims("IOS-8", "IOS-9")
def test_stop_policy_suspends_the_vm_and_resume_completes_the_io(fault, vms):
    vm = boot_with(vms, "ios-stop",
                   fault.disk("vdb", error_policy="stop", rerror_policy="stop", cache="none", serial="acc-fault"))
    g = vm.guest
    dev = g.block.find("acc-fault").name
    g.run("/usr/sbin/mke2fs -q -t ext4 /dev/%s && mkdir -p /mnt/f && mount /dev/%s /mnt/f", dev, dev, check=True)
    digest = g.check_output("dd if=/dev/urandom of=/tmp/p bs=1M count=4 2>/dev/null; sha256sum /tmp/p").split()[0]
    boot_id = g.boot_id()

    with paused_waiter(vm) as pause_w:
        fault.fail("all")
        job = in_background(g, "dd if=/tmp/p of=/mnt/f/data bs=1M conv=fsync", "write")
        ev = pause_w.wait(Deadline(30, "the VM to be suspended by the storage fault"))
    assert ev.detail["detail"] == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR
    state, reason = vm.dom.state()
    assert (state, reason) == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR), \
        f"domain state {vm.state()} after the storage fault"
    assert "vdb" in vm.dom.diskErrors(), f"libvirt's disk errors: {vm.dom.diskErrors()}"

    fault.heal()
    virsh(vm.run.cfg.libvirt_uri, "resume", vm.name).check()
    assert job.rc() == 0, g.run("cat /tmp/write.log").stdout
    g.run("sync; echo 3 > /proc/sys/vm/drop_caches", check=True)
    assert g.check_output("sha256sum /mnt/f/data").split()[0] == digest, "the data written across the fault is wrong"
    mount = g.check_output("grep ' /mnt/f ' /proc/mounts").split()
    assert mount[3].split(",")[0] == "rw", f"the file system is no longer read-write: {mount}"
    assert g.boot_id() == boot_id, "the guest rebooted"
    assert_no_guest_io_errors(g)


@claims("IOS-8")
@pytest.mark.requires("fault-one-direction")
def test_read_and_write_error_policies_are_separate(fault, vms):
    """werror=report hands write errors to the guest while rerror=stop suspends on reads."""
    vm = boot_with(vms, "ios-split",
                   fault.disk("vdb", error_policy="report", rerror_policy="stop", cache="none", serial="acc-fault"))
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
        job = in_background(g, f"dd if=/dev/{dev} of=/dev/null bs=64k count=16 iflag=direct", "read")
        pause_w.wait(Deadline(30, "the VM to be suspended on a read error"))
    assert vm.dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR]
    fault.heal()
    virsh(vm.run.cfg.libvirt_uri, "resume", vm.name).check()
    assert job.rc() == 0, "the suspended read did not complete after resume"


# ------------------------------------------------------------------ the openEuler retry extension

def retry_disk(fault, target="vdb", bus="virtio", interval=None, timeout=None, werror="retry", rerror="retry",
               serial="acc-fault"):
    d = fault.disk(target, bus=bus, error_policy=werror, rerror_policy=rerror, cache="none", serial=serial)
    drv = d.find("driver")
    if interval is not None:
        drv.set("retry_interval", str(interval))
    if timeout is not None:
        drv.set("retry_timeout", str(timeout))
    if bus == "scsi":
        from lab import xml as X
        d.append(X.el("address", {"type": "drive", "controller": 0, "bus": 0, "target": 0, "unit": 0}))
    return d


def observe_pending(guest, tag, seconds):
    """For `seconds` (scaled), the guest's I/O must neither complete nor fail."""
    d = Deadline(seconds, f"the guest's {tag} to stay pending")
    while not d.expired:
        r = guest.run("cat /tmp/%s.rc", tag)
        assert r.rc != 0, f"the guest's {tag} finished during the fault with rc {r.stdout.strip()}"
        guest.run("sleep 0.5")


@claims("IOS-1")
def test_retry_attributes_are_accepted_for_virtio_blk_and_scsi(fault, vms):
    from lab import xml as X
    vm = boot_with(vms, "ios-retry-xml", X.scsi_controller(0),
                   retry_disk(fault, "vdb", interval=2000, timeout=10000),
                   retry_disk(fault, "sdb", bus="scsi", interval=2000, timeout=10000, serial="acc-fault-scsi"))
    for target in ("vdb", "sdb"):
        drv = vm.live_xml().find(f"devices/disk/target[@dev='{target}']/../driver")
        assert (drv.get("error_policy"), drv.get("rerror_policy"), drv.get("retry_interval"), drv.get("retry_timeout")) \
            == ("retry", "retry", "2000", "10000"), f"{target}: {dict(drv.attrib)}"
    assert vm.guest.block.find("acc-fault") and vm.guest.block.find("acc-fault-scsi")


@claims("IOS-2")
def test_short_fault_is_retried_and_completes_without_guest_error(fault, vms):
    vm = boot_with(vms, "ios-retry-short", retry_disk(fault, interval=500, timeout=20000))
    g = vm.guest
    dev = g.block.find("acc-fault").name
    g.run("/usr/sbin/mke2fs -q -t ext4 /dev/%s && mkdir -p /mnt/f && mount /dev/%s /mnt/f", dev, dev, check=True)
    digest = g.check_output("dd if=/dev/urandom of=/tmp/p bs=1M count=4 2>/dev/null; sha256sum /tmp/p").split()[0]
    boot_id = g.boot_id()
    fault.fail("all")
    job = in_background(g, "dd if=/tmp/p of=/mnt/f/data bs=1M conv=fsync", "write")
    observe_pending(g, job.tag, 4)                       # shorter than retry_timeout
    assert vm.state()[0] == "running", "retry must not suspend the VM"
    fault.heal()
    assert job.rc() == 0
    g.run("sync; echo 3 > /proc/sys/vm/drop_caches", check=True)
    assert g.check_output("sha256sum /mnt/f/data").split()[0] == digest
    assert g.check_output("grep ' /mnt/f ' /proc/mounts").split()[3].startswith("rw")
    assert g.boot_id() == boot_id
    assert_no_guest_io_errors(g)


@claims("IOS-3")
def test_fault_longer_than_retry_timeout_reaches_the_guest(fault, vms):
    vm = boot_with(vms, "ios-retry-long", retry_disk(fault, interval=500, timeout=3000))
    g = vm.guest
    dev = g.block.find("acc-fault").name
    fault.fail("all")
    job = in_background(g, f"dd if=/dev/zero of=/dev/{dev} bs=64k count=4 oflag=direct", "write")
    rc = job.rc(seconds=30)
    fault.heal()
    assert rc != 0, "after retry_timeout the guest must get the error"
    assert "I/O error" in g.check_output("dmesg | tail -n 30")


@claims("IOS-4")
def test_retry_defaults_interval_1000ms_and_no_timeout(fault, vms):
    if fault.name != "nbdkit":
        pytest.skip("counting retried requests needs the nbdkit backend's log")
    vm = boot_with(vms, "ios-retry-defaults", retry_disk(fault))
    g = vm.guest
    dev = g.block.find("acc-fault").name
    before = fault.log.read_text().count("injecting EIO")
    fault.fail("write")
    job = in_background(g, f"dd if=/dev/zero of=/dev/{dev} bs=4k count=1 oflag=direct", "write")
    window = 6
    observe_pending(g, job.tag, window)                   # no timeout: still waiting
    retries = fault.log.read_text().count("injecting EIO") - before
    fault.heal()
    assert job.rc() == 0
    # one retry a second (1000 ms default), plus the first attempt; the interval excludes the I/O itself
    assert window - 2 <= retries <= window + 2, f"{retries} failed attempts in {window} s"


@claims("IOS-5")
def test_read_and_write_suspension_are_enabled_separately(fault, vms):
    vm = boot_with(vms, "ios-retry-split", retry_disk(fault, interval=500, timeout=30000, werror="report"))
    g = vm.guest
    dev = g.block.find("acc-fault").name
    fault.fail("write")
    r = g.run("dd if=/dev/zero of=/dev/%s bs=64k count=1 oflag=direct", dev, timeout=30)
    fault.heal()
    assert r.rc != 0, "writes are not suspended when only rerror_policy is retry"
    fault.fail("read")
    job = in_background(g, f"dd if=/dev/{dev} of=/dev/null bs=64k count=4 iflag=direct", "read")
    observe_pending(g, job.tag, 3)
    fault.heal()
    assert job.rc() == 0


@claims("IOS-6")
def test_retry_is_refused_on_a_bus_other_than_virtio(fault, lab):
    from lab import xml as X
    from lab.arch import profile
    d = retry_disk(fault, "sda", bus="sata", interval=1000, timeout=0)
    dom = X.domain("acc-ios6-never-defined", virt_type=lab.cfg.virt_type, arch=profile(lab.cfg.arch), devices=[d])
    with pytest.raises(libvirt.libvirtError) as e:
        bad = lab.session.conn.defineXMLFlags(X.to_string(dom), libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        bad.undefine()
    assert "retry" in str(e.value) or "error_policy" in str(e.value) or "sata" in str(e.value)


@claims("IOS-7")
def test_qemu_command_line_form_is_accepted(fault, lab, tmp_path):
    """QEMU started directly with the guide's -device options keeps them."""
    import json as _json
    import socket
    import subprocess
    img = tmp_path / "d.raw"
    img.write_bytes(b"\0" * (1 << 20))
    qmp = tmp_path / "qmp.sock"
    proc = subprocess.Popen([lab.arch.emulator_hint, "-M", lab.arch.machine, "-nodefaults", "-display", "none", "-S",
                             "-qmp", f"unix:{qmp},server=on,wait=off",
                             "-drive", f"file={img},format=raw,if=none,id=drive-virtio-disk0,cache=none,aio=native",
                             "-device", "virtio-blk-pci,drive=drive-virtio-disk0,id=virtio-disk0,write-cache=on,"
                                        "werror=retry,rerror=retry,retry_interval=2000,retry_timeout=10000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        poll(lambda: qmp.exists() or proc.poll() is not None, Deadline(20, "QEMU's QMP socket"))
        assert proc.poll() is None, proc.stdout.read().decode()
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(qmp))
        f = s.makefile("rw")
        f.readline()
        for cmd in ({"execute": "qmp_capabilities"},
                    {"execute": "qom-get", "arguments": {"path": "/machine/peripheral/virtio-disk0",
                                                         "property": "retry_interval"}}):
            f.write(_json.dumps(cmd) + "\n")
            f.flush()
            reply = _json.loads(f.readline())
        assert reply.get("return") == 2000, reply
    finally:
        proc.kill()
        proc.wait()
