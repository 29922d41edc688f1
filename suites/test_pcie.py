"""Configuring a PCIe Controller for a VM (PCIE-1..7).

One VM with the guide's simplified controller list, grown to 10 root ports so
that the slot roll-over rule is exercised, serves the read-only claims; the
hot-plug capacity claims get VMs of their own.
"""
import re

import pytest

from fixtures.api import claims, shared_vm
from lab import pcie
from lab import xml as X
from lab.domain import AttachRefused, VMSpec, random_mac
from lab.timeouts import Deadline, poll

ROOT_PORTS = 10


topo = shared_vm(lambda: VMSpec("pcie", pcie_root_ports=ROOT_PORTS, pcie_bridge=True))


def guest_waits_for(vm, what, check, seconds=30):
    return poll(check, Deadline(seconds, f"the guest to show {what}"), interval=0.3)


@claims("PCIE-1")
def test_simplified_form_is_filled_in_by_libvirt(topo):
    sent = X.parse((topo.dir / "defined.xml").read_text())
    asked = pcie.controllers(sent)
    assert all(c.address is None and c.chassis is None and c.model_name is None for c in asked), \
        "the test must send the simplified form (no attributes beyond type/index/model)"
    got = pcie.controllers(topo.domain.inactive_xml())
    assert [(c.index, c.model) for c in got] == [(c.index, c.model) for c in asked]
    assert pcie.fill_in_problems(topo.domain.inactive_xml()) == []
    assert pcie.fill_in_problems(topo.domain.live_xml()) == []


@claims("PCIE-2")
def test_filled_in_numbering_follows_the_documented_rules(topo):
    live = topo.domain.live_xml()
    assert pcie.numbering_problems(live) == []
    ports = pcie.root_ports(live)
    bridge = [c for c in pcie.controllers(live) if c.model == "pcie-to-pci-bridge"]
    assert len(bridge) == 1
    # the guide's worked example: chassis 1 port 0x8 at 00:01.0, chassis 3 port 0x9 at 00:01.1
    assert (ports[0].chassis, ports[0].port, ports[0].address.bdf) == (1, 0x8, "0000:00:01.0")
    assert ports[0].address.multifunction
    assert (ports[1].chassis, ports[1].port, ports[1].address.bdf) == (3, 0x9, "0000:00:01.1")
    assert bridge[0].address.bus == ports[0].index
    # 10 ports: slot 1 is full with 8 functions, so the 9th starts slot 2 at function 0
    assert ports[8].address.slot == ports[0].address.slot + 1 and ports[8].address.function == 0
    assert ports[8].address.multifunction


@claims("PCIE-3")
def test_last_index_is_root_ports_plus_one(topo):
    """libvirt's last controller index is the number of root ports + 1, and it is the guest's
    last PCI bus: every root port and the bridge open one bus each behind pcie-root (bus 0),
    so a port QEMU did not create, or one libvirt added, moves the guest's count."""
    live = topo.domain.live_xml()
    ctrls = pcie.controllers(live)
    assert len(pcie.root_ports(live)) == ROOT_PORTS
    assert max(c.index for c in ctrls) == ROOT_PORTS + 1
    buses = topo.guest.pci.buses()
    assert buses == list(range(ROOT_PORTS + 2)), \
        f"the guest's PCI buses are {buses}, not 0..{ROOT_PORTS + 1} (pcie-root, {ROOT_PORTS} root ports, the bridge)"


@claims("PCIE-4")
def test_guest_sees_every_root_port_and_the_bridge(topo):
    live = topo.domain.live_xml()
    xml_ports = {c.address.bdf for c in pcie.root_ports(live)}
    devices = topo.guest.pci.devices()
    guest_ports = {d.bdf for d in devices if d.is_root_port}
    assert guest_ports == xml_ports, f"guest root ports {sorted(guest_ports)} != configured {sorted(xml_ports)}"
    bridges = [d for d in devices if d.is_pcie_to_pci_bridge]
    assert len(bridges) == 1, f"guest sees {len(bridges)} PCIe-to-PCI bridges: {bridges}"
    bridge_ctrl = next(c for c in pcie.controllers(live) if c.model == "pcie-to-pci-bridge")
    upstream = next(c for c in pcie.controllers(live) if c.index == bridge_ctrl.address.bus)
    assert bridges[0].parent == upstream.address.bdf, "the bridge sits behind the root port libvirt put it on"


