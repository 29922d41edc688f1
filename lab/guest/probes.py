"""In-guest probes (pytest-testinfra's lazy modules): read sysfs and the real
lspci inside the guest and return plain data."""
from __future__ import annotations

import re
from dataclasses import dataclass

BDF_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
EXPRESS_RE = re.compile(r"Capabilities: \[[0-9a-f]+\] Express \(v\d\) (.+?)(?: \(Slot[+-]\))?, ")

PCI_SCRIPT = r"""
for d in /sys/bus/pci/devices/*; do
  drv=-; [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
  echo "$(basename "$d") $(cat "$d/class") $(cat "$d/vendor") $(cat "$d/device") $drv $(readlink -f "$d")"
done
"""


@dataclass(frozen=True)
class PciDev:
    bdf: str
    pci_class: str          # e.g. 0x060400
    vendor: str             # e.g. 0x1b36
    device: str
    driver: str
    path: tuple             # BDFs from the root bus down to this device
    express: str = ""       # PCIe capability type as lspci names it ("Root Port", ...)

    @property
    def parent(self) -> str | None:
        return self.path[-2] if len(self.path) > 1 else None

    @property
    def is_bridge(self) -> bool:
        return self.pci_class.startswith("0x0604")

    @property
    def is_root_port(self) -> bool:
        return self.is_bridge and self.express == "Root Port"

    @property
    def is_pcie_to_pci_bridge(self) -> bool:
        return self.is_bridge and self.express == "PCI-Express to PCI/PCI-X Bridge"


def parse_pci(sysfs_lines: str, lspci_vv: str) -> list[PciDev]:
    express = {}
    for block in lspci_vv.strip().split("\n\n"):
        head = block.split(" ", 1)[0]
        m = EXPRESS_RE.search(block)
        if BDF_RE.match(head) and m:
            express[head] = m.group(1).strip()
    out = []
    for line in sysfs_lines.strip().splitlines():
        bdf, cls, vendor, device, drv, real = line.split(" ", 5)
        path = tuple(p for p in real.split("/") if BDF_RE.match(p))
        out.append(PciDev(bdf, cls, vendor, device, drv, path, express.get(bdf, "")))
    return out


def pci_path_of(sysfs_path: str) -> tuple:
    return tuple(p for p in sysfs_path.split("/") if BDF_RE.match(p))


class PciProbe:
    def __init__(self, guest):
        self.guest = guest

    def devices(self) -> list[PciDev]:
        sysfs = self.guest.check_output(PCI_SCRIPT)
        vv = self.guest.check_output("lspci -D -vv")
        return parse_pci(sysfs, vv)

    def root_ports(self) -> list[PciDev]:
        return [d for d in self.devices() if d.is_root_port]


class BlockProbe:
    def __init__(self, guest):
        self.guest = guest

    def by_serial(self) -> dict[str, str]:
        """serial -> kernel name, for every virtio-blk disk the guest sees."""
        out = self.guest.check_output(
            'for b in /sys/block/*; do [ -f "$b/serial" ] && echo "$(cat "$b/serial") ${b##*/}"; done; true')
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def pci_path(self, name: str) -> tuple:
        return pci_path_of(self.guest.check_output("readlink -f /sys/block/%s/device", name).strip())


class NetProbe:
    def __init__(self, guest):
        self.guest = guest

    def by_mac(self) -> dict[str, str]:
        out = self.guest.check_output('for n in /sys/class/net/*; do echo "$(cat "$n/address") ${n##*/}"; done')
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def pci_path(self, ifname: str) -> tuple:
        return pci_path_of(self.guest.check_output("readlink -f /sys/class/net/%s/device", ifname).strip())
