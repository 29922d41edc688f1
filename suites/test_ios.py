"""Configuring Disk I/O Suspension.

IOS-8/IOS-9 (upstream `error_policy='stop'`) run on any lab host with a fault
backend.  IOS-1..7 need openEuler's `retry` extension: IOS-2..5 and IOS-7 are
QEMU behaviour and run wherever QEMU has it, with the guide's libvirt XML where
libvirt has openEuler's extension, else with the same settings as QEMU device
properties through <qemu:override> (the report says which); IOS-1 and IOS-6 are
about libvirt's XML and run only where libvirt has the extension.

Faults are real: the storage under the VM's disk fails (dm-error, or nbdkit's
error filter where the host has no device-mapper).  Every retry test checks that
the settings reached QEMU's device (read back with qom-get) before it trusts any
behaviour, and times are measured by the guest's clock and the storage's log.
"""
import statistics

import allure
import libvirt
import pytest

from fixtures.api import capabilities, claims, measured, proven_with, reported_fact
from lab import hostfacts
from lab import xml as X
from lab.domain import VMSpec
from lab.retry import (AttemptSource, GuestJob, RetryPolicy, device_settings, failed_attempts, most_retried,
                       qemu_oneshot, retry_disk, stays_pending)
from lab.timeouts import Deadline, factor

IO_ERROR_LINES = ("I/O error", "Buffer I/O error", "blk_update_request", "EXT4-fs error", "Remounting filesystem read-only")
SERIAL = "acc-fault"


def boot_with(vms, role, *devices, overrides=None, qemu_args=()):
    vm = vms.define(VMSpec(role, devices=list(devices), overrides=overrides or {}, qemu_args=list(qemu_args)))
    vm.start()
    return vm


def paused_waiter(vm):
    return vm.domain.waiter("lifecycle", lambda e: e.detail["event"] == "suspended")


def assert_no_guest_io_errors(guest):
    dmesg = guest.check_output("dmesg")
    bad = [line for line in dmesg.splitlines() if any(p in line for p in IO_ERROR_LINES)]
    assert not bad, f"the guest saw I/O errors: {bad[:5]}"


@claims("IOS-8", "IOS-9")
def test_stop_policy_suspends_the_vm_and_resume_completes_the_io(fault, vms, lab, request):
    # IOS-9 against the host's own facts, not the probe that chose the backend: the kernel's
    # device-mapper (its misc device) decides, unless the lab config names a backend
    dm_in_kernel = lab.hostside.has_device_mapper()
    configured = lab.hostside.fault_backend_setting
    expected = configured if configured != "auto" else ("dm-error" if dm_in_kernel else "nbdkit")
    assert fault.name == expected, (f"the run injects faults with {fault.name}, but the lab host's kernel "
                                    f"{'has' if dm_in_kernel else 'has no'} device-mapper ([faults] backend "
                                    f"{configured}): expected {expected}")
    reported = reported_fact(request.config, "fault.backend")
    assert reported == fault.name, f"the run reports fault.backend={reported!r}, the test runs {fault.name}"
    vm = boot_with(vms, "ios-stop",
                   fault.disk("vdb", error_policy="stop", rerror_policy="stop", cache="none", serial=SERIAL))
    g = vm.guest
    dev = g.block.find(SERIAL).name
    g.run("/usr/sbin/mke2fs -q -t ext4 /dev/%s && mkdir -p /mnt/f && mount /dev/%s /mnt/f", dev, dev)
    digest = g.check_output("dd if=/dev/urandom of=/tmp/p bs=1M count=4 2>/dev/null; sha256sum /tmp/p").split()[0]
    boot_id = g.boot_id()

    with paused_waiter(vm) as pause_w:
        fault.fail("all")
        job = GuestJob(g, "dd if=/tmp/p of=/mnt/f/data bs=1M conv=fsync", "write")
        ev = pause_w.wait(Deadline(30, "the VM to be suspended by the storage fault"))
    allure.attach(fault.failing_now(), name="IOS-9: the storage says it fails", attachment_type=allure.attachment_type.TEXT)
    assert ev.detail["detail"] == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR
    state = vm.domain.state()
    assert state == ("paused", libvirt.VIR_DOMAIN_PAUSED_IOERROR), f"domain state {state} after the storage fault"
    errors = vm.domain.disk_errors()
    assert "vdb" in errors, f"libvirt's disk errors: {errors}"

    fault.heal()
    vm.domain.resume()
    assert job.rc() == 0, job.output()
    g.run("sync; echo 3 > /proc/sys/vm/drop_caches")
    assert g.check_output("sha256sum /mnt/f/data").split()[0] == digest, "the data written across the fault is wrong"
    mount = g.check_output("grep ' /mnt/f ' /proc/mounts").split()
    assert mount[3].split(",")[0] == "rw", f"the file system is no longer read-write: {mount}"
    assert g.boot_id() == boot_id, "the guest rebooted"
    assert_no_guest_io_errors(g)


