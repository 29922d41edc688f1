"""The lab host's verbs for the suites (lab/hostside.py) on a recorded sysfs tree and a
recording host: what runs on the lab host, and what a refusal becomes."""
from types import SimpleNamespace

import pytest

from lab.hostside import HostRefused, HostSide
from tests.fakehost import FakeHost
from tests.test_pci_logic import sys_tree  # noqa: F401  (fixture)

LSPCI = """0000:00:00.0 Host bridge: Intel Corporation 82G33/G31/P35/P31 Express DRAM Controller
0000:03:00.0 Ethernet controller: Huawei Technologies Co., Ltd. Hi1822 Family
0000:03:00.1 Ethernet controller: Huawei Technologies Co., Ltd. Hi1822 Family Virtual Function
0000:03:00.2 Ethernet controller: Huawei Technologies Co., Ltd. Hi1822 Family Virtual Function
0000:04:10.1 Ethernet controller: Intel Corporation 82599 Virtual Function
"""
IP_LINK = """4: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc mq state UP mode DEFAULT group default qlen 1000
    link/ether 52:54:00:12:34:56 brd ff:ff:ff:ff:ff:ff
    vf 0     link/ether 52:54:00:aa:bb:01 brd ff:ff:ff:ff:ff:ff, vlan 1, spoof checking on, link-state auto
    vf 1     link/ether 00:00:00:00:00:00 brd ff:ff:ff:ff:ff:ff, tx rate 100 (Mbps), max_tx_rate 100Mbps
"""


def side(sys_tree, handler):
    inv = SimpleNamespace(pci=[SimpleNamespace(bdf="0000:04:10.0")], sriov_pfs=[SimpleNamespace(bdf="0000:03:00.0")],
                          hpre=[], usb=[])
    h = FakeHost(handler, name="lab1")
    return HostSide(h, sys_tree, SimpleNamespace(name="lab1", inventory=inv, fault_backend="auto")), h


def test_pci_verbs_read_sysfs_and_lspci_of_the_pfs_bus(sys_tree):
    s, h = side(sys_tree, lambda argv, input: (0, LSPCI))
    assert s.pci.device("0000:03:00.0").virtfns == ("0000:03:00.1", "0000:03:00.2")
    assert s.pci.lspci_vfs("0000:03:00.0") == ["0000:03:00.1", "0000:03:00.2"], "VFs of another bus are not the PF's"
    assert s.pci.hpre("0000:79:00.0")["name"] == "hisi_hpre-0" and s.pci.hpre("0000:79:00.9") is None
    assert s.listed_bdfs("sriov_pfs") == {"0000:03:00.0"} and s.listed("usb") == []


def test_set_vf_says_the_guides_command_and_a_refusal_fails_the_claim(sys_tree):
    s, h = side(sys_tree, lambda argv, input: (2, "", "RTNETLINK answers: Operation not supported")
                if "rate" in argv else (0, ""))
    s.net.set_vf("eth0", 0, mac="52:54:00:aa:bb:01")
    assert h.calls[-1][0] == ["ip", "link", "set", "eth0", "vf", "0", "mac", "52:54:00:aa:bb:01"]
    with pytest.raises(HostRefused, match=r"lab1 refused `ip link set eth0 vf 0 rate 100`: RTNETLINK answers"):
        s.net.set_vf("eth0", 0, rate=100)
    assert issubclass(HostRefused, AssertionError), "the host's refusal of a documented command is the claim's failure"


def test_vf_links_and_module_verbs(sys_tree):
    answers = {"ip": (0, IP_LINK), "modprobe": (1, "", "modprobe: FATAL: Module hisi_hpre is in use.")}
    s, h = side(sys_tree, lambda argv, input: answers[argv[0]])
    links, shown = s.net.vf_links("eth0")
    assert (links[0].mac, links[0].vlan, links[1].rate) == ("52:54:00:aa:bb:01", 1, 100) and shown == IP_LINK
    refused = s.modules.unload("hisi_hpre")
    assert refused is not None and "in use" in refused.stderr and refused.rc == 1
    answers["modprobe"] = (0, "")
    assert s.modules.unload("hisi_hpre") is None
