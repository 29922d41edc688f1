"""USB: controller and device XML, the host's USB inventory (only devices the
lab config lists are ever passed through), and what the guest's USB tree shows."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import xml as X
from .config import UsbDevice
from .guest.probes import Finds
from .timeouts import Deadline, poll
from .errors import LabError

# PCI IDs of the host controllers QEMU emulates for libvirt's models
CONTROLLER_PCI_IDS = {
    "piix3-uhci": ("0x8086", "0x7020"),
    "ehci": ("0x8086", "0x24cd"),
    "nec-xhci": ("0x1033", "0x0194"),
    "qemu-xhci": ("0x1b36", "0x000d"),
}
HCD_KIND = {"uhci_hcd": "UHCI", "ehci-pci": "EHCI", "ehci_hcd": "EHCI", "xhci_hcd": "xHCI", "ohci-pci": "OHCI"}
DOCUMENTED_PORTS = {"UHCI": 2, "EHCI": 6, "xHCI": 8}
HCD_MODULE = {"UHCI": "uhci_hcd", "EHCI": "ehci_pci", "xHCI": "xhci_pci"}


# ------------------------------------------------------------------ XML

def guide_controllers() -> list:
    """The guide's order: USB 1.1, USB 2.0, USB 3.0, indexes 0, 1, 2."""
    return [X.usb_controller("piix3-uhci", 0), X.usb_controller("ehci", 1), X.usb_controller("nec-xhci", 2)]


def usb_address(bus: int, port: str | int) -> dict:
    return {"type": "usb", "bus": bus, "port": port}


def tablet(address: dict | None = None):
    t = X.el("input", {"type": "tablet", "bus": "usb"})
    if address:
        t.append(X.el("address", address))
    return t


def hostdev(vendor: str | None = None, product: str | None = None, bus: int | None = None,
            device: int | None = None, guest_address: dict | None = None):
    """`<hostdev mode='subsystem' type='usb' managed='yes'>` by host bus/device
    (the guide's form) or by vendor/product."""
    src = X.el("source")
    if vendor and product:
        src.append(X.el("vendor", {"id": f"0x{vendor}"}))
        src.append(X.el("product", {"id": f"0x{product}"}))
    if bus is not None and device is not None:
        src.append(X.el("address", {"bus": bus, "device": device}))
    h = X.el("hostdev", {"mode": "subsystem", "type": "usb", "managed": "yes"}, src)
    if guest_address:
        h.append(X.el("address", guest_address))
    return h


# ------------------------------------------------------------------ host inventory

@dataclass(frozen=True)
class HostUsb:
    bus: int
    device: int
    vendor: str
    product: str
    description: str = ""

    @property
    def is_root_hub(self) -> bool:
        return self.vendor == "1d6b"


LSUSB_RE = re.compile(r"Bus (\d{3}) Device (\d{3}): ID ([0-9a-f]{4}):([0-9a-f]{4}) ?(.*?)(?=\s*Bus \d{3} Device|\s*$)")


def parse_lsusb(text: str) -> list[HostUsb]:
    """`lsusb` output (one device a line, or run together as in the guide)."""
    return [HostUsb(int(b), int(d), v, p, desc.strip()) for b, d, v, p, desc in LSUSB_RE.findall(text)]


def host_devices_sysfs(root) -> list[HostUsb]:
    out = []
    if not root.exists():
        return out
    for d in sorted(root.iterdir()):
        if ":" in d.name or not (d / "idVendor").exists():
            continue
        rd = lambda f: (d / f).read_text().strip() if (d / f).exists() else ""   # noqa: E731
        out.append(HostUsb(int(rd("busnum")), int(rd("devnum")), rd("idVendor"), rd("idProduct"), rd("product")))
    return out


class InventoryError(LabError):
    pass


def resolve(listed: UsbDevice, present: list[HostUsb]) -> HostUsb:
    """The one host device a lab-config entry names; never anything unlisted."""
    found = [h for h in present if (h.vendor, h.product) == (listed.vendor, listed.product)
             and (listed.bus is None or h.bus == listed.bus) and (listed.device is None or h.device == listed.device)]
    if not found:
        raise InventoryError(f"lab USB device {listed.vendor}:{listed.product} ({listed.note or 'no note'}) "
                             "is not attached to the host")
    if len(found) > 1:
        raise InventoryError(f"lab USB device {listed.vendor}:{listed.product} matches {len(found)} host devices; "
                             "add bus and device to its [inventory] entry")
    return found[0]


