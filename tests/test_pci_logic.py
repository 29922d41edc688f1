"""Host PCI discovery, passthrough safety and host-state restore on a
recorded sysfs tree (a PF with two VFs, a NIC sharing an IOMMU group, an HPRE)."""
import json

from tests.fakehost import FakeHost
import os
from pathlib import Path

import pytest

from lab import pci
from lab.hostexec import LocalHost


def make_dev(sys, bdf, vendor, device, cls, driver=None, group=None, totalvfs=0, numvfs=0, net=None):
    d = sys / "bus/pci/devices" / bdf
    d.mkdir(parents=True)
    for f, v in (("vendor", vendor), ("device", device), ("class", cls)):
        (d / f).write_text(v + "\n")
    if driver:
        (sys / "bus/pci/drivers" / driver).mkdir(parents=True, exist_ok=True)
        os.symlink(sys / "bus/pci/drivers" / driver, d / "driver")
    if group is not None:
        g = sys / "kernel/iommu_groups" / str(group)
        (g / "devices").mkdir(parents=True, exist_ok=True)
        os.symlink(d, g / "devices" / bdf)
        os.symlink(g, d / "iommu_group")
    if totalvfs:
        (d / "sriov_totalvfs").write_text(f"{totalvfs}\n")
        (d / "sriov_numvfs").write_text(f"{numvfs}\n")
    if net:
        (d / "net" / net).mkdir(parents=True)
    return d


@pytest.fixture
def sys_tree(tmp_path):
    s = tmp_path / "sys"
    make_dev(s, "0000:00:00.0", "0x8086", "0x29c0", "0x060000", group=0)
    pf = make_dev(s, "0000:03:00.0", "0x19e5", "0x1822", "0x020000", "hinic", 3, totalvfs=16, numvfs=2, net="eth0")
    for i, vf in enumerate(("0000:03:00.1", "0000:03:00.2")):
        v = make_dev(s, vf, "0x19e5", "0x375e", "0x020000", "hinicvf", 10 + i)
        os.symlink(pf, v / "physfn")
        os.symlink(v, pf / f"virtfn{i}")
    make_dev(s, "0000:04:10.0", "0x8086", "0x10fb", "0x020000", "ixgbe", 5, net="eth1")
    make_dev(s, "0000:04:10.1", "0x8086", "0x10fb", "0x020000", "ixgbe", 5, net="eth2")
    make_dev(s, "0000:04:00.0", "0x8086", "0x1234", "0x060400", "pcieport", 5)
    hp = make_dev(s, "0000:79:00.0", "0x19e5", "0xa258", "0x100000", "hisi_hpre", 7, totalvfs=63)
    (s / "class/uacce/hisi_hpre-0").mkdir(parents=True)
    os.symlink(hp, s / "class/uacce/hisi_hpre-0/device")
    return s


def test_discovery_reads_sriov_links_both_ways(sys_tree):
    devs = {d.bdf: d for d in pci.discover(sys_tree)}
    pf = devs["0000:03:00.0"]
    assert pf.is_pf and pf.totalvfs == 16 and pf.numvfs == 2 and pf.netdevs == ("eth0",)
    assert pf.virtfns == ("0000:03:00.1", "0000:03:00.2")
    assert devs["0000:03:00.2"].physfn == "0000:03:00.0" and devs["0000:03:00.2"].is_vf
    assert devs["0000:03:00.1"].driver == "hinicvf" and devs["0000:03:00.1"].iommu_group == 10


def test_hpre_is_found_through_uacce(sys_tree):
    h = pci.hpre_devices(sys_tree)
    assert h == [{"name": "hisi_hpre-0", "bdf": "0000:79:00.0",
                  "numvfs_path": str(sys_tree / "class/uacce/hisi_hpre-0/device/sriov_numvfs"),
                  "vendor": pci.HPRE_VENDOR, "device": pci.HPRE_PF}]


def test_unlisted_or_group_sharing_devices_are_refused(sys_tree):
    with pytest.raises(pci.UnsafeDevice, match="not listed"):
        pci.check_passthrough_safe("0000:04:10.0", set(), sys_tree)
    with pytest.raises(pci.UnsafeDevice, match="shares IOMMU group 5 with unlisted 0000:04:10.1"):
        pci.check_passthrough_safe("0000:04:10.0", {"0000:04:10.0"}, sys_tree)
    ok = pci.check_passthrough_safe("0000:04:10.0", {"0000:04:10.0", "0000:04:10.1"}, sys_tree)
    assert ok.driver == "ixgbe", "the group's bridge does not block it"
    assert pci.check_passthrough_safe("0000:03:00.1", {"0000:03:00.1"}, sys_tree).is_vf


