"""Managing Virtual Disks (DISK-1, 2, 4..7): naming in the guest, attach and
detach of a virtio-scsi disk with the guide's XML, persistence, and the driver
attributes as QEMU and the host really applied them."""
import json
import string

import pytest

from fixtures.api import claims, shared_vm
from lab import xml as X
from lab.domain import VMSpec
from lab.timeouts import Deadline, poll
from lab.vhost_scsi import ConfigFS, VhostScsiTarget

MANY = 27          # one past the 26 single-letter names


def kernel_names(prefix: str, n: int) -> list[str]:
    """sda..sdz, sdaa, sdab, ... as the Linux kernel names disks."""
    letters = string.ascii_lowercase
    out = []
    for i in range(n):
        out.append(prefix + (letters[i] if i < 26 else letters[i // 26 - 1] + letters[i % 26]))
    return out


def guide_scsi_disk(vm, name, target=1, dev="sdb"):
    """The guide's attach-device.xml: qcow2, cache='none' io='native', target sdb on
    bus scsi, drive address controller 0 bus 0 target 1 unit 0 (plus a serial)."""
    return X.disk(str(vm.disks.scratch_image(name)), target=dev, bus="scsi", fmt="qcow2", cache="none",
                  io="native", serial=f"acc-{name}",
                  drive_address={"controller": 0, "bus": 0, "target": target, "unit": 0})


@pytest.fixture(scope="module")
def many_disks_vm(module_vms):
    """27 virtio-blk disks in all (vda is the system disk) on the pcie-to-pci
    bridge's slots, and 27 LUNs on one virtio-scsi controller."""
    spec = VMSpec("disks-many", pcie_root_ports=4, pcie_bridge=True, memory_mib=512)
    vm = module_vms.define(VMSpec("disks-probe", pcie_root_ports=4, pcie_bridge=True))
    bridge_bus = next(int(c.get("index")) for c in vm.domain.inactive_xml().findall("devices/controller")
                      if c.get("model") == "pcie-to-pci-bridge")
    module_vms.release(vm)
    for i in range(1, MANY):
        spec.devices.append(X.disk(str(module_vms.scratch_image(f"vblk{i}", "1M")), target=kernel_names("vd", MANY)[i], serial=f"acc-vblk-{i}",
                                   pci_address=X.pci_address(bridge_bus, i)))
    spec.devices.append(X.scsi_controller(0))
    for i in range(MANY):
        spec.devices.append(X.disk(str(module_vms.scratch_image(f"scsi{i}", "1M")), target=kernel_names("sd", MANY)[i], bus="scsi",
                                   serial=f"acc-scsi-{i}", drive_address={"controller": 0, "bus": 0,
                                                                          "target": 0, "unit": i}))
    vm = module_vms.define(spec)
    vm.start(Deadline(120, f"{vm.name} with {2 * MANY} disks to boot"))
    return vm


@claims("DISK-1")
def test_virtio_blk_disks_are_vd_letters_then_two_letters(many_disks_vm):
    disks = {d.serial: d for d in many_disks_vm.guest.block.disks() if d.name.startswith("vd")}
    names = sorted((d.name for d in disks.values()), key=lambda n: (len(n), n))
    assert names == kernel_names("vd", MANY), f"guest virtio-blk names: {names}"
    expected = {"acc-root"} | {f"acc-vblk-{i}" for i in range(1, MANY)}
    assert set(disks) == expected, f"serials seen: {sorted(disks)}"
    # the kernel names in probe order, so the system disk may be the two-letter one
    data = sorted((d for d in disks.values() if d.serial != "acc-root"), key=lambda d: (-len(d.name), d.name))
    many_disks_vm.guest.block.write_and_verify(data[0].name, mib=1)


@claims("DISK-2")
def test_virtio_scsi_disks_are_sd_letters_then_two_letters(many_disks_vm):
    disks = {d.serial: d for d in many_disks_vm.guest.block.disks() if d.name.startswith("sd")}
    names = sorted((d.name for d in disks.values()), key=lambda n: (len(n), n))
    assert names == kernel_names("sd", MANY), f"guest SCSI disk names: {names}"
    assert set(disks) == {f"acc-scsi-{i}" for i in range(MANY)}
    # each LUN is where the XML put it (unit -> LUN on target 0)
    for i in range(MANY):
        assert disks[f"acc-scsi-{i}"].target_lun == (0, 0, i)
    two_letter = [d for d in disks.values() if len(d.name) == 4]
    many_disks_vm.guest.block.write_and_verify(two_letter[0].name, mib=1)


scsi_vm = shared_vm(lambda: VMSpec("disks-scsi", devices=[X.scsi_controller(0)]))


@claims("DISK-4", "DISK-6", "DISK-7")
def test_attach_use_and_detach_the_guides_virtio_scsi_disk(scsi_vm):
    vm = scsi_vm
    disk = guide_scsi_disk(vm, "guide-disk")
    image = disk.find("source").get("file")
    others_native = [d.find("target").get("dev") for d in vm.domain.live_xml().findall("devices/disk")
                     if d.find("driver") is not None and d.find("driver").get("io") == "native"]
    assert not others_native, f"{others_native} use native AIO already: they would move QEMU's AIO rings too"

    live = vm.domain.attach(disk, live=True)                                   # virsh attach-device VM disk.xml
    assert live is not None and live.find("target").get("bus") == "scsi"
    seen = vm.guest.block.wait_for("acc-guide-disk")
    assert seen.name.startswith("sd")
    # DISK-7: the drive address reached the guest (channel 0, target 1, LUN 0) ...
    assert seen.target_lun == (0, 1, 0), f"guest SCSI address {seen.hctl}"
    # ... and the driver attributes reached QEMU and the host
    block = next(b for b in vm.qemu.qmp("query-block") if b.get("inserted", {}).get("file") == image)
    assert block["inserted"]["cache"]["direct"] is True, f"cache='none' not applied: {block['inserted']['cache']}"
    assert vm.qemu.opened_direct(image), f"QEMU opened {image} without O_DIRECT: {vm.qemu.open_flags(image)}"
    # io='native': the guest's direct writes to this disk complete through a Linux AIO ring of
    # QEMU's (the ring's own completion counter moves), whatever ran on this VM before
    rings_before = vm.qemu.aio_completions()
    vm.guest.run("dd if=/dev/zero of=/dev/%s bs=4k count=8 oflag=direct", seen.name)
    rings_after = vm.qemu.aio_completions()
    assert rings_after != rings_before, \
        f"io='native' did not reach QEMU: no Linux AIO ring completed the guest's writes ({rings_before} -> {rings_after})"

    # DISK-4: usable: a pattern written in the guest reads back, and it is in the image file
    digest = vm.guest.block.write_and_verify(seen.name, mib=4)
    assert vm.disks.sha256(image, mib=4) == digest, "the guest's writes are not in the attached image"

    vm.domain.detach(disk, live=True)                                          # virsh detach-device, same XML
    vm.guest.block.wait_gone("acc-guide-disk")
    assert not [d for d in vm.domain.live_xml().findall("devices/disk") if d.find("source") is not None
                and d.find("source").get("file") == image]
    assert image not in json.dumps(vm.qemu.qmp("query-block"))


@claims("DISK-5")
def test_live_attach_is_gone_after_restart_config_attach_stays(scsi_vm):
    vm = scsi_vm
    live_only = guide_scsi_disk(vm, "live-only", target=2, dev="sdc")
    persistent = guide_scsi_disk(vm, "persistent", target=3, dev="sdd")
    vm.domain.attach(live_only, live=True)
    vm.domain.attach(persistent, live=True, config=True)
    vm.guest.block.wait_for("acc-live-only")
    vm.guest.block.wait_for("acc-persistent")
    serials = {s.text for s in vm.domain.inactive_xml().findall("devices/disk/serial")}
    assert "acc-persistent" in serials and "acc-live-only" not in serials
    try:
        vm.poweroff()
        vm.start()
        assert vm.guest.block.find("acc-live-only") is None, "a live-only disk survived a restart"
        kept = vm.guest.block.find("acc-persistent")
        assert kept is not None, "a --config disk is missing after a restart"
        vm.guest.block.write_and_verify(kept.name, mib=1)
    finally:
        if vm.guest.block.find("acc-persistent") is not None:
            vm.domain.detach(persistent, live=True, config=True)
        elif any(s.text == "acc-persistent" for s in vm.domain.inactive_xml().findall("devices/disk/serial")):
            vm.domain.detach(persistent, live=False, config=True)


VIRTIO_SCSI_IDS = {("0x1af4", "0x1048"), ("0x1af4", "0x1004")}     # modern, transitional


@claims("DISK-3")
def test_vhost_scsi_disk_appears_as_sd(scsi_vm, lab):
    """The LUN must come from the host's LIO target (SCSI vendor LIO-ORG) through the
    virtio-scsi function the vhost-scsi hostdev added: not from the VM's own virtio-scsi
    controller, and not picked by its size."""
    vm = scsi_vm
    backing = vm.disks.scratch_image("vhost-lun", "64M", "raw")
    functions_before = {d.bdf for d in vm.guest.pci.devices()}
    with VhostScsiTarget(backing, 64 << 20, fs=ConfigFS(lab.sys / "kernel/config/target")) as target:
        hostdev = vm.domain.attach(target.hostdev(), live=True)
        try:
            disk = poll(lambda: next((d for d in vm.guest.block.disks() if d.name.startswith("sd") and d.pci_path
                                      and d.pci_path[-1] not in functions_before), None),
                        Deadline(30, "the guest to see a SCSI disk behind a new PCI function (the vhost-scsi LUN)"),
                        interval=0.3)
            vendor, model = vm.guest.block.scsi_inquiry(disk.name)
            assert vendor == "LIO-ORG", f"{disk.name} answers INQUIRY as {vendor!r} {model!r}, not the host's LIO target"
            fn = {d.bdf: d for d in vm.guest.pci.devices()}[disk.pci_path[-1]]
            assert (fn.vendor, fn.device) in VIRTIO_SCSI_IDS and fn.driver == "virtio-pci", \
                f"{disk.name} sits on {fn.bdf} {fn.vendor}:{fn.device} ({fn.driver}), not a virtio-scsi function"
            assert disk.sectors == (64 << 20) // 512, f"{disk.name} has {disk.sectors} sectors, the LUN 64 MiB"
            vm.guest.block.write_and_verify(disk.name, mib=4)
        finally:
            vm.domain.detach(hostdev, live=True)
