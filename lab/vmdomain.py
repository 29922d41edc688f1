"""A VM's libvirt domain: its handle (looked up again after a reconnect), state, XML
views, events, and devices attached and detached with their outcome waited for.  The
VM (lab/domain.py) composes it with its guest access, QEMU process and disks; a suite
reaches it as `vm.domain`."""
from __future__ import annotations

import libvirt
from lxml import etree

from . import xml as X
from .steps import verb
from .timeouts import Deadline

STATE_NAMES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
               libvirt.VIR_DOMAIN_SHUTOFF: "shutoff", libvirt.VIR_DOMAIN_CRASHED: "crashed",
               libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_BLOCKED: "blocked"}


class DomainError(AssertionError):
    """libvirt refused an operation on a domain; `reason` is libvirt's own message."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class AttachRefused(AssertionError):
    """libvirt (or QEMU) refused a device attach; the message is libvirt's."""


def _flags(live: bool, config: bool) -> int:
    return (libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0) | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0)


class Domain:
    def __init__(self, session, name: str, refusal):
        """`refusal(what, message, kind)`: libvirt's refusal as the error it is (the VM's
        judgement: a lab problem or the product's answer)."""
        self.session, self.name = session, name
        self._refusal = refusal
        self._handle: libvirt.virDomain | None = None
        self._gen = 0
        self.uuid: str | None = None

    @property
    def handle(self) -> libvirt.virDomain | None:
        """libvirt's domain object, looked up again when the session reconnected to libvirt."""
        conn = self.session.conn                 # reconnects first if libvirtd went away
        if self._handle is not None and self._gen != self.session.generation:
            self._handle = conn.lookupByUUIDString(self.uuid)
            self._gen = self.session.generation
        return self._handle

    @handle.setter
    def handle(self, value) -> None:
        self._handle = value
        self._gen = self.session.generation
        self.uuid = value.UUIDString() if value is not None else self.uuid

    @property
    def known(self) -> bool:
        """The domain was defined and not yet undefined or given up (no libvirt call)."""
        return self._handle is not None

    def forget(self) -> None:
        """Drop the handle without asking libvirt (it stopped answering: the sweeper undefines)."""
        self._handle = None

    def define(self, xml: str) -> None:
        try:
            self.handle = self.session.conn.defineXML(xml)
        except libvirt.libvirtError as e:
            raise self._refusal(f"libvirt refused to define {self.name}", e.get_error_message()) from None

    def is_active(self) -> bool:
        try:
            return bool(self.handle.isActive())
        except libvirt.libvirtError:
            return False

    def state(self) -> tuple[str, int]:
        """(state name, libvirt's reason code): ("paused", VIR_DOMAIN_PAUSED_IOERROR), ..."""
        st, reason = self.handle.state()
        return STATE_NAMES.get(st, str(st)), reason

    def disk_errors(self) -> dict[str, int]:
        """libvirt's record of the disks that hit an I/O error (target: error code)."""
        return self.handle.diskErrors()

    def live_xml(self) -> etree._Element:
        return X.parse(self.handle.XMLDesc(0))

    def inactive_xml(self) -> etree._Element:
        return X.parse(self.handle.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))

    def waiter(self, kind, predicate=lambda ev: True):
        """A waiter for this domain's libvirt events of `kind` ("lifecycle", "device-removed",
        ...): register it (`with vm.domain.waiter(...) as w:`) before the action, then
        `w.wait(deadline)`."""
        return self.session.events.waiter(self.handle, kind, predicate)

    def snapshot_names(self) -> list[str]:
        """The snapshots libvirt keeps for the domain."""
        return sorted(s.getName() for s in self.handle.listAllSnapshots())

    @verb(lambda self: f"resume {self.name}")
    def resume(self) -> None:
        try:
            self.handle.resume()
        except libvirt.libvirtError as e:
            raise DomainError(f"libvirt could not resume {self.name}: {e.get_error_message()}",
                              e.get_error_message()) from None

    @verb(lambda self, device, live=True, config=False: f"attach {_describe(device)} to {self.name}"
          f"{' (live)' if live else ''}{' (config)' if config else ''}")
    def attach(self, device: etree._Element, live: bool = True, config: bool = False) -> etree._Element | None:
        """Attach; return the device as libvirt now describes it (live XML when live)."""
        view = self.live_xml if live else self.inactive_xml
        before = {etree.tostring(d) for d in view().find("devices")}
        try:
            self.handle.attachDeviceFlags(X.to_string(device), _flags(live, config))
        except libvirt.libvirtError as e:
            raise self._refusal(f"attach to {self.name}", e.get_error_message(), AttachRefused) from None
        new = [d for d in view().find("devices") if etree.tostring(d) not in before and d.tag == device.tag]
        return new[0] if new else None

    @verb(lambda self, device, live=True, config=False, **k: f"detach {_describe(device)} from {self.name}"
          f"{' (live: wait for DEVICE_REMOVED)' if live else ''}{' (config)' if config else ''}")
    def detach(self, device: etree._Element, live: bool = True, config: bool = False,
               deadline: Deadline | None = None) -> None:
        """Detach with the same XML; for live, wait for DEVICE_REMOVED (registered
        before the request), then confirm from the re-read XML."""
        deadline = deadline or Deadline(30, f"{device.tag} to leave {self.name}")
        if live:
            with self.session.events.waiter(self.handle, {"device-removed", "device-removal-failed"}) as w:
                self._request_detach(device, live, config)
                ev = w.wait(deadline)
                if ev.kind == "device-removal-failed":
                    raise DomainError(f"guest refused to release {ev.detail['alias']} on {self.name}")
            if self.live_xml().find(f"devices/*/alias[@name='{ev.detail['alias']}']") is not None:
                raise DomainError(f"{ev.detail['alias']} is still in {self.name}'s live XML after DEVICE_REMOVED")
        else:
            self._request_detach(device, live, config)
        if config:
            # a --config change sends no event: confirm it from the inactive XML
            key = device_key(device)
            if any(device_key(d) == key for d in self.inactive_xml().find("devices")):
                raise DomainError(f"{key} is still in {self.name}'s persistent definition after detach --config")

    def _request_detach(self, device, live: bool, config: bool) -> None:
        try:
            self.handle.detachDeviceFlags(X.to_string(device), _flags(live, config))
        except libvirt.libvirtError as e:
            raise DomainError(f"detach from {self.name} refused: {e.get_error_message()}") from None


def _describe(d: etree._Element) -> str:
    """A device in a few words, for step titles: <disk> vdb, <interface> 52:54:00:..."""
    k = device_key(d)
    what = next((x for x in k[1:] if x), "")
    return f"<{d.tag}{' type=' + repr(d.get('type')) if d.get('type') else ''}> {what}".strip()


def device_key(d: etree._Element) -> tuple:
    """What identifies a device across libvirt's re-rendering of it."""
    if d.tag == "controller":
        return (d.tag, d.get("type"), d.get("index"), d.get("model"))
    src = d.find("source")
    mac = d.find("mac")
    tgt = d.find("target")
    return (d.tag, tgt.get("dev") if tgt is not None else None,
            (src.get("file") or src.get("dev") or src.get("wwpn")) if src is not None else None,
            mac.get("address") if mac is not None else None)
