"""Host PCI discovery (read-only, from sysfs), SR-IOV and HPRE views, and the
safety rules for passthrough: only devices the lab config lists, never one
whose IOMMU group holds anything unlisted, and host state recorded before any
change and restored on every exit path."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import xml as X
from .errors import LabError

HPRE_VENDOR, HPRE_PF, HPRE_VF, HPRE_MAX_VFS = "0x19e5", "0xa258", "0xa259", 63


@dataclass(frozen=True)
class HostPci:
    bdf: str
    vendor: str
    device: str
    pci_class: str
    driver: str | None
    iommu_group: int | None
    totalvfs: int = 0
    numvfs: int = 0
    virtfns: tuple = ()          # VF BDFs, by VF index
    physfn: str | None = None
    netdevs: tuple = ()
    has_rom: bool = False        # an expansion ROM BAR (sysfs shows a `rom` file)

    @property
    def is_bridge(self) -> bool:
        return self.pci_class.startswith("0x0604") or self.pci_class.startswith("0x0600")

    @property
    def is_pf(self) -> bool:
        return self.totalvfs > 0

    @property
    def is_vf(self) -> bool:
        return self.physfn is not None

    @property
    def ids(self) -> str:
        return f"{self.vendor[2:]}:{self.device[2:]}"


def _read(p: Path, default: str = "") -> str:
    try:
        return p.read_text().strip()
    except OSError:
        return default


def read_device(bdf: str, sys) -> HostPci:
    d = sys / "bus/pci/devices" / bdf
    if not d.exists():
        raise LookupError(f"no PCI device {bdf} on this host")
    drv = (d / "driver").readlink().name if (d / "driver").is_symlink() else None
    grp = int((d / "iommu_group").readlink().name) if (d / "iommu_group").is_symlink() else None
    vfs = sorted(((int(l.name[len("virtfn"):]), l.readlink().name) for l in d.glob("virtfn*")))
    physfn = (d / "physfn").readlink().name if (d / "physfn").is_symlink() else None
    nets = tuple(sorted(p.name for p in (d / "net").iterdir())) if (d / "net").is_dir() else ()
    return HostPci(bdf, _read(d / "vendor"), _read(d / "device"), _read(d / "class"), drv, grp,
                   int(_read(d / "sriov_totalvfs", "0") or 0), int(_read(d / "sriov_numvfs", "0") or 0),
                   tuple(b for _, b in vfs), physfn, nets, (d / "rom").exists())


def discover(sys) -> list[HostPci]:
    root = sys / "bus/pci/devices"
    return [read_device(p.name, sys) for p in sorted(root.iterdir())] if root.exists() else []


def iommu_group_members(group: int, sys) -> list[str]:
    d = sys / "kernel/iommu_groups" / str(group) / "devices"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def hpre_devices(sys) -> list[dict]:
    """HPRE accelerators as uacce shows them: name, PF BDF, and its sriov_numvfs path."""
    out = []
    uacce = sys / "class/uacce"
    for q in sorted(uacce.glob("hisi_hpre-*")) if uacce.exists() else []:
        dev = q / "device"
        bdf = dev.resolve().name
        out.append({"name": q.name, "bdf": bdf, "numvfs_path": str(dev / "sriov_numvfs"),
                    "vendor": _read(dev / "vendor"), "device": _read(dev / "device")})
    return out


class UnsafeDevice(LabError):
    pass


def check_passthrough_safe(bdf: str, listed: set[str], sys) -> HostPci:
    """Refuse a device that is not listed, or whose IOMMU group holds an unlisted
    endpoint (binding the group to VFIO would take the host's own device away)."""
    if bdf not in listed:
        raise UnsafeDevice(f"{bdf} is not listed in the lab config's [inventory]; the harness never touches it")
    dev = read_device(bdf, sys)
    if dev.iommu_group is None:
        raise UnsafeDevice(f"{bdf} has no IOMMU group (IOMMU off?): VFIO passthrough is impossible")
    for other in iommu_group_members(dev.iommu_group, sys):
        if other == bdf or other in listed:
            continue
        if read_device(other, sys).is_bridge:
            continue
        raise UnsafeDevice(f"{bdf} shares IOMMU group {dev.iommu_group} with unlisted {other}; "
                           "list it too (it goes to the VM with it) or pick another device")
    return dev


def config_snippet(devs: list[HostPci], hpre: list[dict]) -> str:
    """A paste-able [inventory] for the lab config (the engineer decides what to keep)."""
    pfs = [d for d in devs if d.is_pf]
    candidates = [d for d in devs if not d.is_bridge and not d.is_vf and d.iommu_group is not None]
    lines = ["[inventory]", "# every device below is a candidate: keep only what the harness may take from the host"]
    lines.append("pci = [" + ", ".join(f'{{ bdf = "{d.bdf}", note = "{d.ids} {d.driver or "no driver"}" }}'
                                        for d in candidates) + "]")
    lines.append("sriov_pfs = [" + ", ".join(f'{{ bdf = "{d.bdf}", max_vfs = {d.totalvfs} }}' for d in pfs) + "]")
    lines.append("hpre = [" + ", ".join(f'{{ bdf = "{h["bdf"]}", note = "{h["name"]}" }}' for h in hpre) + "]")
    return "\n".join(lines)


# ------------------------------------------------------------------ host state, recorded and restored

@dataclass
class HostStateRecord:
    """What a test may change on the host, as it was before."""
    drivers: dict = field(default_factory=dict)       # bdf -> driver or None
    numvfs: dict = field(default_factory=dict)        # PF bdf -> sriov_numvfs
    vf_settings: dict = field(default_factory=dict)   # PF netdev -> [vf dicts from `ip -j link show`]
    link_up: dict = field(default_factory=dict)       # PF netdev -> administratively up before


class HostState:
    def __init__(self, sys=None, writer=None, save_to=None, *, host):
        """`host`: the lab host (LocalHost for this machine); `sys`: its /sys (default: the host's)."""
        from .hostexec import sys_root
        self.host = host
        self.sys = sys if sys is not None else sys_root(self.host)
        self.writer = writer or self._write
        self.record = HostStateRecord()
        self.save_to = save_to       # a LabPath on the lab host, so a crashed run's changes are restored by the sweeper

    def _write(self, path, value: str) -> None:
        """A sysfs write on the lab host (`path`: a path object of self.sys's kind, or a string)."""
        if not hasattr(path, "write_text"):
            from .hostexec import HostPath
            path = HostPath(self.sys.host, path) if isinstance(self.sys, HostPath) else Path(path)
        path.write_text(value)

    def _save(self) -> None:
        if self.save_to:
            self.host.write_text(self.save_to, json.dumps(self.record.__dict__))

    @classmethod
    def restore_saved(cls, path, host) -> list[str]:
        """Put back what a dead run saved on its lab host (`path` there): whichever
        controller sweeps it can, as the state lives beside what it describes."""
        st = cls(host=host)
        st.record = HostStateRecord(**json.loads(st.host.read_text(path)))
        return st.restore()

    def remember_device(self, bdf: str) -> None:
        self.record.drivers.setdefault(bdf, read_device(bdf, self.sys).driver)
        self._save()

    def reprobe(self, bdf: str) -> None:
        """Unbind the device from its host driver and let the kernel probe it again (the
        driver is recorded first, and put back at the end)."""
        self.remember_device(bdf)
        if read_device(bdf, self.sys).driver:
            self.writer(self.sys / "bus/pci/devices" / bdf / "driver/unbind", bdf)
        self.writer(self.sys / "bus/pci/drivers_probe", bdf)

    def remember_pf(self, bdf: str) -> None:
        dev = read_device(bdf, self.sys)
        self.record.numvfs.setdefault(bdf, dev.numvfs)
        for net in dev.netdevs:
            r = self.host.run("ip", "-j", "link", "show", net, check=False)
            if r.ok and r.stdout.strip():
                link = json.loads(r.stdout)[0]
                self.record.vf_settings.setdefault(net, link.get("vfinfo_list", []))
                self.record.link_up.setdefault(net, "UP" in link.get("flags", []))
        self._save()

    def set_numvfs(self, bdf: str, n: int, path=None) -> None:
        """Set the PF's VF count (recorded and put back at the end); `path`: the sriov_numvfs
        file as the guide names it (HPRE: /sys/class/uacce/hisi_hpre-N/device/sriov_numvfs)."""
        self.remember_pf(bdf)
        path = path or self.sys / "bus/pci/devices" / bdf / "sriov_numvfs"
        if n and read_device(bdf, self.sys).numvfs:
            self.writer(path, "0")               # the kernel wants 0 before another non-zero count
        self.writer(path, str(n))

    def restore(self) -> list[str]:
        """Put back what was recorded: VF settings, link states, VF counts, drivers.
        Every item is tried even when one fails; the failures are raised together at
        the end (the saved record stays, so the sweeper tries again next time)."""
        done, failed = [], []
        rec = self.record
        steps = ([(f"restored VF settings of {net}", lambda net=net, vfs=vfs: self._put_vf_settings(net, vfs))
                  for net, vfs in rec.vf_settings.items()]
                 + [(f"set {net} down again", lambda net=net: self.host.run("ip", "link", "set", net, "down",
                                                                            check=False))
                    for net, was_up in rec.link_up.items() if not was_up]
                 + [(f"restored sriov_numvfs={n} on {bdf}", lambda bdf=bdf, n=n: self._put_numvfs(bdf, n))
                    for bdf, n in rec.numvfs.items()]
                 + [(f"rebound {bdf} to {drv}", lambda bdf=bdf, drv=drv: self._put_driver(bdf, drv))
                    for bdf, drv in rec.drivers.items()])
        for what, fn in steps:
            try:
                if fn() is not False:
                    done.append(what)
            except Exception as e:          # noqa: BLE001  keep restoring the rest
                failed.append(f"{what}: {e}")
        if failed:
            raise HostStateError("could not restore host state: " + "; ".join(failed)
                                 + (f" (restored: {'; '.join(done)})" if done else ""))
        if self.save_to:
            self.host.unlink(self.save_to)
        return done

    def _put_vf_settings(self, net: str, vfs: list[dict]) -> None:
        for i, vf in enumerate(vfs):
            if "address" in vf:
                self.host.run("ip", "link", "set", net, "vf", str(i), "mac", vf["address"], check=False)
            vlan = (vf.get("vlan_list") or [{}])[0].get("vlan", 0)
            self.host.run("ip", "link", "set", net, "vf", str(i), "vlan", str(vlan), check=False)
            rate = vf.get("rate", {}).get("max_tx", 0)
            self.host.run("ip", "link", "set", net, "vf", str(i), "max_tx_rate", str(rate), check=False)

    def _put_numvfs(self, bdf: str, n: int):
        """False: the count is as recorded already (nothing to say)."""
        path = self.sys / "bus/pci/devices" / bdf / "sriov_numvfs"
        if read_device(bdf, self.sys).numvfs == n:
            return False
        self.writer(path, "0")
        if n:
            self.writer(path, str(n))

    def _put_driver(self, bdf: str, drv: str | None):
        """False: the device has the recorded driver already."""
        dev = self.sys / "bus/pci/devices" / bdf
        now = read_device(bdf, self.sys).driver if dev.exists() else drv
        if now == drv:
            return False
        if now:
            self.writer(dev / "driver/unbind", bdf)
        if drv:
            self.writer(dev / "driver_override", drv)
            self.writer(self.sys / "bus/pci/drivers_probe", bdf)
            self.writer(dev / "driver_override", "\n")


class HostStateError(LabError):
    pass


# ------------------------------------------------------------------ XML (the guide's forms)

GUIDE_GUEST_ADDRESS = {"domain": "0x0000", "bus": "0x00", "slot": "0x03", "function": "0x0"}


def hostdev_pci(bdf, rom_bar_off=True, guest_address=GUIDE_GUEST_ADDRESS):
    dom, bus, rest = bdf.split(":")
    slot, fn = rest.split(".")
    h = X.el("hostdev", {"mode": "subsystem", "type": "pci", "managed": "yes"},
             X.el("driver", {"name": "vfio"}),
             X.el("source", None, X.el("address", {"domain": f"0x{dom}", "bus": f"0x{bus}", "slot": f"0x{slot}",
                                                   "function": f"0x{fn}"})))
    if rom_bar_off:
        h.append(X.el("rom", {"bar": "off"}))
    if guest_address:
        h.append(X.el("address", {"type": "pci", **guest_address}))
    return h


def hostdev_interface(vf_bdf, mac, vlan):
    dom, bus, rest = vf_bdf.split(":")
    slot, fn = rest.split(".")
    return X.el("interface", {"type": "hostdev", "managed": "yes"}, X.el("mac", {"address": mac}),
                X.el("source", None, X.el("address", {"type": "pci", "domain": f"0x{dom}", "bus": f"0x{bus}",
                                                      "slot": f"0x{slot}", "function": f"0x{fn}"})),
                X.el("vlan", None, X.el("tag", {"id": vlan})))


@dataclass(frozen=True)
class VfLink:
    """One `vf N` line of `ip link show <PF>`: what the PF's driver reports for a VF."""
    vf: int
    mac: str = ""
    vlan: int | None = None
    max_tx_rate: int | None = None     # Mbps ("max_tx_rate 100Mbps")
    tx_rate: int | None = None         # Mbps, the older form ("tx rate 100 (Mbps)")

    @property
    def rate(self) -> int | None:
        return self.max_tx_rate if self.max_tx_rate is not None else self.tx_rate


def parse_vf_links(ip_link_show: str) -> dict[int, VfLink]:
    """The VF lines of `ip link show <PF>` (iproute2's print_vfinfo), each parsed on its own:
    a value is read only from its own VF's line, and numbers are compared whole."""
    out = {}
    for line in ip_link_show.splitlines():
        m = re.match(r"\s*vf (\d+)\s+(.*)$", line)
        if not m:
            continue
        rest = m.group(2)

        def num(rx):
            f = re.search(rx, rest)
            return int(f.group(1)) if f else None

        mac = re.search(r"(?:link/ether|MAC) ([0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5})\b", rest)
        out[int(m.group(1))] = VfLink(int(m.group(1)), mac.group(1).lower() if mac else "",
                                      num(r"(?:^|, )vlan (\d+)\b"), num(r"\bmax_tx_rate (\d+)Mbps\b"),
                                      num(r"\btx rate (\d+) \(Mbps\)"))
    return out
