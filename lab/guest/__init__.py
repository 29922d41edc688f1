"""The guest as a test sees it: a shell over SSH and lazy probes of what the
guest kernel actually found (never what libvirt's XML asked for)."""
from __future__ import annotations

import re

from .ssh import SSH, Result
from .probes import PciProbe, BlockProbe, NetProbe
from ..errors import LabError


class GuestToolMissing(LabError):
    """The guest image lacks a program a claim's probe runs: a fact about the image
    (reported as a skip that names the program), not a finding about the device."""


_NOT_FOUND = re.compile(r"(?:^|\s)([\w./+-]+): (?:command )?not found|([\w./+-]+): No such file or directory")


class Guest:
    def __init__(self, ssh: SSH, vm=None):
        self.ssh = ssh
        self.vm = vm
        self.pci = PciProbe(self)
        self.block = BlockProbe(self)
        self.net = NetProbe(self)
        from ..usb import UsbProbe
        self.usb = UsbProbe(self)

    def run(self, cmd: str, *args, timeout: float = 60.0, check: bool = True) -> Result:
        return self.ssh.run(cmd, *args, timeout=timeout, check=check)

    def check_output(self, cmd: str, *args, timeout: float = 60.0) -> str:
        r = self.run(cmd, *args, timeout=timeout, check=False)
        if r.rc == 127:
            m = _NOT_FOUND.search(r.stderr)
            if m:
                raise GuestToolMissing(f"the guest image has no {m.group(1) or m.group(2)!r}, which the probe "
                                       f"{r.command[:80]!r} runs; fix: install it in the image")
        return r.check().stdout

    def has(self, program: str) -> bool:
        """The guest image has `program` on its PATH."""
        return self.run("command -v %s", program, check=False).rc == 0

    def boot_id(self) -> str:
        return self.check_output("cat /proc/sys/kernel/random/boot_id").strip()

    def close(self) -> None:
        self.ssh.close()
