"""Managing Device Passthrough, SR-IOV Passthrough and the HPRE accelerator
(PCI-1..3, SRIOV-1..4, HPRE-1..3).  Only devices listed in the lab config are
touched; host state (drivers, VF counts, VF MAC/VLAN/rate) is recorded first
and restored on every exit path."""
import re
import secrets

import allure

import pytest

from fixtures.api import claims, deviation, measured
from lab import netns, pci
from lab.domain import AttachRefused, DomainError, VMSpec, random_mac
from lab.sweep import PREFIX
from lab.timeouts import Deadline, WaitTimeout, poll

@pytest.fixture
def host_state(lab):
    # Tests ask for host_state before vms: teardown runs in reverse, so their VMs are
    # gone (devices released) before the host state is put back.
    st = pci.HostState(save_to=lab.hdir / f"host-state-{secrets.token_hex(3)}.json", host=lab.host)
    lab.push_undo("restored host PCI state", st.restore)
    yield st
    lab.undo_now(st.restore)


def listed(lab, kind):
    return lab.hostside.listed_bdfs(kind)


def pf_link_up(lab, net):
    lab.hostside.net.link_up(net, Deadline(30, f"carrier on the PF's netdev {net}"))


# ------------------------------------------------------------------ PCI passthrough

GUEST_BDF = "0000:00:03.0"      # the guide's <address> for the assigned device


def guest_sees_rom(vm) -> bool:
    return vm.guest.run("test -e /sys/bus/pci/devices/%s/rom", GUEST_BDF, check=False).rc == 0


@claims("PCI-1")
def test_managed_vfio_passthrough(lab, host_state, vms):
    bdf = sorted(listed(lab, "pci"))[0]
    lab.lease_device("pci", bdf, wait_s=600)
    dev = lab.hostside.pci.check_passthrough_safe(bdf)
    host_state.remember_device(bdf)
    vm = vms.boot(VMSpec("pci-pass", devices=[pci.hostdev_pci(bdf)]))
    assert lab.hostside.pci.device(bdf).driver == "vfio-pci", "managed='yes' binds the device to vfio-pci while assigned"
    seen = {d.bdf: d for d in vm.guest.pci.devices()}.get(GUEST_BDF)
    assert seen and (seen.vendor, seen.device) == (dev.vendor, dev.device), \
        f"guest {GUEST_BDF} is {seen}, expected {dev.ids}"
    vms.release(vm)
    assert lab.hostside.pci.device(bdf).driver == dev.driver, "the host driver came back after the VM"


@claims("PCI-2")
def test_rom_bar_off_hides_the_devices_rom(lab, host_state, vms):
    """Only a device with an expansion ROM can show rom bar='off' doing anything: the
    same device shows its ROM in the guest without the setting (the control) and none
    with it."""
    with_rom = [b for b in sorted(listed(lab, "pci")) if lab.hostside.pci.device(b).has_rom]
    if not with_rom:
        pytest.skip("no PCI device in the lab config has an expansion ROM BAR (no sysfs rom file): "
                    "rom bar='off' would change nothing")
    bdf = with_rom[0]
    lab.lease_device("pci", bdf, wait_s=600)
    lab.hostside.pci.check_passthrough_safe(bdf)
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
    devs = [lab.hostside.pci.device(b) for b in sorted(listed(lab, "pci"))]
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
    group = lab.hostside.pci.device(mates[0]).iommu_group
    first = vms.boot(VMSpec("pci-group-a", devices=[pci.hostdev_pci(mates[0])]))
    second = vms.define(VMSpec("pci-group-b", devices=[pci.hostdev_pci(mates[1])]))
    with pytest.raises(DomainError) as refused:
        second.start(Deadline(60, "a second VM asking for a group-mate"))
    why = refused.value.reason
    # libvirt names the mate and the domain holding it; QEMU's VFIO names the busy group
    assert first.name in why or mates[0] in why or f"/dev/vfio/{group}" in why, \
        f"the second VM was refused, but not for IOMMU group {group} being held by {first.name}: {why}"
    assert first.domain.state()[0] == "running", "the VM holding the group stopped when a second VM asked for it"
    vms.release(first)            # control: with the group free (managed='yes' gave the first its host
    lab.nodedev_detach(mates[0])  # driver back: put it on vfio-pci again), the same second VM starts
    second.start(Deadline(120, "the second VM once the group is free"))
    seen = {d.bdf for d in second.guest.pci.devices()}
    assert GUEST_BDF in seen, f"the group-mate {mates[1]} is not at {GUEST_BDF} in the second VM: {sorted(seen)}"


# ------------------------------------------------------------------ SR-IOV

