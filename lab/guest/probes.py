"""In-guest probes (pytest-testinfra's lazy modules): read sysfs and the real
lspci inside the guest and return plain data."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..timeouts import Deadline, poll

ROOT_SERIAL = "acc-root"      # the serial of every harness guest's system disk
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


class Finds:
    """wait_for / wait_gone for a probe that can `find(*key)` one device in the guest."""
    what = "device"

    def wait_for(self, *key: str, seconds: float = 30):
        """The device once the guest shows it."""
        return poll(lambda: self.find(*key), Deadline(seconds, f"the guest to show {self.what} {':'.join(key)}"),
                    interval=0.3)

    def wait_gone(self, *key: str, seconds: float = 30) -> None:
        poll(lambda: self.find(*key) is None, Deadline(seconds, f"{self.what} {':'.join(key)} to leave the guest"),
             interval=0.3)


class PciProbe:
    def __init__(self, guest):
        self.guest = guest

    def devices(self) -> list[PciDev]:
        sysfs = self.guest.check_output(PCI_SCRIPT)
        vv = self.guest.check_output("lspci -D -vv")
        return parse_pci(sysfs, vv)

    def root_ports(self) -> list[PciDev]:
        return [d for d in self.devices() if d.is_root_port]

    def buses(self) -> list[int]:
        """The PCI bus numbers of domain 0000 the guest kernel enumerated (/sys/class/pci_bus)."""
        names = self.guest.check_output("ls /sys/class/pci_bus").split()
        return sorted(int(n.split(":")[1], 16) for n in names if n.startswith("0000:"))


BLOCK_SCRIPT = r"""
for b in /sys/block/*; do
  n=${b##*/}; ser=-; hctl=-
  [ -f "$b/serial" ] && ser=$(cat "$b/serial")
  if [ -f "$b/device/vpd_pg80" ]; then
    ser=$(dd if="$b/device/vpd_pg80" bs=1 skip=4 2>/dev/null | tr -d '\000 ')
    hctl=$(basename "$(readlink -f "$b/device")")
  fi
  echo "$n ${ser:--} $hctl $(cat "$b/size") $(readlink -f "$b/device" 2>/dev/null || echo -)"
done
"""


@dataclass(frozen=True)
class GuestDisk:
    name: str               # kernel name: vda, sdaa, ...
    serial: str | None
    hctl: str | None        # SCSI host:channel:target:lun
    sectors: int
    sysfs: str

    @property
    def pci_path(self) -> tuple:
        return pci_path_of(self.sysfs)

    @property
    def target_lun(self) -> tuple[int, int, int] | None:
        """(channel, target, lun); the host number depends on probe order."""
        if not self.hctl:
            return None
        _, c, t, l = (int(x) for x in self.hctl.split(":"))
        return c, t, l


def parse_block(text: str) -> list[GuestDisk]:
    out = []
    for line in text.strip().splitlines():
        name, ser, hctl, size, path = line.split(" ", 4)
        if name.startswith(("loop", "ram")):
            continue
        out.append(GuestDisk(name, None if ser == "-" else ser, None if hctl == "-" else hctl, int(size), path))
    return out


class BlockProbe(Finds):
    what = "disk"

    def __init__(self, guest):
        self.guest = guest

    def disks(self) -> list[GuestDisk]:
        return parse_block(self.guest.check_output(BLOCK_SCRIPT))

    def by_serial(self) -> dict[str, str]:
        """serial -> kernel name, for every disk the guest sees (virtio-blk and SCSI)."""
        return {d.serial: d.name for d in self.disks() if d.serial}

    def find(self, serial: str) -> GuestDisk | None:
        return next((d for d in self.disks() if d.serial == serial), None)

    def pci_path(self, name: str) -> tuple:
        return pci_path_of(self.guest.check_output("readlink -f /sys/block/%s/device", name).strip())

    def scsi_inquiry(self, name: str) -> tuple[str, str]:
        """(vendor, model) of SCSI disk `name` as its INQUIRY answered ("LIO-ORG" for a
        Linux LIO target)."""
        out = self.guest.check_output("cat /sys/block/%s/device/vendor /sys/block/%s/device/model", name, name)
        lines = [x.strip() for x in out.splitlines()]
        return (lines + ["", ""])[0], (lines + ["", ""])[1]

    def write_and_verify(self, name: str, mib: int = 4, seek_mib: int = 0) -> str:
        """Write a random pattern with direct I/O, flush, drop caches, read it back;
        returns the pattern's sha256 (raises if the read-back differs)."""
        if any(d.name == name and d.serial == ROOT_SERIAL for d in self.disks()):
            raise ValueError(f"/dev/{name} is the guest's system disk; refusing to overwrite it")
        out = self.guest.check_output(
            "set -e; dd if=/dev/urandom of=/tmp/pattern bs=1M count=%s 2>/dev/null; "
            "sha256sum /tmp/pattern; "
            "dd if=/tmp/pattern of=/dev/%s bs=1M seek=%s oflag=direct conv=fsync 2>/dev/null; "
            "sync; echo 3 > /proc/sys/vm/drop_caches; "
            "dd if=/dev/%s bs=1M skip=%s count=%s iflag=direct 2>/dev/null | sha256sum",
            mib, name, seek_mib, name, seek_mib, mib, timeout=120)
        written, read = (line.split()[0] for line in out.strip().splitlines())
        if written != read:
            raise AssertionError(f"/dev/{name}: read back {read}, wrote {written}")
        return written


