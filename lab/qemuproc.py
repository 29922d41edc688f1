"""The QEMU process behind one domain: what the lab host shows of it (its pid, the files it
holds and how, its AIO rings and vhost workers) and its monitor, through libvirt's QEMU
passthrough.  It knows only the lab host, the domain's name and how to reach the domain."""
from __future__ import annotations

import json
from typing import Callable

import libvirt_qemu

from .errors import LabError


class QemuProcessNotFound(LabError):
    """The domain's QEMU process is not on the lab host (no pid file, no process named for it)."""


class QmpRefused(AssertionError):
    """QEMU answered a QMP command with an error: what the product said, not a lab problem."""


class QemuProcess:
    def __init__(self, host, name: str, domain: Callable, o_direct: Callable[[], int]):
        self.host, self.name = host, name
        self._domain = domain          # () -> the libvirt domain (looked up again after a reconnect)
        self._o_direct = o_direct      # () -> the O_DIRECT flag of the lab host's kernel

    def pid(self) -> int:
        """libvirt's pid file, or, for a libvirtd whose /run/libvirt is private, the process
        named guest=NAME."""
        try:
            return int(self.host.read_text(f"/run/libvirt/qemu/{self.name}.pid").strip())
        except (OSError, ValueError):
            pass
        from .hostproc import host_processes, qemu_guest
        for pid, argv in host_processes(self.host):
            if qemu_guest(argv) == self.name:
                return pid
        raise QemuProcessNotFound(f"no QEMU process of {self.name} on lab host {self.host.name}")

    def open_flags(self, path) -> list[int]:
        """The open flags of each descriptor QEMU holds on `path`."""
        from .hostproc import open_flags
        return open_flags(self.host, self.pid(), str(path))

    def holds(self, path) -> bool:
        """QEMU has `path` open (for example /dev/vhost-net)."""
        return bool(self.open_flags(path))

    def opened_direct(self, path) -> bool:
        """QEMU holds `path` open, and every descriptor with O_DIRECT (the lab host kernel's flag)."""
        flags = self.open_flags(path)
        return bool(flags) and all(f & self._o_direct() for f in flags)

    def aio_completions(self) -> list[int]:
        """The completion counter of each Linux native AIO ring QEMU set up; a counter moves
        when I/O completes through io_submit()."""
        from .hostproc import aio_completions
        return aio_completions(self.host, self.pid())

    def vhost_work(self) -> dict[int, int]:
        """{task id: nanoseconds on CPU} of each of QEMU's vhost workers ({}: none)."""
        from .network import vhost_work
        return vhost_work(self.pid(), self.host)

    def qmp(self, command: str, **arguments):
        cmd = {"execute": command}
        if arguments:
            cmd["arguments"] = arguments
        reply = json.loads(self.monitor(json.dumps(cmd)))
        if "error" in reply:
            raise QmpRefused(f"QMP {command} on {self.name}: {reply['error']}")
        return reply["return"]

    def monitor(self, command: str, hmp: bool = False) -> str:
        flags = libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP if hmp else 0
        return libvirt_qemu.qemuMonitorCommand(self._domain(), command, flags)