@pytest.fixture
def pf(lab, host_state):
    entry = lab.hostside.listed("sriov_pfs")[0]
    lab.lease_device("pf", entry.bdf, wait_s=600)
    dev = lab.hostside.pci.device(entry.bdf)
    if not dev.is_pf:
        raise pci.UnsafeDevice(f"{entry.bdf} is listed as an SR-IOV PF but has no sriov_totalvfs")
    host_state.remember_pf(entry.bdf)
    return dev


@claims("SRIOV-1", "SRIOV-2")
def test_numvfs_creates_and_removes_vfs_and_discovery_agrees(lab, pf, host_state):
    n = min(2, pf.totalvfs)
    host_state.set_numvfs(pf.bdf, n)
    now = lab.hostside.pci.device(pf.bdf)
    assert len(now.virtfns) == n and lab.hostside.pci.lspci_vfs(pf.bdf) == sorted(now.virtfns)
    for vf in now.virtfns:
        assert lab.hostside.pci.device(vf).physfn == pf.bdf
    assert now.netdevs, "the PF's netdev under .../net"
    host_state.set_numvfs(pf.bdf, 0)
    assert lab.hostside.pci.device(pf.bdf).virtfns == () and lab.hostside.pci.lspci_vfs(pf.bdf) == []


@claims("SRIOV-3")
def test_ip_link_sets_vf_mac_and_rate(lab, pf, host_state):
    host_state.set_numvfs(pf.bdf, max(1, pf.numvfs))
    net = pf.netdevs[0]
    mac = random_mac()
    pf_link_up(lab, net)
    vf = lab.hostside.pci.device(pf.bdf).virtfns[0]
    lab.hostside.net.set_vf(net, 0, mac=mac)
    lab.hostside.net.set_vf(net, 0, rate=100)
    links, shown = lab.hostside.net.vf_links(net)
    vf0 = links.get(0)
    assert vf0 is not None, f"ip link show {net} lists no vf 0: {shown}"
    assert (vf0.mac, vf0.rate) == (mac, 100), f"ip link show {net}: VF 0 has MAC {vf0.mac}, rate {vf0.rate} Mbps"
    # The VF itself, not only what the PF's driver echoes: its own driver, probed again, takes
    # the MAC the PF gave it (a VF driver reads its MAC from the PF at probe).
    if not lab.hostside.pci.device(vf).driver:
        pytest.skip(f"VF {vf} has no host driver on {lab.hostside.name} (capability: host VF driver, e.g. "
                    f"igbvf/iavf): its own MAC cannot be read on the host")
    host_state.reprobe(vf)
    vf_net = lab.hostside.pci.netdevs_of(vf, Deadline(30, f"VF {vf}'s netdev after a re-probe"))[0]
    own = lab.hostside.net.mac(vf_net)
    assert own == mac, f"VF {vf} ({vf_net}) has MAC {own} on its own netdev, not the {mac} set through the PF"