@claims("IOS-8")
def test_read_and_write_error_policies_are_separate(fault, vms):
    """werror=report hands write errors to the guest while rerror=stop suspends on reads.
    The storage fails both directions (any backend, dm-error too): the guest's I/O picks
    the direction, and a QEMU that swapped or merged the two policies would suspend on the
    write or hand the read's error over."""
    vm = boot_with(vms, "ios-split",
                   fault.disk("vdb", error_policy="report", rerror_policy="stop", cache="none", serial=SERIAL))
    g = vm.guest
    dev = g.block.find(SERIAL).name
    g.block.write_and_verify(dev, mib=2)

    fault.fail("all")
    r = g.run("dd if=/dev/zero of=/dev/%s bs=64k count=4 oflag=direct", dev, timeout=60, check=False)
    fault.heal()
    assert r.rc != 0, "a write error under error_policy='report' must reach the guest"
    assert "I/O error" in g.check_output("dmesg | tail -n 20"), "the guest kernel logged no I/O error"
    assert vm.domain.state()[0] == "running", "error_policy='report' must not suspend the VM"

    with paused_waiter(vm) as pause_w:
        fault.fail("all")
        job = GuestJob(g, f"dd if=/dev/{dev} of=/dev/null bs=64k count=16 iflag=direct", "read")
        pause_w.wait(Deadline(30, "the VM to be suspended on a read error"))
    state = vm.domain.state()
    assert state == ("paused", libvirt.VIR_DOMAIN_PAUSED_IOERROR), f"domain state {state} after the read error"
    fault.heal()
    vm.domain.resume()
    assert job.rc() == 0, "the suspended read did not complete after resume"


# ------------------------------------------------------------------ the openEuler retry extension

@pytest.fixture
def retry_form(lab, request):
    """How this lab host sets the guide's retry settings: 'xml' or 'override' (said in the report)."""
    form, how = hostfacts.retry_form(capabilities(lab))
    proven_with(request, how)
    return form


def boot_retry(vms, fault, form, role, *disks, bus="virtio"):
    """A VM with retry disks [(target, policy, serial)] on the fault backend, on virtio-blk
    or on virtio-scsi (scsi-hd, behind the guest's virtio-scsi controller 0); every disk's
    settings are read back from QEMU's device before the test trusts any behaviour."""
    devices, overrides = [X.scsi_controller(0)] if bus == "scsi" else [], {}
    for target, policy, serial in disks:
        d, ov = retry_disk(fault, form, target, policy, serial, bus=bus)
        devices.append(shared(d) if len(disks) > 1 else d)
        overrides.update(ov)
    vm = boot_with(vms, role, *devices, overrides=overrides)
    for _target, policy, serial in disks:
        got = device_settings(vm, serial)
        want = policy.qemu_properties()
        assert {k: got[k] for k in want} == want, f"QEMU's device {serial} holds {got}, the test set {want}"
    return vm


def shared(disk):
    """Two disks of one VM on the one fault device: <shareable/> (QEMU's share-rw), else
    QEMU's image locking refuses the second writer of a block device ("Failed to get
    'write' lock"); an NBD export has no such lock."""
    disk.append(X.el("shareable"))
    return disk


def running(vm):
    def check():
        st = vm.domain.state()
        assert st[0] == "running", f"the VM is {st} during the retry (retry must neither stop nor pause it)"
    return check