def usable(inventory: tuple, present: list[HostUsb]) -> list[HostUsb]:
    """Host devices the harness may use: listed in the config, present, not a root hub."""
    out = []
    for listed in inventory:
        h = resolve(listed, present)
        if h.is_root_hub:
            raise InventoryError(f"{h.vendor}:{h.product} is a root hub; it cannot be passed through")
        out.append(h)
    return out


# ------------------------------------------------------------------ the guest's USB tree

GUEST_USB_SCRIPT = r"""
for d in /sys/bus/usb/devices/*; do
  case "${d##*/}" in *:*) continue;; esac
  [ -f "$d/idVendor" ] || continue
  hcd=-; pci=-
  if [ -e "$d/../driver" ]; then hcd=$(basename "$(readlink "$d/../driver")"); pci=$(basename "$(readlink -f "$d/..")"); fi
  echo "${d##*/} $(cat "$d/busnum") $(cat "$d/devpath") $(cat "$d/idVendor") $(cat "$d/idProduct") $(cat "$d/speed") $(cat "$d/maxchild" 2>/dev/null || echo 0) $hcd $pci"
done
"""


@dataclass(frozen=True)
class GuestUsb:
    name: str            # usb1, 1-1, 2-1.3
    bus: int
    devpath: str         # "0" for a root hub, else the port path ("1", "1.3")
    vendor: str
    product: str
    speed: int           # Mb/s
    maxchild: int
    hcd: str             # root hubs only: the host controller's driver
    pci: str             # root hubs only: the controller's PCI address

    @property
    def is_root_hub(self) -> bool:
        return self.devpath == "0"

    @property
    def kind(self) -> str:
        return HCD_KIND.get(self.hcd, self.hcd)


def parse_guest_usb(text: str) -> list[GuestUsb]:
    out = []
    for line in text.strip().splitlines():
        name, bus, devpath, vendor, product, speed, maxchild, hcd, pci = line.split()
        out.append(GuestUsb(name, int(bus), devpath, vendor, product, int(float(speed)), int(maxchild), hcd, pci))
    return out


class UsbProbe(Finds):
    what = "USB device"

    def __init__(self, guest):
        self.guest = guest

    def tree(self) -> list[GuestUsb]:
        return parse_guest_usb(self.guest.check_output(GUEST_USB_SCRIPT))

    def root_hubs(self) -> list[GuestUsb]:
        return [d for d in self.tree() if d.is_root_hub]

    def ports_by_kind(self) -> dict[str, int]:
        """Controller kind -> total root-hub ports (an xHCI has a USB 2 and a USB 3 hub)."""
        out: dict[str, int] = {}
        for h in self.root_hubs():
            out[h.kind] = out.get(h.kind, 0) + h.maxchild
        return out

    # Loaded, loadable (udev images load a driver on demand: load it now) or built in.
    _DRIVER = (r'test -d /sys/module/$1 && exit 0; '
               r'grep -q "/$2.ko" /lib/modules/$(uname -r)/modules.builtin 2>/dev/null && exit 0; '
               r'modprobe -q $1 2>/dev/null && test -d /sys/module/$1 && exit 10; exit 1')

    def driver_missing(self, kinds=("UHCI", "EHCI", "xHCI"), seconds: float = 15) -> dict[str, str]:
        """Controller kinds the guest kernel has no driver for at all (then it cannot show
        them).  A driver that is only not loaded yet is loaded, and its root hubs awaited."""
        out, loaded = {}, []
        for kind in kinds:
            mod = HCD_MODULE[kind]
            r = self.guest.run("sh -c %s sh %s %s", self._DRIVER, mod, mod.replace("_", "-"), check=False)
            if r.rc == 10:
                loaded.append(kind)
            elif r.rc != 0:
                out[kind] = (f"the guest kernel ({self.guest.check_output('uname -rm').strip()}) has no {mod} driver "
                             f"(not loaded, not built in, and modprobe {mod} finds none)")
        if loaded:      # just loaded: its root hubs come up asynchronously (the test judges what it sees)
            try:
                poll(lambda: set(loaded) <= {h.kind for h in self.root_hubs()},
                     Deadline(seconds, f"root hubs of the {', '.join(loaded)} driver(s) just loaded"), interval=0.3)
            except TimeoutError:
                pass
        return out

    def find(self, vendor: str, product: str) -> GuestUsb | None:
        return next((d for d in self.tree() if (d.vendor, d.product) == (vendor, product) and not d.is_root_hub), None)

    def controller_of(self, dev: GuestUsb) -> GuestUsb:
        return next(h for h in self.root_hubs() if h.bus == dev.bus)