@claims("SRIOV-3")
def test_vf_rate_limits_the_vfs_own_traffic(lab, pf, host_state, request):
    """The rate set through the PF holds the VF's traffic to it, measured on the wire: VF 0
    and VF 1 of the PF, each in a network namespace the harness made, exchange a ping
    flood through the PF's switch, first unlimited (the control: fast enough to show a
    limit), then with VF 0's rate at a quarter of that (1 to 100 Mbit/s)."""
    if not lab.hostside.has_tool("ping"):
        raise netns.NetnsError(f"lab host {lab.hostside.name} has no ping to measure a VF's rate with; fix: install "
                               "iputils (openEuler) or iputils-ping (Debian) there")
    if pf.totalvfs < 2:
        pytest.skip(f"PF {pf.bdf} offers {pf.totalvfs} VF(s) (capability: two VFs to measure a VF's rate between)")
    host_state.set_numvfs(pf.bdf, max(2, pf.numvfs))
    net = pf.netdevs[0]
    pf_link_up(lab, net)
    vfs = lab.hostside.pci.device(pf.bdf).virtfns[:2]
    for vf in vfs:
        if not lab.hostside.pci.device(vf).driver:
            pytest.skip(f"VF {vf} has no host driver on {lab.hostside.name} (capability: host VF driver, e.g. igbvf/iavf): "
                        "its traffic cannot be measured on the host")
    nets = [lab.hostside.pci.netdevs_of(vf, Deadline(30, f"VF {vf}'s netdev"))[0] for vf in vfs]
    lab.hostside.net.set_vf(net, 0, rate=0)
    sender, receiver = (netns.NetNamespace(lab.host, f"{PREFIX}{lab.run_id}-vf{i}") for i in "ab")
    for ns, vf_net, addr in ((sender, nets[0], "169.254.77.1/24"), (receiver, nets[1], "169.254.77.2/24")):
        ns.create()
        lab.push_undo(f"removed network namespace {ns.name}", ns.remove)     # (also after a crash of the test)
        request.addfinalizer(lambda ns=ns: lab.undo_now(ns.remove))        # the VFs back before numvfs is restored
        ns.take(vf_net, addr)
    try:
        poll(lambda: sender.run("ping", "-c", "1", "-W", "1", "-I", nets[0], "169.254.77.2", check=False).ok,
             Deadline(20, "an echo between VF 0 and VF 1"), interval=0.5)
    except WaitTimeout:
        pytest.skip(f"no echo between VF 0 ({nets[0]}) and VF 1 ({nets[1]}) of {net} within 20 s (capability: "
                    "traffic between two VFs through the PF's switch)")
    free = netns.flood(sender, nets[0], "169.254.77.2", 3)
    rate = max(1, min(100, int(free.mbps / 4)))       # Mbit/s: ip link's unit, 1 the smallest
    measured(request, "SRIOV-3 VF 0 unlimited (Mbit/s)", round(free.mbps, 1), free.describe())
    if free.mbps < 3:
        pytest.skip(f"VF traffic on {lab.hostside.name} runs at {free.mbps:.1f} Mbit/s unlimited (capability: VF traffic "
                    "of 3 Mbit/s or more, to tell a limit of 1 Mbit/s from none)")
    lab.hostside.net.set_vf(net, 0, rate=rate)
    vf0 = lab.hostside.net.vf_links(net)[0].get(0)
    assert vf0 is not None and vf0.rate == rate, f"ip link show {net}: VF 0 has rate {vf0 and vf0.rate}, not {rate}"
    limited = netns.flood(sender, nets[0], "169.254.77.2", 3)
    measured(request, f"SRIOV-3 VF 0 at rate {rate} (Mbit/s)", round(limited.mbps, 1), limited.describe())
    if limited.mbps > rate * 1.3 + 0.5:
        deviation("SRIOV-3", f"VF 0 of {net} sent at {limited.mbps:.1f} Mbit/s with its rate set to {rate} Mbit/s "
                             f"({free.mbps:.1f} unlimited): the rate is accepted and shown but not enforced")


@claims("SRIOV-4")
def test_hostdev_interface_passes_a_vf_with_mac_and_vlan(lab, pf, host_state, vms):
    host_state.set_numvfs(pf.bdf, max(1, pf.numvfs))
    pf_link_up(lab, pf.netdevs[0])
    vf = lab.hostside.pci.device(pf.bdf).virtfns[0]
    host_state.remember_device(vf)
    mac = random_mac()
    vm = vms.boot(VMSpec("sriov-vf", devices=[pci.hostdev_interface(vf, mac, 1)]))
    vf_nic = lambda: next((n for n in vm.guest.net.nics() if n.driver not in ("-", "virtio_net")), None)  # noqa: E731
    nic = poll(vf_nic, Deadline(30, "a VF NIC (not virtio) in the guest"))
    assert nic.mac.lower() == mac, (
        f"the guest's VF NIC {nic.name} ({nic.driver}) has MAC {nic.mac}, not the configured {mac}; its driver said: "
        + vm.guest.run("dmesg | grep -i %s | tail -n 4", nic.driver, check=False).stdout.replace("\n", " | "))
    assert nic.driver not in ("-", "virtio_net"), f"the guest NIC {nic.name} is not the VF (driver {nic.driver})"
    links, shown = lab.hostside.net.vf_links(pf.netdevs[0])
    mine = [v for v in links.values() if v.mac == mac]
    assert len(mine) == 1, f"ip link show {pf.netdevs[0]}: {len(mine)} VF line(s) with MAC {mac}: {shown}"
    assert mine[0].vlan == 1, f"the host shows VLAN {mine[0].vlan} on VF {mine[0].vf}, not the configured 1"


# ------------------------------------------------------------------ HPRE

@pytest.fixture
def hpre(lab, host_state):
    bdf = lab.hostside.listed("hpre")[0].bdf
    lab.lease_device("hpre", bdf, wait_s=600)
    found = lab.hostside.pci.hpre(bdf)
    if found is None:
        raise pci.UnsafeDevice(f"lab HPRE {bdf} is not under /sys/class/uacce")
    host_state.remember_pf(bdf)
    return found