@claims("IOS-1")
def test_retry_attributes_are_accepted_for_virtio_blk_and_scsi(fault, vms):
    policy = RetryPolicy(interval=2000, timeout=10000)
    blk, _ = retry_disk(fault, "xml", "vdb", policy, SERIAL)
    scsi, _ = retry_disk(fault, "xml", "sdb", policy, "acc-fault-scsi", bus="scsi")
    scsi.append(X.el("address", {"type": "drive", "controller": 0, "bus": 0, "target": 0, "unit": 0}))
    vm = boot_with(vms, "ios-retry-xml", X.scsi_controller(0), shared(blk), shared(scsi))
    for target, serial in (("vdb", SERIAL), ("sdb", "acc-fault-scsi")):
        drv = vm.domain.live_xml().find(f"devices/disk/target[@dev='{target}']/../driver")
        assert (drv.get("error_policy"), drv.get("rerror_policy"), drv.get("retry_interval"), drv.get("retry_timeout")) \
            == ("retry", "retry", "2000", "10000"), f"{target}: {dict(drv.attrib)}"
        assert device_settings(vm, serial) == {"werror": "retry", "rerror": "retry", "retry_interval": 2000,
                                               "retry_timeout": 10000}, f"{target}: libvirt did not pass it to QEMU"
    assert vm.guest.block.find(SERIAL) and vm.guest.block.find("acc-fault-scsi")


@claims("IOS-2")
@pytest.mark.parametrize("bus", ["virtio", "scsi"], ids=["virtio-blk", "virtio-scsi"])
def test_short_fault_is_retried_and_completes_without_guest_error(fault, vms, retry_form, bus):
    """A write into a short fault waits, is retried, and completes with its data once the
    storage is back, with no error in the guest; on virtio-blk and on virtio-scsi (scsi-hd),
    and twice on the same disk: the second fault comes after the first was recovered, so
    a retry state the first one left behind (a stuck or spent retry) fails the test."""
    target = "vdb" if bus == "virtio" else "sdb"
    vm = boot_retry(vms, fault, retry_form, f"ios-retry-short-{bus}",
                    (target, RetryPolicy(interval=500, timeout=20000), SERIAL), bus=bus)
    g = vm.guest
    dev = g.block.find(SERIAL).name
    g.run("/usr/sbin/mke2fs -q -t ext4 /dev/%s && mkdir -p /mnt/f && mount /dev/%s /mnt/f", dev, dev)
    boot_id = g.boot_id()
    with vm.qemu.io_errors() as qlog:
        attempts = AttemptSource(fault, qlog)
        for n in (1, 2):
            _write_across_a_short_fault(fault, vm, attempts, n)
    assert g.check_output("grep ' /mnt/f ' /proc/mounts").split()[3].startswith("rw"), "the file system went read-only"
    assert g.boot_id() == boot_id, "the guest rebooted"
    assert_no_guest_io_errors(g)


def _write_across_a_short_fault(fault, vm, attempts, n):
    """Write 4 MiB into a fault of 4 s (retry_timeout 20 s): pending, retried again and again
    (the same request, by the storage's log or QEMU's events), complete and intact after."""
    g = vm.guest
    digest = g.check_output("dd if=/dev/urandom of=/tmp/p%s bs=1M count=4 2>/dev/null; sha256sum /tmp/p%s",
                            n, n).split()[0]
    since = max((r.at for r in attempts()), default=0.0)
    fault.fail("all")
    job = GuestJob(g, f"dd if=/tmp/p{n} of=/mnt/f/data{n} bs=1M conv=fsync", f"write{n}").started()
    stays_pending(job, 4, alive=running(vm), within=20)      # far shorter than retry_timeout (20 s)
    tries = most_retried(attempts(), since=since)
    assert tries.count >= 3, (f"fault {n}: during 4 s (retry_interval 0.5 s) QEMU retried too little, by "
                              f"{attempts.name}: {tries.summary()}")
    fault.heal()
    assert job.rc() == 0, f"fault {n}: {job.output()}"
    g.run("sync; echo 3 > /proc/sys/vm/drop_caches")
    assert g.check_output("sha256sum /mnt/f/data%s", n).split()[0] == digest, \
        f"the data written across fault {n} is wrong"