NET_SCRIPT = r"""
for n in /sys/class/net/*; do
  i=${n##*/}; drv=-; [ -e "$n/device/driver" ] && drv=$(basename "$(readlink "$n/device/driver")")
  echo "$i $(cat "$n/address") $(cat "$n/operstate") $drv $(ls -d "$n"/queues/rx-* 2>/dev/null | wc -l) $(readlink -f "$n/device" 2>/dev/null || echo -)"
done
"""


@dataclass(frozen=True)
class GuestNic:
    name: str
    mac: str
    operstate: str
    driver: str          # the PCI/virtio device's driver ("virtio_net" lives on the virtio device)
    rx_queues: int
    sysfs: str


def parse_nics(text: str) -> list[GuestNic]:
    out = []
    for line in text.strip().splitlines():
        name, mac, state, drv, rxq, path = line.split(" ", 5)
        out.append(GuestNic(name, mac, state, drv, int(rxq), path))
    return out


def parse_channels(ethtool_l: str) -> dict[str, dict[str, int]]:
    """`ethtool -l` -> {"max": {...}, "current": {...}} with rx/tx/other/combined."""
    res, section = {"max": {}, "current": {}}, None
    for line in ethtool_l.splitlines():
        low = line.strip().lower()
        if low.startswith("pre-set maximums"):
            section = "max"
        elif low.startswith("current hardware settings"):
            section = "current"
        elif section and ":" in low:
            k, v = (x.strip() for x in low.split(":", 1))
            if k in ("rx", "tx", "other", "combined"):
                res[section][k] = int(v) if v.isdigit() else 0
    return res


class NetProbe(Finds):
    what = "NIC"

    def __init__(self, guest):
        self.guest = guest

    def nics(self) -> list[GuestNic]:
        return parse_nics(self.guest.check_output(NET_SCRIPT))

    def by_mac(self) -> dict[str, str]:
        return {n.mac: n.name for n in self.nics()}

    def find(self, mac: str) -> GuestNic | None:
        return next((n for n in self.nics() if n.mac == mac.lower()), None)

    def pci_path(self, ifname: str) -> tuple:
        return pci_path_of(self.guest.check_output("readlink -f /sys/class/net/%s/device", ifname).strip())

    def channels(self, ifname: str) -> dict[str, dict[str, int]]:
        return parse_channels(self.guest.check_output("ethtool -l %s", ifname))

    def send_to_link(self, ifname: str, count: int) -> int:
        """Send `count` ICMPv6 echo requests to the link's all-nodes group (ff02::1) from
        `ifname`: traffic that stays on the lab's isolated bridge.  Returns the NIC's
        tx_packets growth as the guest counts it."""
        stat = f"/sys/class/net/{ifname}/statistics/tx_packets"
        before = int(self.guest.check_output("cat %s", stat))
        self.guest.run("ping -6 -q -c %s -i 0.01 -w 30 ff02::1%%%s", str(count), ifname, timeout=60, check=False)
        return int(self.guest.check_output("cat %s", stat)) - before

    def virtqueue_pairs(self, ifname: str) -> int:
        """Queue pairs virtio_net set up for `ifname` (every pair the device offers, active or
        not): its receive virtqueues' interrupt vectors, virtioN-input.K in /proc/interrupts."""
        dev = self.guest.check_output("basename $(readlink -f /sys/class/net/%s/device)", ifname).strip()
        names = self.guest.check_output("cat /proc/interrupts").split()
        return len({n for n in names if re.fullmatch(rf"{re.escape(dev)}-input\.\d+", n)})

    def use_channels(self, ifname: str, combined: int) -> dict[str, dict[str, int]]:
        """Turn on `combined` queue pairs (`ethtool -L`), as a guest with fewer CPUs than
        queue pairs must; returns the channels read back."""
        self.guest.check_output("ethtool -L %s combined %s", ifname, str(combined))
        return self.channels(ifname)

    def link_local(self, ifname: str) -> str | None:
        """The interface's IPv6 link-local address once DAD finished (None before)."""
        out = self.guest.check_output("ip -6 addr show dev %s scope link", ifname)
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("inet6 fe80:") and "tentative" not in line:
                return line.split()[1].split("/")[0]
        return None
