"""Storing Snapshots (SNAP-1..5): the guide's virsh commands on the system disk
vda of a running VM, the restore of a damaged system, and which kinds of disk
can be snapshotted."""
import secrets

import allure
import libvirt
import pytest

from fixtures.plugin import claims, deviation
from lab import images, loopdev, snapshots
from lab import xml as X
from lab.domain import VMSpec
from lab.timeouts import Deadline, poll
from lab.virsh import table, virsh


@pytest.fixture(scope="module")
def snap_vm(module_vms):
    return module_vms.boot(VMSpec("snap"))


def record(name: str, text: str):
    allure.attach(text, name=name, attachment_type=allure.attachment_type.TEXT)


@claims("SNAP-1")
def test_domblklist_lists_every_disk_with_its_source(snap_vm):
    out = virsh(snap_vm.run.cfg.libvirt_uri, "domblklist", snap_vm.name).check().stdout
    record("virsh domblklist", out)
    listed = {row[0]: row[1] for row in table(out)}
    in_xml = {d.find("target").get("dev"): d.find("source").get("file")
              for d in snap_vm.live_xml().findall("devices/disk")}
    assert listed == in_xml
    # and the listed source is the disk the guest really runs from
    assert snap_vm.guest.block.find("acc-root") is not None


@claims("SNAP-2", "SNAP-3", "SNAP-4")
def test_external_snapshot_of_vda_restores_a_damaged_system(snap_vm):
    vm, g = snap_vm, snap_vm.guest
    token = secrets.token_hex(8)
    g.run("echo %s > /root/precious && sync", token, check=True)
    profile_before = g.check_output("sha256sum /etc/profile").split()[0]
    base = vm.live_xml().find("devices/disk/target[@dev='vda']/../source").get("file")
    overlay = vm.dir / "vda-snapshot1.qcow2"

    name, took = snapshots.create_external(vm, {"vda": overlay})       # SNAP-2
    allure.dynamic.parameter("snapshot seconds", f"{took:.2f}")
    record("snapshot-create-as took", f"{took:.3f} s")
    assert overlay.exists()
    info = images.image_info(overlay)
    assert info["format"] == "qcow2" and info.get("backing-filename") == base
    assert vm.state()[0] == "running" and g.boot_id() == vm.boot_id, "the VM kept running through the snapshot"
    assert vm.live_xml().find("devices/disk/target[@dev='vda']/../source").get("file") == str(overlay)
    # the guest now writes into the overlay: the base keeps the snapshot's state
    g.run("echo after > /root/after-snapshot && sync", check=True)

    out = virsh(vm.run.cfg.libvirt_uri, "snapshot-list", vm.name).check().stdout   # SNAP-3
    record("virsh snapshot-list", out)
    rows = {row[0]: row for row in table(out)}
    assert name in rows and rows[name][-1] == "disk-snapshot", out

    # SNAP-4: damage the system, then restore it from the snapshot
    g.run("rm -f /root/precious; dd if=/dev/urandom of=/etc/profile bs=1k count=4 conv=notrunc; sync", check=True)
    assert g.run("cat /root/precious").rc != 0
    snapshots.restore_external(vm, name, "vda")
    g = vm.guest
    assert g.check_output("cat /root/precious").strip() == token
    assert g.check_output("sha256sum /etc/profile").split()[0] == profile_before
    assert g.run("test -e /root/after-snapshot").rc != 0, "the restored disk is the pre-snapshot state"
    assert not overlay.exists()
    with pytest.raises(libvirt.libvirtError):
        vm.dom.snapshotLookupByName(name)


@claims("SNAP-5")
def test_qcow2_and_raw_images_can_be_snapshotted(vms):
    vm = vms.define(VMSpec("snap-formats"))
    vm.attach(X.disk(str(vm.scratch_image("data-qcow2", "32M", "qcow2")), target="vdb", serial="acc-q"),
              live=False, config=True)
    vm.attach(X.disk(str(vm.scratch_image("data-raw", "32M", "raw")), target="vdc", fmt="raw", serial="acc-r"),
              live=False, config=True)
    vm.start()
    disks = {s: vm.guest.block.find(s).name for s in ("acc-q", "acc-r")}
    before = {s: vm.guest.block.write_and_verify(n, mib=2) for s, n in disks.items()}
    name, _ = snapshots.create_external(vm, {"vdb": vm.dir / "q.snap.qcow2", "vdc": vm.dir / "r.snap.qcow2"},
                                        others_no=["vda"])
    for target, fmt in (("vdb", "qcow2"), ("vdc", "raw")):
        src = vm.live_xml().find(f"devices/disk/target[@dev='{target}']/../source").get("file")
        backing = images.image_info(src)
        assert backing["backing-filename-format"] == fmt and backing["backing-filename"]
    # the snapshot holds the data, and the guest keeps using both disks
    for serial, name_ in disks.items():
        assert vm.guest.block.write_and_verify(name_, mib=2, seek_mib=4)
    assert images.image_sha256(vm.dir / "data-qcow2.qcow2", 2, "qcow2") == before["acc-q"]
    assert images.image_sha256(vm.dir / "data-raw.raw", 2, "raw") == before["acc-r"]


@claims("SNAP-5")
def test_block_device_disk_snapshot_is_refused_or_recorded(vms):
    vm = vms.boot(VMSpec("snap-block"))
    backing = vm.scratch_image("block-backing", "32M", "raw")
    with loopdev.loop_device(backing) as dev:
        disk = X.disk(dev, target="vdb", fmt="raw", kind="block", serial="acc-blk")
        vm.attach(disk, live=True)
        try:
            seen = poll(lambda: vm.guest.block.find("acc-blk"), Deadline(30, "the guest to see the block-device disk"),
                        interval=0.3)
            vm.guest.block.write_and_verify(seen.name, mib=1)
            r = virsh(vm.run.cfg.libvirt_uri, "snapshot-create-as", "--domain", vm.name, "--disk-only", "--atomic",
                      "--diskspec", f"vdb,snapshot=external,file={vm.dir / 'blk.snap.qcow2'}",
                      "--diskspec", "vda,snapshot=no")
            record("snapshot of a block-device disk", f"rc={r.rc}\n{r.stdout}{r.stderr}")
            assert vm.state()[0] == "running" and vm.guest.boot_id() == vm.boot_id
            if r.rc == 0:
                deviation("SNAP-5", "libvirt took an external snapshot of a block-device disk "
                                    "(the guide says block devices are not supported)")
            assert "error" in r.stderr.lower()
        finally:
            if vm.is_active():
                vm.destroy()      # releases the loop device before it is detached
