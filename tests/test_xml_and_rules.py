"""XML builders and the PCIe numbering rules, on recorded libvirt XML."""
import copy
from pathlib import Path

from lab import pcie
from lab import xml as X
from lab.arch import profile
from lab.guest.probes import parse_pci

DATA = Path(__file__).parent / "data"


def recorded():
    return X.parse((DATA / "pcie-10-ports.inactive.xml").read_text())


def test_simplified_topology_is_the_guides_form():
    els = X.simplified_pcie_topology(4, bridge=True)
    assert [(e.get("index"), e.get("model")) for e in els] == [
        ("0", "pcie-root"), ("1", "pcie-root-port"), ("2", "pcie-to-pci-bridge"),
        ("3", "pcie-root-port"), ("4", "pcie-root-port"), ("5", "pcie-root-port")]
    assert all(len(e) == 0 and set(e.attrib) == {"type", "index", "model"} for e in els)


def test_domain_builder_and_metadata_round_trip():
    meta = X.harness_metadata("r1", 42, "role", ["/var/lib/x"])
    dom = X.domain("acc-r1-role-1", virt_type="qemu", arch=profile("x86_64"), kernel="/k", initrd="/i",
                   cmdline="console=ttyS0", metadata=meta, devices=[X.serial_pty("/log"), X.console_pty()])
    back = X.parse(X.to_string(dom))
    assert back.get("type") == "qemu"
    assert back.find("os/type").get("machine") == "q35"
    assert back.find("features/acpi") is not None, "q35 hot-plug needs ACPI"
    tag = back.find(f"metadata/{{{X.META_NS}}}harness")
    assert (tag.get("run"), tag.get("pid"), tag.get("dir")) == ("r1", "42", "")
    assert back.find("devices/serial/log").get("file") == "/log"


def test_disk_builder():
    d = X.disk("/img", target="sdb", bus="scsi", serial="s1", cache="none", io="native",
               drive_address={"controller": 0, "bus": 0, "target": 1, "unit": 0})
    assert d.find("driver").attrib == {"name": "qemu", "type": "qcow2", "cache": "none", "io": "native"}
    assert d.find("address").get("target") == "1" and d.find("serial").text == "s1"


def test_recorded_fill_in_satisfies_the_rules():
    xml = recorded()
    assert pcie.fill_in_problems(xml) == []
    assert pcie.numbering_problems(xml) == []
    assert len(pcie.root_ports(xml)) == 10


def test_rules_catch_a_port_gap_and_a_missing_multifunction():
    xml = recorded()
    broken = copy.deepcopy(xml)
    rp = broken.findall("devices/controller[@model='pcie-root-port']")
    rp[3].find("target").set("port", "0x1f")
    rp[0].find("address").attrib.pop("multifunction")
    problems = pcie.numbering_problems(broken)
    assert any("not consecutive" in p for p in problems)
    assert any("lacks multifunction" in p for p in problems)


def test_rules_catch_a_half_empty_slot_before_the_next():
    xml = recorded()
    rp = xml.findall("devices/controller[@model='pcie-root-port']")
    rp[7].find("address").set("slot", "0x03")    # function 7 moved away: slot 1 not full
    rp[7].find("address").set("function", "0x0")
    assert any("next slot" in p or "not 0.." in p for p in pcie.numbering_problems(xml))


def test_fill_in_problems_name_the_controller():
    xml = recorded()
    xml.find("devices/controller[@index='3']/target").attrib.pop("chassis")
    assert pcie.fill_in_problems(xml) == ["root port 3 has no target chassis/port"]


def test_guest_pci_parse_on_recorded_guest():
    devs = parse_pci((DATA / "guest-pci-sysfs.txt").read_text(), (DATA / "guest-lspci-vv.txt").read_text())
    ports = [d for d in devs if d.is_root_port]
    bridges = [d for d in devs if d.is_pcie_to_pci_bridge]
    assert len(ports) == 10 and len(bridges) == 1
    assert bridges[0].parent == "0000:00:01.0"
    virtio = [d for d in devs if d.vendor == "0x1af4"]
    assert virtio and all(d.parent in {p.bdf for p in ports} for d in virtio)


def test_block_parse_maps_serials_and_scsi_addresses():
    from lab.guest.probes import parse_block
    text = ("vda acc-root - 2097152 /sys/devices/pci0000:00/0000:00:01.1/0000:02:00.0/virtio1\n"
            "sdaa acc-scsi-26 2:0:0:26 2048 /sys/devices/pci0000:00/0000:00:01.3/0000:04:00.0/virtio3/host2/target2:0:0/2:0:0:26\n"
            "loop0 - - 0 -\n")
    disks = parse_block(text)
    assert [d.name for d in disks] == ["vda", "sdaa"]
    assert disks[1].serial == "acc-scsi-26" and disks[1].target_lun == (0, 0, 26)
    assert disks[0].pci_path == ("0000:00:01.1", "0000:02:00.0") and disks[0].target_lun is None


def test_kernel_disk_names_past_26():
    from suites.test_disks import kernel_names
    names = kernel_names("sd", 28)
    assert names[:2] == ["sda", "sdb"] and names[25:] == ["sdz", "sdaa", "sdab"]


def test_network_and_block_disk_sources():
    nbd = X.disk("/run/nbd.sock", target="vdb", fmt="raw", kind="network")
    assert nbd.get("type") == "network" and nbd.find("source").get("protocol") == "nbd"
    assert nbd.find("source/host").attrib == {"transport": "unix", "socket": "/run/nbd.sock"}
    blk = X.disk("/dev/loop3", target="vdc", fmt="raw", kind="block")
    assert blk.find("source").get("dev") == "/dev/loop3"


def test_device_key_survives_libvirt_rerendering():
    from lab.domain import device_key
    a = X.disk("/img", target="sdb", bus="scsi", serial="s")
    b = X.parse('<disk type="file" device="disk"><driver name="qemu" type="qcow2"/><source file="/img" index="2"/>'
                '<target dev="sdb" bus="scsi"/><alias name="scsi0-0-0-1"/></disk>')
    assert device_key(a) == device_key(b)


def test_ready_marker_needs_the_whole_line():
    from lab.guest.login import READY_RE
    key = "AAAAC3NzaC1lZDI1NTE5AAAAIBl8MSLEs8fLBDKZvHqRqeRFUraq8kF/S2NwA6oEIRsk"
    line = f"ACC-READY boot_id=0a4c-7da4 mgmt_if=eth0 hostkey={key}\r\n"
    assert READY_RE.search(line).groups() == ("0a4c-7da4", key)
    assert READY_RE.search(line[:60]) is None, "a half-written marker line is not a ready guest"