@claims("IOS-3")
def test_fault_longer_than_retry_timeout_reaches_the_guest(fault, vms, retry_form, request):
    interval, timeout = 0.5, 3.0
    vm = boot_retry(vms, fault, retry_form, "ios-retry-long",
                    ("vdb", RetryPolicy(interval=int(interval * 1000), timeout=int(timeout * 1000)), SERIAL))
    g = vm.guest
    dev = g.block.find(SERIAL).name
    with vm.qemu.io_errors() as qlog:
        attempts = AttemptSource(fault, qlog)
        fault.fail("all")
        job = GuestJob(g, f"dd if=/dev/zero of=/dev/{dev} bs=64k count=1 oflag=direct", "write")
        rc = job.outcome(30 + timeout)
        assert rc is not None, \
            f"the guest's write got no error {30 + timeout:.0f} s into the fault (retry_timeout {timeout} s)"
        took = job.elapsed()
        fault.heal()
        seen = attempts()
    measured(request, "IOS-3 fault to guest error (s)", round(took, 3),
             f"the guest's write failed {took:.3f} s after it was issued into the fault "
             f"(retry_timeout {timeout} s, retry_interval {interval} s)")
    assert rc != 0, f"after retry_timeout the guest must get the error: {job.output()!r}"
    assert "I/O error" in g.check_output("dmesg | tail -n 30"), "the guest kernel logged no I/O error"
    # An error handed over at once (no retry) or never must not pass.
    assert took >= timeout - 0.05, f"the guest got the error after {took:.3f} s, before retry_timeout ({timeout} s)"
    latest = timeout + 2 * interval + 5 * factor()
    assert took <= latest, f"the guest got the error after {took:.3f} s, far past retry_timeout ({timeout} s)"
    tries = failed_attempts(seen, "Write")
    allure.attach(f"{attempts.name}: {tries.summary()}", name="IOS-3 failed attempts",
                  attachment_type=allure.attachment_type.TEXT)
    assert tries.count >= timeout / interval, \
        f"QEMU gave up before retrying for retry_timeout, by {attempts.name}: {tries.summary()}"
    assert vm.domain.state()[0] == "running"


@claims("IOS-4")
def test_retry_defaults_interval_1000ms_and_no_timeout(fault, vms, retry_form, request):
    """Without retry_interval/retry_timeout the device holds 1000 ms and 0, and a write into
    a fault is retried about once a second and still waits long after any finite timeout
    (15 s, past the guide's own example of 10 s)."""
    vm = boot_retry(vms, fault, retry_form, "ios-retry-defaults", ("vdb", RetryPolicy(), SERIAL))
    held = device_settings(vm, SERIAL)
    assert (held["retry_interval"], held["retry_timeout"]) == (1000, 0), f"QEMU's defaults are {held}"
    g = vm.guest
    dev = g.block.find(SERIAL).name
    with vm.qemu.io_errors() as qlog:
        attempts = AttemptSource(fault, qlog)
        fault.fail("all")
        job = GuestJob(g, f"dd if=/dev/zero of=/dev/{dev} bs=4k count=1 oflag=direct", "write").started()
        stays_pending(job, 15, alive=running(vm))
        seen = attempts()
        fault.heal()
    assert job.rc() == 0, f"the retried write did not complete after the repair: {job.output()!r}"
    tries = failed_attempts(seen, "Write")
    measured(request, "IOS-4 retries per second", round(tries.per_second, 3), f"{attempts.name}: {tries.summary()}")
    assert tries.count >= 10, f"a write pending for 15 s was retried too rarely, by {attempts.name}: {tries.summary()}"
    med = statistics.median(tries.gaps)
    assert 0.99 <= med <= 1.5, f"the default retry interval is not 1000 ms: {tries.summary()}"
    assert min(tries.gaps) >= 0.995, f"a retry came sooner than 1000 ms after the last one: {tries.summary()}"


@claims("IOS-4")
@pytest.mark.requires("fault-slow-writes")
@pytest.mark.fault_options(write_delay_ms=600)
def test_retry_interval_excludes_the_io_itself(fault, vms, retry_form, request):
    """The guide: the interval does not include the I/O's own time, so two attempts are at
    least retry_interval + the I/O apart.  The storage takes 600 ms for each write (nbdkit's
    delay filter, or dm-delay); the interval is not the default (a QEMU that ignores the
    setting fails).  Attempts by the storage's log, else by QEMU's events (each at the end
    of the failed attempt: the gaps are the same)."""
    interval = 1.5
    vm = boot_retry(vms, fault, retry_form, "ios-retry-interval",
                    ("vdb", RetryPolicy(interval=int(interval * 1000), timeout=0), SERIAL))
    g = vm.guest
    dev = g.block.find(SERIAL).name
    with vm.qemu.io_errors() as qlog:
        attempts = AttemptSource(fault, qlog)
        since = max((r.at for r in attempts()), default=0.0)
        fault.fail("write")
        job = GuestJob(g, f"dd if=/dev/zero of=/dev/{dev} bs=4k count=1 oflag=direct", "write").started()
        stays_pending(job, 9, alive=running(vm))
        tries = failed_attempts(attempts(), "Write", since=since)
        fault.heal()
    assert job.rc() == 0, job.output()
    measured(request, "IOS-4 gap between retries with interval 1500 ms and 600 ms I/O (s)",
             round(statistics.median(tries.gaps), 3) if tries.gaps else 0, f"{attempts.name}: {tries.summary()}")
    assert tries.count >= 3, f"too few retries to measure: {tries.summary()}"
    io = 0.6
    assert min(tries.gaps) >= interval + io - 0.01, \
        f"attempts came less than retry_interval + the I/O's own {io} s apart: {tries.summary()}"
    assert statistics.median(tries.gaps) <= interval + io + 0.5, f"retries came far slower than configured: {tries.summary()}"


