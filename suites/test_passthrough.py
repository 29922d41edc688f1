"""Managing Device Passthrough, SR-IOV Passthrough and the HPRE accelerator
(PCI-1..3, SRIOV-1..4, HPRE-1..3).  Only devices listed in the lab config are
touched; host state (drivers, VF counts, VF MAC/VLAN/rate) is recorded first
and restored on every exit path."""
import secrets

import pytest

from fixtures.api import claims
from lab import pci
from lab.domain import AttachRefused, DomainError, VMSpec, random_mac
from lab.timeouts import Deadline, poll

@pytest.fixture
def host_state(lab):
    # Tests ask for host_state before vms: teardown runs in reverse, so their VMs are
    # gone (devices released) before the host state is put back.
    st = pci.HostState(save_to=lab.dir / f"host-state-{secrets.token_hex(3)}.json", host=lab.host)
    lab.push_undo("restored host PCI state", st.restore)
    yield st
    lab.undo_now(st.restore)


def listed(lab, kind):
    return {d.bdf for d in getattr(lab.cfg.inventory, kind)}


def pf_link_up(lab, net):
    """Bring the PF's link up and wait for carrier: VFs get their MAC, VLAN and rate
    from a PF whose link is up (igbvf: 'PF still in reset state')."""
    lab.host.run("ip", "link", "set", net, "up")
    poll(lambda: lab.host.run("cat", f"/sys/class/net/{net}/carrier", check=False).stdout.strip() == "1",
         Deadline(30, f"carrier on the PF's netdev {net}"), interval=0.5)


def host_lspci_vfs(lab, pf_bdf):
    out = lab.host.run("lspci", "-D").stdout
    bus = pf_bdf.rsplit(":", 1)[0] + ":"
    return sorted(line.split()[0] for line in out.splitlines() if "Virtual Function" in line and line.startswith(bus))


# ------------------------------------------------------------------ PCI passthrough

GUEST_BDF = "0000:00:03.0"      # the guide's <address> for the assigned device


def guest_sees_rom(vm) -> bool:
    return vm.guest.run("test -e /sys/bus/pci/devices/%s/rom", GUEST_BDF).rc == 0


@claims("PCI-1")
def test_managed_vfio_passthrough(lab, host_state, vms):
    bdf = sorted(listed(lab, "pci"))[0]
    lab.lease_device("pci", bdf, wait_s=600)
    dev = pci.check_passthrough_safe(bdf, listed(lab, "pci"), lab.sys)
    host_state.remember_device(bdf)
    vm = vms.boot(VMSpec("pci-pass", devices=[pci.hostdev_pci(bdf)]))
    assert pci.read_device(bdf, lab.sys).driver == "vfio-pci", "managed='yes' binds the device to vfio-pci while assigned"
    seen = {d.bdf: d for d in vm.guest.pci.devices()}.get(GUEST_BDF)
    assert seen and (seen.vendor, seen.device) == (dev.vendor, dev.device), \
        f"guest {GUEST_BDF} is {seen}, expected {dev.ids}"
    vms.release(vm)
    assert pci.read_device(bdf, lab.sys).driver == dev.driver, "the host driver came back after the VM"


@claims("PCI-2")
def test_rom_bar_off_hides_the_devices_rom(lab, host_state, vms):
    """Only a device with an expansion ROM can show rom bar='off' doing anything: the
    same device shows its ROM in the guest without the setting (the control) and none
    with it."""
    with_rom = [b for b in sorted(listed(lab, "pci")) if pci.read_device(b, lab.sys).has_rom]
    if not with_rom:
        pytest.skip("no PCI device in the lab config has an expansion ROM BAR (no sysfs rom file): "
                    "rom bar='off' would change nothing")
    bdf = with_rom[0]
    lab.lease_device("pci", bdf, wait_s=600)
    pci.check_passthrough_safe(bdf, listed(lab, "pci"), lab.sys)
    host_state.remember_device(bdf)
    control = vms.boot(VMSpec("pci-rom-on", devices=[pci.hostdev_pci(bdf, rom_bar_off=False)]))
    assert guest_sees_rom(control), f"without rom bar='off' the guest's {GUEST_BDF} shows no ROM BAR, " \
                                    f"though host {bdf} has one"
    vms.release(control)
    vm = vms.boot(VMSpec("pci-rom-off", devices=[pci.hostdev_pci(bdf)]))
    assert {d.bdf for d in vm.guest.pci.devices()} >= {GUEST_BDF}, f"the device is not at {GUEST_BDF} in the guest"
    assert not guest_sees_rom(vm), "rom bar='off' left a ROM BAR on the guest's device"


