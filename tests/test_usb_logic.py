"""USB inventory and XML logic on recorded lsusb output (the guide's sample)."""
from pathlib import Path

import pytest

from lab import usb
from lab.config import UsbDevice

DATA = Path(__file__).parent / "data"


def sample():
    return usb.parse_lsusb((DATA / "lsusb-guide-sample.txt").read_text())


def test_lsusb_sample_parses_all_devices():
    devs = sample()
    assert len(devs) == 13
    assert usb.HostUsb(5, 3, "136b", "0003", "STEC") in devs
    assert sum(d.is_root_hub for d in devs) == 8


def test_only_listed_devices_are_usable():
    devs = sample()
    got = usb.usable((UsbDevice(vendor="12d1", product="0003", note="USB key"),), devs)
    assert got == [usb.HostUsb(1, 3, "12d1", "0003", "Huawei Technologies Co., Ltd.")]


def test_ambiguous_entry_needs_bus_and_device():
    devs = sample()
    with pytest.raises(usb.InventoryError, match="matches 2 host devices"):
        usb.resolve(UsbDevice(vendor="0bda", product="5411"), devs)
    assert usb.resolve(UsbDevice(vendor="0bda", product="5411", bus=5, device=2), devs).bus == 5


def test_absent_and_root_hub_entries_are_refused():
    devs = sample()
    with pytest.raises(usb.InventoryError, match="is not attached"):
        usb.resolve(UsbDevice(vendor="0781", product="5567"), devs)
    with pytest.raises(usb.InventoryError, match="root hub"):
        usb.usable((UsbDevice(vendor="1d6b", product="0003", bus=8, device=1),), devs)


def test_hostdev_xml_follows_the_guide():
    h = usb.hostdev(bus=1, device=3, guest_address=usb.usb_address(2, 4))
    assert (h.get("mode"), h.get("type"), h.get("managed")) == ("subsystem", "usb", "yes")
    assert h.find("source/address").attrib == {"bus": "1", "device": "3"}
    assert h.find("address").attrib == {"type": "usb", "bus": "2", "port": "4"}
    v = usb.hostdev(vendor="12d1", product="0003")
    assert v.find("source/vendor").get("id") == "0x12d1" and v.find("source/product").get("id") == "0x0003"


def test_guide_controller_order_and_guest_tree_parse():
    assert [(c.get("index"), c.get("model")) for c in usb.guide_controllers()] == [
        ("0", "piix3-uhci"), ("1", "ehci"), ("2", "nec-xhci")]
    tree = usb.parse_guest_usb(
        "usb3 3 0 1d6b 0002 480 4 xhci_hcd 0000:04:00.0\n"
        "usb4 4 0 1d6b 0003 5000 4 xhci_hcd 0000:04:00.0\n"
        "usb1 1 0 1d6b 0001 12 2 uhci_hcd 0000:02:01.0\n"
        "1-1 1 1 0627 0001 12 0 usb usb1\n")
    kinds = {}
    for h in tree:
        if h.is_root_hub:
            kinds[h.kind] = kinds.get(h.kind, 0) + h.maxchild
    assert kinds == {"xHCI": 8, "UHCI": 2}
    assert [d.name for d in tree if not d.is_root_hub] == ["1-1"]
