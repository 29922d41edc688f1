"""The lab host as the suites see it: verbs for its listed devices, PCI functions,
links, SR-IOV VFs, kernel modules and fault facts, matching the guest's `guest.pci` /
`guest.net`.  A suite asks `lab.hostside.net.set_vf(...)` and runs no command of its own
on the lab host: what runs there, and how, is said once, here."""
from __future__ import annotations

from . import pci
from .hostexec import Host
from .hostproc import kernel_has_device_mapper
from .result import Result
from .timeouts import Deadline, poll


class HostRefused(AssertionError):
    """The lab host refused a documented command (the claim's own failure, not the lab's)."""


class HostPciVerbs:
    def __init__(self, host: Host, sys, listed: set[str]):
        self._host, self._sys, self._listed = host, sys, listed

    def check_passthrough_safe(self, bdf: str) -> pci.HostPci:
        """The function, once it is known safe to hand to a guest: listed in the lab config
        with every member of its IOMMU group (else pci.UnsafeDevice)."""
        return pci.check_passthrough_safe(bdf, self._listed, self._sys)

    def device(self, bdf: str) -> pci.HostPci:
        """A PCI function as sysfs shows it now (driver, VFs, netdevs, ids)."""
        return pci.read_device(bdf, self._sys)

    def lspci_vfs(self, pf_bdf: str) -> list[str]:
        """The Virtual Functions `lspci -D` lists on the PF's bus: a second witness besides sysfs."""
        out = self._host.run("lspci", "-D").stdout
        bus = pf_bdf.rsplit(":", 1)[0] + ":"
        return sorted(line.split()[0] for line in out.splitlines()
                      if "Virtual Function" in line and line.startswith(bus))

    def hpre(self, bdf: str) -> dict | None:
        """The HPRE accelerator `bdf` as /sys/class/uacce lists it (None: not there)."""
        return next((h for h in pci.hpre_devices(self._sys) if h["bdf"] == bdf), None)

    def netdevs_of(self, bdf: str, deadline: Deadline) -> tuple[str, ...]:
        """The netdevs of a function, waited for (a driver probe makes them shortly after)."""
        return poll(lambda: self.device(bdf).netdevs, deadline, interval=0.3)


class HostNetVerbs:
    def __init__(self, host: Host):
        self._host = host

    def link_up(self, net: str, deadline: Deadline) -> None:
        """Bring a netdev's link up and wait for carrier: VFs get their MAC, VLAN and rate
        from a PF whose link is up (igbvf: 'PF still in reset state')."""
        self._host.run("ip", "link", "set", net, "up")
        poll(lambda: self._host.run("cat", f"/sys/class/net/{net}/carrier", check=False).stdout.strip() == "1",
             deadline, interval=0.5)

    def set_vf(self, net: str, vf: int, **settings) -> None:
        """`ip link set <net> vf <n> mac M / rate R / vlan V` (the guide's commands); a refusal
        is the host's answer to the claim: HostRefused with its reason."""
        argv = ["ip", "link", "set", net, "vf", str(vf)]
        for k, v in settings.items():
            argv += [k, str(v)]
        r = self._host.run(*argv, check=False)
        if not r.ok:
            raise HostRefused(f"lab host {self._host.name} refused `{' '.join(argv)}`: {r.stderr.strip()}")

    def vf_links(self, net: str) -> tuple[dict[int, pci.VfLink], str]:
        """The VFs `ip link show <net>` lists, by number, and the text itself (for messages)."""
        shown = self._host.run("ip", "link", "show", net).stdout
        return pci.parse_vf_links(shown), shown

    def mac(self, net: str) -> str:
        return self._host.read_text(f"/sys/class/net/{net}/address").strip()


class HostModuleVerbs:
    def __init__(self, host: Host):
        self._host = host

    def holders(self, module: str) -> tuple[int, list[str]]:
        """(refcnt, holder modules) of a loaded kernel module."""
        refcnt = int(self._host.read_text(f"/sys/module/{module}/refcnt").strip())
        return refcnt, sorted(self._host.listdir(f"/sys/module/{module}/holders"))

    def unload(self, module: str) -> Result | None:
        """`modprobe -r`: None when it unloaded, else its refused result (rc and stderr)."""
        r = self._host.run("modprobe", "-r", module, check=False)
        return None if r.ok else r


class HostSide:
    """One lab host's verbs for the suites (made once per run, from the run's one Host)."""

    def __init__(self, host: Host, sys, cfg):
        self.name = cfg.name
        self._host = host
        self._inventory = cfg.inventory
        self.fault_backend_setting = cfg.fault_backend   # the lab config's [faults] backend ('auto' or a name)
        self.pci = HostPciVerbs(host, sys, {d.bdf for d in cfg.inventory.pci})
        self.net = HostNetVerbs(host)
        self.modules = HostModuleVerbs(host)

    def listed(self, kind: str) -> list:
        """The lab config's inventory entries of a kind (pci, sriov_pfs, hpre, usb), in order:
        the only devices the harness may touch."""
        return list(getattr(self._inventory, kind))

    def listed_bdfs(self, kind: str) -> set[str]:
        return {d.bdf for d in self.listed(kind)}

    def has_tool(self, prog: str) -> bool:
        return self._host.which(prog)

    def has_device_mapper(self) -> bool:
        """The kernel's own answer: device-mapper's misc device is registered."""
        return kernel_has_device_mapper(text=self._host.read_text("/proc/misc"))