@claims("PCI-3")
def test_iommu_group_goes_to_one_vm_only(lab, host_state, vms):
    devs = [pci.read_device(b, lab.sys) for b in sorted(listed(lab, "pci"))]
    groups = {}
    for d in devs:
        groups.setdefault(d.iommu_group, []).append(d.bdf)
    mates = next((m for m in groups.values() if len(m) > 1), None)
    if not mates:
        pytest.skip("the lab config lists no two devices of one IOMMU group")
    for b in mates:
        host_state.remember_device(b)
    for b in mates[1:]:
        lab.nodedev_detach(b)    # a group is usable only with every member on vfio-pci
    group = pci.read_device(mates[0], lab.sys).iommu_group
    first = vms.boot(VMSpec("pci-group-a", devices=[pci.hostdev_pci(mates[0])]))
    second = vms.define(VMSpec("pci-group-b", devices=[pci.hostdev_pci(mates[1])]))
    with pytest.raises(DomainError) as refused:
        second.start(Deadline(60, "a second VM asking for a group-mate"))
    why = refused.value.reason
    # libvirt names the mate and the domain holding it; QEMU's VFIO names the busy group
    assert first.name in why or mates[0] in why or f"/dev/vfio/{group}" in why, \
        f"the second VM was refused, but not for IOMMU group {group} being held by {first.name}: {why}"
    assert first.state()[0] == "running", "the VM holding the group stopped when a second VM asked for it"
    vms.release(first)            # control: with the group free (managed='yes' gave the first its host
    lab.nodedev_detach(mates[0])  # driver back: put it on vfio-pci again), the same second VM starts
    second.start(Deadline(120, "the second VM once the group is free"))
    seen = {d.bdf for d in second.guest.pci.devices()}
    assert GUEST_BDF in seen, f"the group-mate {mates[1]} is not at {GUEST_BDF} in the second VM: {sorted(seen)}"


# ------------------------------------------------------------------ SR-IOV

@pytest.fixture
def pf(lab, host_state):
    entry = lab.cfg.inventory.sriov_pfs[0]
    lab.lease_device("pf", entry.bdf, wait_s=600)
    dev = pci.read_device(entry.bdf, lab.sys)
    if not dev.is_pf:
        raise pci.UnsafeDevice(f"{entry.bdf} is listed as an SR-IOV PF but has no sriov_totalvfs")
    host_state.remember_pf(entry.bdf)
    return dev


@claims("SRIOV-1", "SRIOV-2")
def test_numvfs_creates_and_removes_vfs_and_discovery_agrees(lab, pf, host_state):
    n = min(2, pf.totalvfs)
    host_state.set_numvfs(pf.bdf, n)
    now = pci.read_device(pf.bdf, lab.sys)
    assert len(now.virtfns) == n and host_lspci_vfs(lab, pf.bdf) == sorted(now.virtfns)
    for vf in now.virtfns:
        assert pci.read_device(vf, lab.sys).physfn == pf.bdf
    assert now.netdevs, "the PF's netdev under .../net"
    host_state.set_numvfs(pf.bdf, 0)
    assert pci.read_device(pf.bdf, lab.sys).virtfns == () and host_lspci_vfs(lab, pf.bdf) == []


@claims("SRIOV-3")
def test_ip_link_sets_vf_mac_and_rate(lab, pf, host_state):
    host_state.set_numvfs(pf.bdf, max(1, pf.numvfs))
    net = pf.netdevs[0]
    mac = random_mac()
    pf_link_up(lab, net)
    lab.host.run("ip", "link", "set", net, "vf", "0", "mac", mac)
    r = lab.host.run("ip", "link", "set", net, "vf", "0", "rate", "100", check=False)
    if not r.ok:
        pytest.fail(f"lab host {lab.cfg.name} refused a VF rate on {net}: {r.stderr.strip()}")
    shown = lab.host.run("ip", "link", "show", net).stdout
    vf0 = pci.parse_vf_links(shown).get(0)
    assert vf0 is not None, f"ip link show {net} lists no vf 0: {shown}"
    assert (vf0.mac, vf0.rate) == (mac, 100), f"ip link show {net}: VF 0 has MAC {vf0.mac}, rate {vf0.rate} Mbps"


