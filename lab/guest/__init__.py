"""The guest as a test sees it: a shell over SSH and lazy probes of what the
guest kernel actually found (never what libvirt's XML asked for)."""
from __future__ import annotations

from .ssh import SSH, Result
from .probes import PciProbe, BlockProbe, NetProbe


class Guest:
    def __init__(self, ssh: SSH, vm=None):
        self.ssh = ssh
        self.vm = vm
        self.pci = PciProbe(self)
        self.block = BlockProbe(self)
        self.net = NetProbe(self)
        from ..usb import UsbProbe
        self.usb = UsbProbe(self)

    def run(self, cmd: str, *args, timeout: float = 60.0, check: bool = False) -> Result:
        return self.ssh.run(cmd, *args, timeout=timeout, check=check)

    def check_output(self, cmd: str, *args, timeout: float = 60.0) -> str:
        return self.run(cmd, *args, timeout=timeout, check=True).stdout

    def boot_id(self) -> str:
        return self.check_output("cat /proc/sys/kernel/random/boot_id").strip()

    def close(self) -> None:
        self.ssh.close()
