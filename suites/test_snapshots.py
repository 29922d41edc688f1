"""Storing Snapshots (SNAP-1..5): the guide's virsh commands on the system disk
vda of a running VM, the restore of a damaged system, and which kinds of disk
can be snapshotted."""
import re
import secrets

import allure

from fixtures.api import claims, deviation, proven_with, shared_vm
from lab import images, loopdev, snapshots, timeouts
from lab import xml as X
from lab.domain import VMSpec
from lab.timeouts import Deadline, poll
from lab.virsh import table


# two free root ports: SNAP-1 hot-plugs two disks beside the system disk and the NIC
snap_vm = shared_vm(lambda: VMSpec("snap", pcie_root_ports=4))
FEW_SECONDS = 5          # the guide's "within a few seconds" for SNAP-2


def record(name: str, text: str):
    allure.attach(text, name=name, attachment_type=allure.attachment_type.TEXT)


@claims("SNAP-1")
def test_domblklist_lists_every_disk_with_its_source(snap_vm):
    """Every disk's target with the file the harness gave it (not libvirt's own XML), and the
    file listed for a target is the one the guest reads on that disk (a token written into each
    image on the lab host)."""
    vm, g = snap_vm, snap_vm.guest
    given = vm.disks.own()
    tokens, serial_of, attached = {}, {}, []
    try:
        for target in ("vdb", "vdc"):
            path = vm.disks.scratch_image(f"listed-{target}", "16M", "raw")
            tokens[str(path)] = secrets.token_hex(8)
            vm.host.run("sh", "-c", 'printf %s "$1" | dd of="$2" conv=notrunc 2>/dev/null', "sh",
                        tokens[str(path)], path)
            disk = X.disk(str(path), target=target, fmt="raw", serial=f"acc-listed-{target}")
            vm.domain.attach(disk, live=True)
            attached.append(disk)
            given[target], serial_of[target] = str(path), f"acc-listed-{target}"
        names = {t: g.block.wait_for(s).name for t, s in serial_of.items()}
        out = vm.virsh("domblklist", vm.name).check().stdout
        record("virsh domblklist", out)
        listed = {row[0]: row[1] for row in table(out)}
        assert listed == given, f"domblklist lists {listed}; the disks given were {given}"
        for target, name in names.items():
            seen = g.check_output("head -c 16 /dev/%s", name)
            assert seen == tokens[listed[target]], \
                f"the guest's {target} (/dev/{name}) holds {seen!r}, not the token of {listed[target]}, its listed source"
        assert g.block.find("acc-root") is not None
    finally:
        for disk in attached:
            vm.domain.detach(disk, live=True)


@claims("SNAP-2", "SNAP-3", "SNAP-4")
def test_external_snapshot_of_vda_restores_a_damaged_system(snap_vm, request):
    vm, g = snap_vm, snap_vm.guest
    token = secrets.token_hex(8)
    g.run("echo %s > /root/precious && sync", token)
    profile_before = g.check_output("sha256sum /etc/profile").split()[0]
    base = vm.domain.live_xml().find("devices/disk/target[@dev='vda']/../source").get("file")
    overlay = vm.hdir / "vda-snapshot1.qcow2"                       # on the lab host

    name, took = snapshots.create_external(vm, {"vda": overlay})       # SNAP-2
    allure.dynamic.parameter("snapshot seconds", f"{took:.2f}")
    record("snapshot-create-as took", f"{took:.3f} s")
    proven_with(request, f"external disk-only snapshot of vda taken in {took:.2f} s (measured)")
    # the guide: "within a few seconds" (scaled by the lab's timeout factor, as every wait is)
    assert took <= FEW_SECONDS * timeouts.factor(), \
        f"the snapshot took {took:.1f} s, not a few seconds (limit {FEW_SECONDS * timeouts.factor():.0f} s)"
    assert vm.host.exists(overlay)
    info = images.image_info(vm.host, overlay)
    assert info["format"] == "qcow2" and info.get("backing-filename") == base
    assert vm.domain.state()[0] == "running" and g.boot_id() == vm.boot_id, "the VM kept running through the snapshot"
    assert vm.domain.live_xml().find("devices/disk/target[@dev='vda']/../source").get("file") == str(overlay)
    # the guest now writes into the overlay: the base keeps the snapshot's state
    g.run("echo after > /root/after-snapshot && sync")

    out = vm.virsh("snapshot-list", vm.name).check().stdout   # SNAP-3
    record("virsh snapshot-list", out)
    rows = {row[0]: row for row in table(out)}
    assert name in rows and rows[name][-1] == "disk-snapshot", out

    # SNAP-4: damage the system, then restore it from the snapshot
    g.run("rm -f /root/precious; dd if=/dev/urandom of=/etc/profile bs=1k count=4 conv=notrunc; sync")
    assert g.run("cat /root/precious", check=False).rc != 0
    snapshots.restore_external(vm, name, "vda")
    g = vm.guest
    assert g.check_output("cat /root/precious").strip() == token
    assert g.check_output("sha256sum /etc/profile").split()[0] == profile_before
    assert g.run("test -e /root/after-snapshot", check=False).rc != 0, "the restored disk is the pre-snapshot state"
    assert not vm.host.exists(overlay)
    assert name not in vm.domain.snapshot_names(), f"libvirt still keeps snapshot {name}: {vm.domain.snapshot_names()}"