@claims("IOS-5")
def test_read_and_write_suspension_are_enabled_separately(fault, vms, retry_form):
    """vdb: only rerror=retry; vdc: only werror=retry.  During a fault vdb's write fails
    at once while vdc's waits and completes after the repair; during the next fault a
    read the other way round.  'At once' is less than one retry_interval (2 s).  The
    storage fails both directions (any backend, dm-error too): the guest's I/O picks the
    direction, so a QEMU that applied one setting to both, or swapped them, fails."""
    vm = boot_retry(vms, fault, retry_form, "ios-retry-split",
                    ("vdb", RetryPolicy(werror=None, interval=2000, timeout=0), "acc-r"),
                    ("vdc", RetryPolicy(rerror=None, interval=2000, timeout=0), "acc-w"))
    g = vm.guest
    only_read, only_write = g.block.find("acc-r").name, g.block.find("acc-w").name
    for kind, at_once, waits in (("write", only_read, only_write), ("read", only_write, only_read)):
        io = {"write": "dd if=/dev/zero of=/dev/{} bs=4k count=1 oflag=direct",
              "read": "dd if=/dev/{} of=/dev/null bs=4k count=1 iflag=direct"}[kind]
        fault.fail("all")
        fast = GuestJob(g, io.format(at_once), f"{kind}-fails")
        rc = fast.outcome(30)
        assert rc is not None, f"a {kind} on the disk without {kind} retry was still pending after 30 s (retried)"
        assert rc != 0, f"a {kind} on the disk without {kind} retry must fail: {fast.output()!r}"
        # by the guest's clock, at any host speed: a retry would come one retry_interval (2 s) later
        assert fast.elapsed() < 2.0, \
            f"a {kind} without {kind} retry took {fast.elapsed():.2f} s to fail: at least one retry_interval (retried)"
        slow = GuestJob(g, io.format(waits), f"{kind}-waits").started()
        stays_pending(slow, 3, alive=running(vm))
        fault.heal()
        assert slow.rc() == 0, f"the retried {kind} did not complete after the repair: {slow.output()!r}"


@claims("IOS-6")
def test_retry_is_refused_on_a_bus_other_than_virtio(fault, lab):
    """libvirt refuses error_policy='retry' on a SATA disk for the policy, when the domain
    is defined or at the latest when it starts (paused: no guest runs).  Controls: the same
    retry disk on virtio is accepted (the policy itself is known), and the same SATA disk
    with error_policy='stop' is accepted (the bus and the disk are fine)."""
    def define(bus, target, stop=False):
        if stop:
            d = fault.disk(target, bus=bus, error_policy="stop", rerror_policy="stop", cache="none", serial=SERIAL)
        else:
            d, _ = retry_disk(fault, "xml", target, RetryPolicy(interval=1000, timeout=0), SERIAL, bus=bus)
        return lab.refusal([d], f"ios6-{bus}{'-stop' if stop else ''}", start=True)

    accepted = define("virtio", "vdb")
    assert accepted is None, f"libvirt refused error_policy='retry' on virtio too (the control): {accepted}"
    sata = define("sata", "sda", stop=True)
    assert sata is None, f"libvirt refused the SATA disk with error_policy='stop' (the control): {sata}"
    msg = define("sata", "sda")
    assert msg is not None, "libvirt accepted error_policy='retry' on a SATA disk"
    assert any(w in msg.lower() for w in ("retry", "error_policy", "error policy")), \
        f"libvirt refused the SATA retry disk without naming the policy (another reason?): {msg}"


GUIDE_BLK = ("virtio-blk-pci,scsi=off,bus={bus},addr=0x6,drive=drive-virtio-disk0,id=virtio-disk0,write-cache=on,"
             "werror=retry,rerror=retry,retry_interval=2000,retry_timeout=10000")