@claims("SRIOV-4")
def test_hostdev_interface_passes_a_vf_with_mac_and_vlan(lab, pf, host_state, vms):
    host_state.set_numvfs(pf.bdf, max(1, pf.numvfs))
    pf_link_up(lab, pf.netdevs[0])
    vf = pci.read_device(pf.bdf, lab.sys).virtfns[0]
    host_state.remember_device(vf)
    mac = random_mac()
    vm = vms.boot(VMSpec("sriov-vf", devices=[pci.hostdev_interface(vf, mac, 1)]))
    vf_nic = lambda: next((n for n in vm.guest.net.nics() if n.driver not in ("-", "virtio_net")), None)  # noqa: E731
    nic = poll(vf_nic, Deadline(30, "a VF NIC (not virtio) in the guest"))
    assert nic.mac.lower() == mac, (
        f"the guest's VF NIC {nic.name} ({nic.driver}) has MAC {nic.mac}, not the configured {mac}; its driver said: "
        + vm.guest.run("dmesg | grep -i %s | tail -n 4", nic.driver).stdout.replace("\n", " | "))
    assert nic.driver not in ("-", "virtio_net"), f"the guest NIC {nic.name} is not the VF (driver {nic.driver})"
    shown = lab.host.run("ip", "link", "show", pf.netdevs[0]).stdout
    mine = [v for v in pci.parse_vf_links(shown).values() if v.mac == mac]
    assert len(mine) == 1, f"ip link show {pf.netdevs[0]}: {len(mine)} VF line(s) with MAC {mac}: {shown}"
    assert mine[0].vlan == 1, f"the host shows VLAN {mine[0].vlan} on VF {mine[0].vf}, not the configured 1"


# ------------------------------------------------------------------ HPRE

@pytest.fixture
def hpre(lab, host_state):
    bdf = lab.cfg.inventory.hpre[0].bdf
    lab.lease_device("hpre", bdf, wait_s=600)
    found = next((h for h in pci.hpre_devices(lab.sys) if h["bdf"] == bdf), None)
    if found is None:
        raise pci.UnsafeDevice(f"lab HPRE {bdf} is not under /sys/class/uacce")
    host_state.remember_pf(bdf)
    return found


@claims("HPRE-1")
def test_hpre_ids_and_vf_limit(lab, hpre, host_state):
    assert (hpre["vendor"], hpre["device"]) == (pci.HPRE_VENDOR, pci.HPRE_PF)
    assert pci.read_device(hpre["bdf"], lab.sys).totalvfs == pci.HPRE_MAX_VFS
    host_state.writer(hpre["numvfs_path"], "2")
    vfs = pci.read_device(hpre["bdf"], lab.sys).virtfns
    assert len(vfs) == 2 and all(pci.read_device(v, lab.sys).device == pci.HPRE_VF for v in vfs)
    host_state.writer(hpre["numvfs_path"], "0")
    with pytest.raises(OSError):
        host_state.writer(hpre["numvfs_path"], str(pci.HPRE_MAX_VFS + 1))


@claims("HPRE-2", "HPRE-3")
def test_hpre_vf_in_a_vm_is_usable_and_pins_the_host_driver(lab, hpre, host_state, vms):
    host_state.writer(hpre["numvfs_path"], "2")
    vf, spare = pci.read_device(hpre["bdf"], lab.sys).virtfns[:2]
    host_state.remember_device(vf)
    vm = vms.boot(VMSpec("hpre-vf", devices=[pci.hostdev_pci(vf)]))
    seen = {d.bdf: d for d in vm.guest.pci.devices()}.get(GUEST_BDF)
    assert seen and (seen.vendor, seen.device) == (pci.HPRE_VENDOR, pci.HPRE_VF) and seen.driver != "-"
    r = lab.host.run("modprobe", "-r", "hisi_hpre", check=False)
    assert r.rc != 0, "the host driver unloaded while a VM uses its VF"
    assert "in use" in r.stderr, f"modprobe -r hisi_hpre failed, but not because the module is in use: {r.stderr}"
    host_state.remember_device(spare)
    with pytest.raises(AttachRefused) as refused:
        vm.attach(pci.hostdev_pci(spare, guest_address=None), live=True)
    assert spare in str(refused.value) or "hot" in str(refused.value).lower(), \
        f"the live attach of VF {spare} was refused for another reason than hot-swapping it: {refused.value}"
    vms.release(vm)
    # control: the VF the live attach was refused is itself usable, given to a VM at boot
    cold = vms.boot(VMSpec("hpre-vf-cold", devices=[pci.hostdev_pci(spare)]))
    seen = {d.bdf: d for d in cold.guest.pci.devices()}.get(GUEST_BDF)
    assert seen and (seen.vendor, seen.device) == (pci.HPRE_VENDOR, pci.HPRE_VF), \
        f"VF {spare}, refused live, is not usable at boot either: guest {GUEST_BDF} is {seen}"
