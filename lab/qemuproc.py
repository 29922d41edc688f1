"""The QEMU process behind one domain: what the lab host shows of it (its pid, the files it
holds and how, its AIO rings and vhost workers) and its monitor, through libvirt's QEMU
passthrough.  It knows only the lab host, the domain's name and how to reach the domain."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
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

    def io_errors(self) -> "IoErrorLog":
        """QEMU's own record of the failed I/O of this domain's disks, as it happens:
        `with vm.qemu.io_errors() as log: ...`, then `log.events()`."""
        return IoErrorLog(self._domain())

    def monitor(self, command: str, hmp: bool = False) -> str:
        flags = libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP if hmp else 0
        return libvirt_qemu.qemuMonitorCommand(self._domain(), command, flags)


@dataclass(frozen=True)
class QemuIoError:
    """One BLOCK_IO_ERROR event: QEMU failed an I/O of a disk and did `action` about it
    (openEuler's retry patch raises one for every failed attempt it will retry).  Shaped
    like a storage log's request (`at`, `op`, `failed`, `offset`, `count`), so the same
    counts and gaps apply; QEMU's event names no offset, so every attempt of one device
    and direction counts as one request's."""
    at: float                 # QEMU's own timestamp (the lab host's clock, seconds since the epoch)
    op: str                   # "Read" or "Write", as the storage logs name them
    device: str
    action: str               # "retry", "report", "stop", "ignore"
    reason: str

    failed = True

    @property
    def offset(self) -> str:
        return self.device

    count = 0


MAX_EVENTS = 100_000          # a QEMU retrying in a busy loop must not fill the controller's memory


class IoErrorLog:
    """QEMU's BLOCK_IO_ERROR events of one domain, through libvirt's QEMU monitor event API,
    kept from `__enter__` to `__exit__` with QEMU's own timestamps."""

    def __init__(self, dom):
        self._dom = dom
        self._events: list[QemuIoError] = []
        self._lock = threading.Lock()
        self._id = None
        self.dropped = 0

    def _on_event(self, conn, dom, event, seconds, micros, details, opaque):
        try:
            d = json.loads(details) if isinstance(details, str) else (details or {})
        except ValueError:
            d = {}
        ev = QemuIoError(seconds + micros / 1e6, str(d.get("operation", "?")).capitalize(),
                         d.get("qom-path") or d.get("device") or d.get("node-name") or "?",
                         str(d.get("action", "?")), str(d.get("reason", "")))
        with self._lock:
            if len(self._events) < MAX_EVENTS:
                self._events.append(ev)
            else:
                self.dropped += 1

    def __enter__(self) -> "IoErrorLog":
        self._id = libvirt_qemu.qemuMonitorEventRegister(self._dom.connect(), self._dom, "BLOCK_IO_ERROR",
                                                         self._on_event, None, 0)
        return self

    def __exit__(self, *exc) -> None:
        if self._id is not None:
            try:
                libvirt_qemu.qemuMonitorEventDeregister(self._dom.connect(), self._id)
            except Exception:           # a lost connection took the registration with it
                pass
            self._id = None

    def events(self, action: str | None = None) -> list[QemuIoError]:
        with self._lock:
            return [e for e in self._events if action is None or e.action == action]