GUIDE_SCSI = ("scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,device_id=drive-scsi0-0-0-0,drive=drive-scsi0-0-0-0,"
              "id=scsi0-0-0-0,write-cache=on,werror=retry,rerror=retry,retry_interval=2000,retry_timeout=10000")
GUIDE_VALUES = {"werror": "retry", "rerror": "retry", "retry_interval": 2000, "retry_timeout": 10000}


@claims("IOS-7")
def test_qemu_command_line_form_keeps_the_settings(lab, vms, request):
    """QEMU started on the lab host with the guide's -drive/-device lines (virtio-blk and
    virtio-scsi) holds all four settings on both devices."""
    proven_with(request, "QEMU started directly on the lab host with the guide's -drive/-device lines "
                         f"(the root bus is {lab.arch.pci_root_bus} on {lab.arch.machine})")
    blk, scsi = vms.scratch_image("ios7-blk", "16M", fmt="raw"), vms.scratch_image("ios7-scsi", "16M", fmt="raw")
    emulator = lab.qemu_binary()
    args = ["-drive", f"file={blk},format=raw,if=none,id=drive-virtio-disk0,cache=none,aio=native",
            "-device", GUIDE_BLK.format(bus=lab.arch.pci_root_bus),
            "-device", "virtio-scsi-pci,id=scsi0",
            "-drive", f"file={scsi},format=raw,if=none,id=drive-scsi0-0-0-0,cache=none,aio=native",
            "-device", GUIDE_SCSI]
    devices = ("virtio-disk0", "scsi0-0-0-0")
    asks = [{"execute": "qom-get", "arguments": {"path": f"/machine/peripheral/{d}", "property": p}}
            for d in devices for p in GUIDE_VALUES]
    replies = iter(qemu_oneshot(lab.host, emulator, lab.arch, args, asks))
    for d in devices:
        got = {p: next(replies) for p in GUIDE_VALUES}
        held = {p: r.get("return", r.get("error")) for p, r in got.items()}
        assert held == GUIDE_VALUES, f"{d} started with the guide's options holds {held}"


@claims("IOS-7")
@pytest.mark.requires("fault-backend")
def test_qemu_command_line_form_retries_through_a_fault(fault, vms, lab, request):
    """The guide's -drive/-device line, handed to QEMU as it is (libvirt only starts the
    process, on the lab host), retries: a guest write through that device waits during a
    fault and completes after it.  `serial` only lets the guest find the disk; slot 6 of
    the root bus is the guide's and stays free of libvirt's own devices (its root ports
    start at slot 1)."""
    proven_with(request, "the guide's -drive/-device line handed to QEMU as it is (<qemu:commandline>)")
    args = ["-drive", f"file={fault.qemu_file()},format=raw,if=none,id=drive-virtio-disk0,cache=none,aio=native",
            "-device", GUIDE_BLK.format(bus=lab.arch.pci_root_bus) + ",serial=acc-cli"]
    vm = boot_with(vms, "ios-cli", *fault.devices_beside_qemu_file(), qemu_args=args)
    held = {p: vm.qemu.qmp("qom-get", path="/machine/peripheral/virtio-disk0", property=p) for p in GUIDE_VALUES}
    assert held == GUIDE_VALUES, f"QEMU's device holds {held}"
    g = vm.guest
    dev = g.block.find("acc-cli").name
    fault.fail("all")
    job = GuestJob(g, f"dd if=/dev/zero of=/dev/{dev} bs=4k count=1 oflag=direct", "write").started()
    stays_pending(job, 4, alive=running(vm), within=10)         # retry_timeout is 10 s (the guide's)
    fault.heal()
    assert job.rc() == 0, f"the write through the guide's device did not complete after the repair: {job.output()!r}"
    assert_no_guest_io_errors(g)
    # ... and the line's retry_timeout acts: a fault longer than its 10 s reaches the guest, not before
    fault.fail("all")
    late = GuestJob(g, f"dd if=/dev/zero of=/dev/{dev} bs=4k count=1 oflag=direct", "write-late")
    rc = late.outcome(10 + 30)
    fault.heal()
    assert rc is not None, "a write into a fault was still pending 40 s in: the line's retry_timeout (10 s) did not act"
    assert rc != 0, f"after the line's retry_timeout the guest must get the error: {late.output()!r}"
    took = late.elapsed()
    assert 10 - 0.05 <= took <= 10 + 2 * 2 + 5 * factor(), \
        f"the guest got the error {took:.2f} s into the fault: not at the line's retry_timeout (10 s, interval 2 s)"