def test_config_snippet_is_valid_lab_config(sys_tree, tmp_path):
    from lab import config
    snippet = pci.config_snippet(pci.discover(sys_tree), pci.hpre_devices(sys_tree))
    p = tmp_path / "lab.toml"
    p.write_text('[host]\nname = "x"\nlibvirt_uri = "qemu:///system"\n' + snippet + "\n")
    inv = config.load(p).inventory
    assert {d.bdf for d in inv.sriov_pfs} == {"0000:03:00.0", "0000:79:00.0"}
    assert "0000:03:00.1" not in {d.bdf for d in inv.pci}, "VFs are not offered as plain PCI devices"


def test_host_state_is_restored(sys_tree):
    writes = []

    def writer(path, value):
        writes.append((str(path).replace(str(sys_tree), ""), value))
        if str(path).endswith("sriov_numvfs"):
            Path(path).write_text(value + "\n")

    vfinfo = [{"vf": 0, "address": "90:e2:ba:21:00:01", "vlan_list": [{"vlan": 0}], "rate": {"max_tx": 0}}]

    def answer(argv, input):
        return 0, json.dumps([{"ifname": "eth0", "vfinfo_list": vfinfo}]) if argv[:3] == ["ip", "-j", "link"] else ""

    st = pci.HostState(sys_tree, writer=writer, host=FakeHost(answer))
    st.set_numvfs("0000:03:00.0", 4)
    assert writes == [("/bus/pci/devices/0000:03:00.0/sriov_numvfs", "0"),
                      ("/bus/pci/devices/0000:03:00.0/sriov_numvfs", "4")]
    writes.clear()
    done = st.restore()
    assert ("/bus/pci/devices/0000:03:00.0/sriov_numvfs", "2") in writes
    assert "restored sriov_numvfs=2 on 0000:03:00.0" in done and "restored VF settings of eth0" in done


def test_saved_host_state_survives_the_process(sys_tree, tmp_path):
    saved = tmp_path / "host-state-1.json"
    from lab.hostexec import LabPath
    st = pci.HostState(sys_tree, writer=lambda p, v: None, save_to=LabPath(str(saved)), host=LocalHost())
    st.remember_device("0000:04:10.0")
    rec = json.loads(saved.read_text())
    assert rec["drivers"] == {"0000:04:10.0": "ixgbe"}
    st.restore()                        # put back (nothing changed): the saved record goes with it
    assert not saved.exists()


IP_LINK_PF = """\
4: enp0s2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc mq state UP mode DEFAULT group default qlen 1000
    link/ether 52:54:00:12:34:56 brd ff:ff:ff:ff:ff:ff
    vf 0     link/ether 52:54:00:aa:bb:01 brd ff:ff:ff:ff:ff:ff, tx rate 1000 (Mbps), max_tx_rate 1000Mbps, spoof checking on, link-state auto, trust off
    vf 1     link/ether 52:54:00:aa:bb:02 brd ff:ff:ff:ff:ff:ff, vlan 10, spoof checking on, link-state auto, trust off
    vf 2     link/ether 52:54:00:aa:bb:03 brd ff:ff:ff:ff:ff:ff, vlan 1, qos 2, max_tx_rate 100Mbps, spoof checking on, link-state auto
    vf 3     MAC 52:54:00:aa:bb:04, vlan 100, tx rate 100 (Mbps), spoof checking on, link-state auto
"""


def test_vf_lines_are_parsed_one_by_one_with_whole_numbers():
    from lab.pci import parse_vf_links
    vfs = parse_vf_links(IP_LINK_PF)
    assert sorted(vfs) == [0, 1, 2, 3]
    assert vfs[0].mac == "52:54:00:aa:bb:01" and vfs[0].rate == 1000 and vfs[0].vlan is None
    assert vfs[1].vlan == 10 and vfs[1].rate is None, "vlan 10 is not vlan 1; no rate is no rate"
    assert vfs[2].vlan == 1 and vfs[2].max_tx_rate == 100
    assert vfs[3].mac == "52:54:00:aa:bb:04" and vfs[3].vlan == 100 and vfs[3].tx_rate == 100, "the older form"
    assert parse_vf_links("4: eth0: <UP>\n    link/ether 52:54:00:12:34:56 brd ff:ff:ff:ff:ff:ff\n") == {}


def test_a_rom_bar_is_seen_by_its_sysfs_file(sys_tree):
    (sys_tree / "bus/pci/devices/0000:04:10.0/rom").write_bytes(b"")
    assert pci.read_device("0000:04:10.0", sys_tree).has_rom
    assert not pci.read_device("0000:04:10.1", sys_tree).has_rom