@claims("PCIE-5")
def test_disk_and_nic_attached_live_land_on_free_root_ports(topo):
    live = topo.domain.live_xml()
    busy = pcie.used_buses(live)
    free_ports = {c.index: c for c in pcie.root_ports(live) if c.index not in busy}
    assert len(free_ports) >= 2
    disk = X.disk(str(topo.disks.scratch_image("hotdisk")), target="vdb", serial="acc-hot-disk")
    nic = X.user_interface(random_mac())
    mac = nic.find("mac").get("address")

    got_disk = topo.domain.attach(disk, live=True)
    got_nic = topo.domain.attach(nic, live=True)
    try:
        for got in (got_disk, got_nic):
            bus = pcie.PciAddress.from_el(got.find("address")).bus
            assert bus in free_ports, f"{got.tag} landed on bus {bus}, not a free root port {sorted(free_ports)}"
        name = guest_waits_for(topo, "the hot-plugged disk", lambda: topo.guest.block.by_serial().get("acc-hot-disk"))
        ifname = guest_waits_for(topo, "the hot-plugged NIC", lambda: topo.guest.net.by_mac().get(mac))
        ports = {d.bdf: d for d in topo.guest.pci.devices()}
        for what, path in (("disk", topo.guest.block.pci_path(name)), ("NIC", topo.guest.net.pci_path(ifname))):
            parent = ports[path[-2]]
            assert parent.is_root_port, f"the guest's {what} sits behind {parent}, not a PCIe root port"
        topo.guest.run("dd if=/dev/zero of=/dev/%s bs=64k count=4 oflag=direct", name)
    finally:
        topo.domain.detach(got_nic)
        topo.domain.detach(got_disk)
    assert "acc-hot-disk" not in topo.guest.block.by_serial()
    assert mac not in topo.guest.net.by_mac()


@claims("PCIE-6")
def test_root_port_cannot_be_hot_plugged(topo):
    before_xml = len(pcie.root_ports(topo.domain.live_xml()))
    before_guest = len(topo.guest.pci.root_ports())
    # the guide's filled-in form of a root port (model, chassis and port given), the next index:
    # a form libvirt takes as it is, so a refusal can only be about plugging it live
    port = X.pci_controller("pcie-root-port", ROOT_PORTS + 2)
    port.append(X.el("model", {"name": "pcie-root-port"}))
    port.append(X.el("target", {"chassis": str(ROOT_PORTS + 2), "port": "0x1f"}))
    with pytest.raises(AttachRefused) as refused:
        topo.domain.attach(port, live=True)
    reason = str(refused.value).replace(topo.name, "<vm>")
    assert re.search(r"controller.*(hot.?plug|live)|(hot.?plug|live).*controller", reason, re.I), \
        f"the live attach was refused, but not because a root port cannot be hot-plugged: {reason}"
    state, _ = topo.domain.state()
    assert state == "running"
    assert topo.guest.boot_id() == topo.boot_id, "the guest kept running (no reboot)"
    assert len(pcie.root_ports(topo.domain.live_xml())) == before_xml
    assert len(topo.guest.pci.root_ports()) == before_guest
    # control: the same root port XML is a valid device: the persistent definition takes it
    added = topo.domain.attach(port, live=False, config=True)
    assert added is not None, "the persistent definition did not take the root port either"
    topo.domain.detach(added, live=False, config=True)


@claims("PCIE-7")
def test_hot_plug_capacity_is_what_was_reserved(vms):
    # how many root ports the VM's own devices occupy (libvirt adds one spare when it
    # fills in on its own, so ask for exactly that many explicitly)
    probe = vms.define(VMSpec("pcie-probe"))
    inactive = probe.domain.inactive_xml()
    needed = sum(1 for c in pcie.root_ports(inactive) if c.index in pcie.used_buses(inactive))
    vms.release(probe)
    full = vms.boot(VMSpec("pcie-full", pcie_root_ports=needed))
    assert set(c.index for c in pcie.root_ports(full.domain.live_xml())) <= pcie.used_buses(full.domain.live_xml()), \
        "every root port is taken"
    with pytest.raises(AttachRefused):
        full.domain.attach(X.disk(str(full.disks.scratch_image("nospace")), target="vdb", serial="acc-no-room"))
    assert full.domain.state()[0] == "running" and full.guest.boot_id() == full.boot_id
    assert "acc-no-room" not in full.guest.block.by_serial()

    spare = 2
    roomy = vms.boot(VMSpec("pcie-spare", pcie_root_ports=needed + spare))
    serials = [f"acc-spare-{i}" for i in range(spare)]
    for i, serial in enumerate(serials):
        roomy.domain.attach(X.disk(str(roomy.disks.scratch_image(serial)), target=f"vd{chr(ord('b') + i)}", serial=serial))
    guest_waits_for(roomy, f"{spare} hot-plugged disks",
                    lambda: all(s in roomy.guest.block.by_serial() for s in serials))
    with pytest.raises(AttachRefused):
        roomy.domain.attach(X.disk(str(roomy.disks.scratch_image("one-too-many")), target="vdz", serial="acc-too-many"))
    assert roomy.domain.state()[0] == "running" and roomy.guest.boot_id() == roomy.boot_id