@claims("SNAP-5")
def test_qcow2_and_raw_images_can_be_snapshotted(vms):
    vm = vms.define(VMSpec("snap-formats"))
    bases = {"acc-q": (vm.disks.scratch_image("data-qcow2", "32M", "qcow2"), "qcow2", "vdb"),
             "acc-r": (vm.disks.scratch_image("data-raw", "32M", "raw"), "raw", "vdc")}
    for serial, (path, fmt, target) in bases.items():
        vm.domain.attach(X.disk(str(path), target=target, fmt=fmt, serial=serial), live=False, config=True)
    vm.start()
    disks = {s: vm.guest.block.find(s).name for s in bases}
    before = {s: vm.guest.block.write_and_verify(n, mib=2) for s, n in disks.items()}
    overlays = {"acc-q": vm.hdir / "q.snap.qcow2", "acc-r": vm.hdir / "r.snap.qcow2"}
    snapshots.create_external(vm, {bases[s][2]: overlays[s] for s in bases}, others_no=["vda"])
    for serial, (path, fmt, target) in bases.items():
        src = vm.domain.live_xml().find(f"devices/disk/target[@dev='{target}']/../source").get("file")
        assert src == str(overlays[serial]), f"{target} now writes to {src}, not the snapshot's overlay"
        backing = images.image_info(vm.host, src)
        assert backing["backing-filename-format"] == fmt and backing["backing-filename"] == str(path)
    # The same region rewritten after the snapshot: the base keeps the data of the snapshot's
    # moment, the overlay serves what the guest wrote since (a broken overlay or a base written
    # through fails one of the two).
    after = {s: vm.guest.block.write_and_verify(n, mib=2) for s, n in disks.items()}
    for serial, (path, fmt, _) in bases.items():
        assert after[serial] != before[serial]
        assert vm.disks.sha256(path, 2, fmt) == before[serial], f"the {fmt} base changed after the snapshot"
        assert vm.disks.sha256(overlays[serial], 2, "qcow2") == after[serial], \
            f"the overlay on the {fmt} base does not serve the guest's new data"


@claims("SNAP-5")
def test_block_device_disk_snapshot_is_refused_or_recorded(vms):
    vm = vms.boot(VMSpec("snap-block"))
    backing = vm.disks.scratch_image("block-backing", "32M", "raw")
    with loopdev.loop_device(vm.host, backing) as dev:
        disk = X.disk(dev, target="vdb", fmt="raw", kind="block", serial="acc-blk")
        vm.domain.attach(disk, live=True)
        try:
            seen = poll(lambda: vm.guest.block.find("acc-blk"), Deadline(30, "the guest to see the block-device disk"),
                        interval=0.3)
            vm.guest.block.write_and_verify(seen.name, mib=1)
            r = vm.virsh("snapshot-create-as", "--domain", vm.name, "--disk-only", "--atomic",
                      "--diskspec", f"vdb,snapshot=external,file={vm.hdir / 'blk.snap.qcow2'}",
                      "--diskspec", "vda,snapshot=no")
            record("snapshot of a block-device disk", f"rc={r.rc}\n{r.stdout}{r.stderr}")
            assert vm.domain.state()[0] == "running" and vm.guest.boot_id() == vm.boot_id
            if r.rc == 0:
                deviation("SNAP-5", "libvirt took an external snapshot of a block-device disk "
                                    "(the guide says block devices are not supported)")
            # refused: for the block-device disk (its target, its source or its kind), not for the
            # command (the same command on qcow2 and raw images is test_qcow2_and_raw_images_can_be_snapshotted)
            reason = r.stderr.replace(vm.name, "<vm>")
            assert re.search(rf"block|vdb|{re.escape(dev)}|not supported|unsupported", reason, re.I), \
                f"the snapshot was refused, but not for the block-device disk: {reason}"
        finally:
            if vm.domain.is_active():
                vm.destroy()      # releases the loop device before it is detached