@claims("HPRE-1")
def test_hpre_ids_and_vf_limit(lab, hpre, host_state):
    assert (hpre["vendor"], hpre["device"]) == (pci.HPRE_VENDOR, pci.HPRE_PF)
    assert lab.hostside.pci.device(hpre["bdf"]).totalvfs == pci.HPRE_MAX_VFS
    host_state.set_numvfs(hpre["bdf"], 2, path=hpre["numvfs_path"])      # through the uacce path
    vfs = lab.hostside.pci.device(hpre["bdf"]).virtfns
    assert len(vfs) == 2 and all(lab.hostside.pci.device(v).device == pci.HPRE_VF for v in vfs)
    host_state.set_numvfs(hpre["bdf"], pci.HPRE_MAX_VFS, path=hpre["numvfs_path"])   # control: the limit itself
    assert len(lab.hostside.pci.device(hpre["bdf"]).virtfns) == pci.HPRE_MAX_VFS
    host_state.set_numvfs(hpre["bdf"], 0, path=hpre["numvfs_path"])
    with pytest.raises(OSError):
        host_state.writer(hpre["numvfs_path"], str(pci.HPRE_MAX_VFS + 1))
    assert lab.hostside.pci.device(hpre["bdf"]).virtfns == (), "a refused VF count still made VFs"


def guest_hpre_usable(vm) -> str:
    """The guest's hisi_hpre driver took the VF and registered its algorithms with the
    kernel's crypto API, whose self-tests ran them on the device ('selftest : passed').
    Skips, naming the capability, when the guest image has no hisi_hpre at all."""
    if vm.guest.run("test -d /sys/module/hisi_hpre || modprobe -q hisi_hpre", check=False).rc != 0:
        pytest.skip("the guest image has no hisi_hpre driver (capability: guest-hisi-hpre): "
                    "HPRE-2 needs a guest kernel with the accelerator's driver")
    crypto = vm.guest.check_output("cat /proc/crypto")
    blocks = [b for b in crypto.split("\n\n") if re.search(r"^driver\s*:\s*hpre-", b, re.M)]
    assert blocks, "the guest's hisi_hpre registered no algorithm with the crypto API (no hpre-* driver in /proc/crypto)"
    failed = [b for b in blocks if not re.search(r"^selftest\s*:\s*passed", b, re.M)]
    assert not failed, f"the crypto self-tests failed on the VF: {failed[0]}"
    return ", ".join(sorted({re.search(r"^driver\s*:\s*(\S+)", b, re.M).group(1) for b in blocks}))


@claims("HPRE-2", "HPRE-3")
def test_hpre_vf_in_a_vm_is_usable_and_pins_the_host_driver(lab, hpre, host_state, vms):
    host_state.set_numvfs(hpre["bdf"], 2, path=hpre["numvfs_path"])
    vf, spare = lab.hostside.pci.device(hpre["bdf"]).virtfns[:2]
    host_state.remember_device(vf)
    # control for HPRE-3: who holds the host driver before a VM uses a VF
    idle = lab.hostside.modules.holders("hisi_hpre")
    vm = vms.boot(VMSpec("hpre-vf", devices=[pci.hostdev_pci(vf)]))
    seen = {d.bdf: d for d in vm.guest.pci.devices()}.get(GUEST_BDF)
    assert seen and (seen.vendor, seen.device) == (pci.HPRE_VENDOR, pci.HPRE_VF), f"guest {GUEST_BDF} is {seen}"
    allure.attach(guest_hpre_usable(vm), name="HPRE algorithms the guest ran on the VF",
                  attachment_type=allure.attachment_type.TEXT)
    seen = {d.bdf: d for d in vm.guest.pci.devices()}.get(GUEST_BDF)
    assert seen.driver != "-", f"no guest driver bound the VF at {GUEST_BDF}"
    busy = lab.hostside.modules.holders("hisi_hpre")
    if idle[0] > 0 and busy[0] <= idle[0]:
        pytest.skip(f"hisi_hpre is held on the lab host without any VM (refcnt {idle[0]}, holders {idle[1]}): "
                    f"an unload refusal would not show the VM's hold (capability: hpre-driver-unloadable)")
    refused = lab.hostside.modules.unload("hisi_hpre")
    assert refused is not None, "the host driver unloaded while a VM uses its VF"
    assert "in use" in refused.stderr, \
        f"modprobe -r hisi_hpre failed, but not because the module is in use: {refused.stderr}"
    host_state.remember_device(spare)
    with pytest.raises(AttachRefused) as refused:
        vm.domain.attach(pci.hostdev_pci(spare, guest_address=None), live=True)
    assert spare in str(refused.value) or "hot" in str(refused.value).lower(), \
        f"the live attach of VF {spare} was refused for another reason than hot-swapping it: {refused.value}"
    vms.release(vm)
    # control: the VF the live attach was refused is itself usable, given to a VM at boot
    cold = vms.boot(VMSpec("hpre-vf-cold", devices=[pci.hostdev_pci(spare)]))
    seen = {d.bdf: d for d in cold.guest.pci.devices()}.get(GUEST_BDF)
    assert seen and (seen.vendor, seen.device) == (pci.HPRE_VENDOR, pci.HPRE_VF), \
        f"VF {spare}, refused live, is not usable at boot either: guest {GUEST_BDF} is {seen}"
