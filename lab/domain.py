"""A harness-owned VM: define/start/stop, wait until the guest is ready,
attach()/detach() that wait for the outcome and then re-read the XML."""
from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
from lxml import etree

from . import xml as X
from .guest.console import Console
from .guest import Guest
from .images import create_image, image_sha256
from .steps import verb
from .sweep import undefine
from .timeouts import Deadline, poll
from .errors import LabError
from .refusals import classify
from .access import GuestAccess, HypervisorFault, Reach
from .qemuproc import QemuProcess, QemuProcessNotFound


class DomainError(AssertionError):
    """libvirt refused an operation on a domain; `reason` is libvirt's own message."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


@dataclass
class VMSpec:
    role: str
    pcie_root_ports: int | None = None    # None: libvirt adds the root ports the devices need
    pcie_bridge: bool = False
    devices: list = field(default_factory=list)   # further device elements (cold-plugged)
    memory_mib: int | None = None
    vcpus: int = 1
    shared_memory: bool = False           # vhost-user backends map guest memory
    usb: bool = False                     # False: no USB controller at all
    extra_cmdline: str = ""               # appended to the guest kernel command line
    overrides: dict = field(default_factory=dict)   # {device alias: {QEMU property: value}} (<qemu:override>)
    qemu_args: list = field(default_factory=list)   # handed to QEMU as they are (<qemu:commandline>)


def random_mac() -> str:
    b = secrets.token_bytes(3)
    return "52:54:00:%02x:%02x:%02x" % tuple(b)


class VM:
    def __init__(self, run, spec: VMSpec, name: str):
        self.run, self.spec, self.name = run, spec, name
        self.session = run.session
        self.dir: Path = run.dir / name              # this machine: transcripts, evidence
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = run.host
        self.hdir = run.hdir / name                  # the lab host: overlays, logs QEMU writes
        self.host.makedirs(self.hdir)
        self.serial_log = self.hdir / "serial.log"
        self.mac = random_mac()
        self.port_lease = run.lease_port()
        self.ssh_port: int = self.port_lease.value
        self._dom: libvirt.virDomain | None = None
        self._dom_gen = 0
        self.uuid: str | None = None
        self.files: list[Path] = []
        self.boot_faults: list[str] = []     # hypervisor faults of boots that were retried
        self.qemu = QemuProcess(self.host, name, lambda: self.dom, run.host_o_direct)
        self.access = GuestAccess(Reach(
            name=name, host=self.host, libvirt_uri=run.cfg.libvirt_uri, image=run.image, key=run.key,
            console_login=run.console_login, mac=self.mac, ssh_port=self.ssh_port, local_dir=self.dir,
            serial_log=self.serial_log, firmware_key_set=bool(run.cfg.firmware),
            efi_boot_file=run.arch.efi_boot_file, log=run.log, boot_deadline=run.boot_deadline), self.state)

    @property
    def conn(self) -> libvirt.virConnect:
        return self.session.conn

    @property
    def dom(self) -> libvirt.virDomain | None:
        """The domain, looked up again when the session reconnected to libvirt."""
        conn = self.session.conn                 # reconnects first if libvirtd went away
        if self._dom is not None and self._dom_gen != self.session.generation:
            self._dom = conn.lookupByUUIDString(self.uuid)
            self._dom_gen = self.session.generation
        return self._dom

    @dom.setter
    def dom(self, value) -> None:
        self._dom = value
        self._dom_gen = self.session.generation
        self.uuid = value.UUIDString() if value is not None else self.uuid

    # ------------------------------------------------------------ XML

    @property
    def overlay(self):
        """The VM's root disk on the lab host: a qcow2 overlay on the run's image."""
        return self.hdir / "root.qcow2"

    def own_disks(self) -> dict[str, str]:
        """The disks the harness gives every VM, target -> path on the lab host (its own record)."""
        disks = {"vda": str(self.overlay)}
        if self.run.image.access == "nocloud":
            disks["sdzz"] = str(self.seed)
        return disks

    @property
    def seed(self):
        """The NoCloud seed on the lab host (images with access = 'nocloud')."""
        return self.hdir / "seed.iso"

    def _make_disks(self) -> None:
        """The overlay and, for a NoCloud image, the seed (made here, copied to the lab host),
        once per VM: what the domain's XML names must exist before it is defined."""
        if self.host.exists(self.overlay):
            return
        from .images import create_nocloud_seed, create_overlay
        create_overlay(self.host, self.run.image.root, self.overlay)
        self.files.append(self.overlay)
        if self.run.image.access == "nocloud":
            local = create_nocloud_seed(self.dir / "seed.iso", self.name, "acc-guest", self.run.key.public_line,
                                        self.run.seed_password_hash)
            self.host.put(local, self.seed)
            self.files.append(self.seed)

    def build_xml(self) -> etree._Element:
        """The domain's XML (no side effects: `define` makes the disks it names)."""
        run, img, arch = self.run, self.run.image, self.run.arch
        overlay = self.overlay
        devices = []
        if self.spec.pcie_root_ports is not None:
            devices += X.simplified_pcie_topology(self.spec.pcie_root_ports, bridge=self.spec.pcie_bridge)
        # User aliases for the harness's own disks: libvirt's own names (virtio-disk0, ...) stay
        # free for a claim that names a device that way (the guide's QEMU command line does).
        devices.append(X.disk(str(overlay), target="vda", bus="virtio", serial="acc-root", alias="ua-acc-root"))
        if img.access == "nocloud":
            # A CD-ROM on the machine's own SATA controller, as cloud tools attach a NoCloud seed: it
            # takes no PCI slot, no virtio or SCSI disk name and no target a claim's disks use.
            devices.append(X.disk(str(self.seed), target="sdzz", bus="sata", fmt="raw", device="cdrom",
                                  readonly=True, alias="ua-acc-seed",
                                  drive_address={"controller": 0, "bus": 0, "target": 0, "unit": 5}))
        devices.append(X.user_interface(self.mac))
        devices.append(X.serial_pty(str(self.serial_log)))
        devices.append(X.console_pty())
        if not self.spec.usb:
            devices.append(X.no_usb())
        devices.append(X.no_memballoon())
        devices += self.spec.devices
        cmdline = None
        if img.kernel:
            cmdline = (f"console={img.console_tty},115200 acc.rootserial=acc-root rw panic=0 "
                       f"acc.mac={self.mac} acc.ip=10.0.2.15/24 acc.gw=10.0.2.2")
            if img.access == "cmdline":
                cmdline += f" acc.sshkey={run.key.public_blob}"
            if self.spec.extra_cmdline:
                cmdline += " " + self.spec.extra_cmdline
        meta = X.harness_metadata(run.run_id, os.getpid(), self.spec.role, [self.hdir], work_dir=run.work_dir,
                                  hostdir=run.cfg.host_work_dir)
        return X.domain(self.name, virt_type=run.cfg.virt_type, arch=arch,
                        memory_mib=self.spec.memory_mib or run.cfg.memory_mib, vcpus=self.spec.vcpus,
                        kernel=img.kernel, initrd=img.initrd, cmdline=cmdline, metadata=meta, devices=devices,
                        shared_memory=self.spec.shared_memory, emulator=run.emulator,
                        overrides=self.spec.overrides, qemu_args=self.spec.qemu_args, firmware=img.firmware)

    def define(self) -> "VM":
        self._make_disks()
        xml = X.to_string(self.build_xml())
        (self.dir / "defined.xml").write_text(xml)
        try:
            self.dom = self.conn.defineXML(xml)
        except libvirt.libvirtError as e:
            raise self.refusal(f"libvirt refused to define {self.name}", e.get_error_message()) from None
        return self

    # ------------------------------------------------------------ lifecycle

    @verb(lambda self, *a, **k: f"start {self.name}")
    def start(self, deadline: Deadline | None = None, wait: bool = True) -> "VM":
        """Start; with `wait`, until the guest is ready.  A boot the hypervisor itself
        stops (HypervisorFault) is started again up to [host] boot_retries times,
        each one logged and kept in the VM's evidence."""
        retries = self.run.cfg.boot_retries if wait else 0
        for attempt in range(retries + 1):
            self._reset_boot()
            t0 = time.monotonic()
            try:
                self.dom.create()
            except libvirt.libvirtError as e:
                raise self.refusal(f"libvirt could not start {self.name}", e.get_error_message()) from None
            self._after_start()
            if not wait:
                return self
            try:
                self.wait_ready(deadline)
                self.run.boot_seconds.append(time.monotonic() - t0)
                return self
            except HypervisorFault as e:
                if attempt == retries:
                    raise
                self.boot_faults.append(str(e))
                self.run.log(f"[lab] {e}; starting it again ({attempt + 1} of {retries}, [host] boot_retries)")
                self.destroy()

    def start_with_console(self, transcript: Path) -> Console:
        """`virsh start --console`: returns the attached console; call wait_ready() next."""
        self._reset_boot()
        con = self.access.start_attached(transcript)
        poll(lambda: self.is_active() or not con.child.isalive(), Deadline(20, f"{self.name} to start"))
        if not self.is_active():
            raise DomainError(f"'virsh start --console {self.name}' did not start it: {con.tail()!r}")
        self._after_start()
        return con

    def refusal(self, what: str, message: str, kind=None) -> Exception:
        """libvirt's refusal as the error it is: a lab problem (security driver, permissions,
        a harness helper not answering; lab/refusals.py) or the product's answer (`kind`,
        DomainError by default)."""
        lab = classify(what, message, [self.run.hdir])
        if lab is not None:
            return lab
        return kind(message) if kind else DomainError(f"{what}: {message}", message)

    def _reset_boot(self) -> None:
        self.access.reset()

    def _after_start(self) -> None:
        alias = self.live_xml().find("devices/interface[@type='user']/alias")
        netdev = "host" + alias.get("name") if alias is not None else "hostnet0"
        out = self.qemu.monitor(f"hostfwd_add {netdev} tcp:127.0.0.1:{self.ssh_port}-:22", hmp=True)
        if out.strip():
            raise DomainError(f"could not forward 127.0.0.1:{self.ssh_port} to {self.name}'s SSH: {out.strip()}")

    def is_active(self) -> bool:
        try:
            return bool(self.dom.isActive())
        except libvirt.libvirtError:
            return False

    def state(self) -> tuple[str, int]:
        names = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
                 libvirt.VIR_DOMAIN_SHUTOFF: "shutoff", libvirt.VIR_DOMAIN_CRASHED: "crashed",
                 libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_BLOCKED: "blocked"}
        st, reason = self.dom.state()
        return names.get(st, str(st)), reason

    def disk_errors(self) -> dict[str, int]:
        """libvirt's record of the disks that hit an I/O error (target: error code)."""
        return self.dom.diskErrors()

    # ------------------------------------------------------------ the guest (lab/access.py)

    def wait_ready(self, deadline: Deadline | None = None) -> Guest:
        return self.access.wait_ready(deadline)

    @property
    def guest(self) -> Guest:
        return self.access.guest

    def console(self) -> Console:
        return self.access.console()

    def serial_text(self) -> str:
        return self.access.serial_text()

    @property
    def boot_id(self) -> str | None:
        return self.access.boot_id

    @verb(lambda self, target, *a, **k: f"live-migrate {self.name} peer to peer to {target.uri}")
    def migrate(self, target, deadline: Deadline | None = None):
        """Live-migrate to a second libvirt endpoint (lab/migration.py); returns the outcome
        (refused with libvirt's message, or done: the guest then runs on the target)."""
        from .migration import migrate_live
        outcome = migrate_live(self.dom, target, deadline or Deadline(120, f"{self.name}'s live migration"))
        if outcome.done:
            self._reset_boot()
        return outcome

    @verb(lambda self, *a, **k: f"power off {self.name} from inside, wait for libvirt's stopped event")
    def poweroff(self, deadline: Deadline | None = None) -> None:
        """A clean shutdown from inside the guest; waits for libvirt's stopped event.  The
        budget follows the boots measured in this run (a shutdown is no slower than a boot),
        so a host busy with other work does not fail a good guest."""
        deadline = deadline or self.run.boot_deadline(f"{self.name} to power off")
        with self.waiter("lifecycle", lambda e: e.detail["event"] == "stopped") as w:
            try:
                self.guest.run("sync; poweroff", timeout=10)
            except (EOFError, OSError, ConnectionError, TimeoutError):
                pass      # the connection may drop while the guest goes down
            if self.is_active():
                w.wait(deadline)
        self._reset_boot()

    def destroy(self) -> None:
        if self.dom is not None and self.is_active():
            try:
                self.dom.destroy()
            except libvirt.libvirtError as e:
                if self.is_active():
                    raise DomainError(f"could not destroy {self.name}: {e.get_error_message()}") from None
        self._reset_boot()

    def cleanup(self) -> list[str]:
        """Undo everything this VM made; returns what was undone."""
        undone = []
        self.access.close_consoles()
        if self._dom is not None and self.run.session.unanswered:
            undone += self._stop_without_libvirt()
        if self._dom is not None and not self.run.session.unanswered:
            if self.is_active():
                self.destroy()
                undone.append(f"destroyed domain {self.name}")
            try:
                undefine(self.dom)
                undone.append(f"undefined domain {self.name}")
            except libvirt.libvirtError:
                pass
            self.dom = None
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
            undone.append(f"removed {self.dir}")
        if self.host.exists(self.hdir):
            self.host.rmtree(self.hdir)
            undone.append(f"removed {self.hdir}{self.host.on}")
        self.port_lease.release()
        return undone

    def _stop_without_libvirt(self) -> list[str]:
        """libvirt's daemon stopped answering: this VM's QEMU is killed through the lab host
        (it may be what floods the daemon), then the daemon gets a while to answer again.
        If it does not, the definition stays for the next run's sweeper (this run's lease
        ends at close, so the run is dead to it) and nothing else waits on libvirt."""
        undone = []
        try:
            pid = self.qemu.pid()
        except QemuProcessNotFound:
            pid = None
        if pid is not None:
            self.host.run("kill", "-KILL", str(pid), check=False)
            poll(lambda: not self.host.exists(f"/proc/{pid}"), Deadline(10, f"QEMU {pid} of {self.name} to end"),
                 interval=0.2)
            undone.append(f"killed QEMU {pid} of {self.name} through lab host {self.host.name} "
                          "(libvirt's daemon did not answer)")
        if not self.run.session.answers(20):
            undone.append(f"left domain {self.name} defined: libvirt's daemon still does not answer; the next "
                          "run's sweeper undefines it")
            self._dom = None
        return undone

    # ------------------------------------------------------------ XML views

    def live_xml(self) -> etree._Element:
        return X.parse(self.dom.XMLDesc(0))

    def inactive_xml(self) -> etree._Element:
        return X.parse(self.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))

    def boot_deadline(self, what: str) -> Deadline:
        """A boot's deadline for this VM, fitted to its image and the boots measured so far."""
        return self.run.boot_deadline(what)

    def waiter(self, kind: str, predicate):
        """A waiter for this domain's libvirt events of `kind` ("lifecycle", "device-removed",
        ...): register it (`with vm.waiter(...) as w:`) before the action, then `w.wait(deadline)`."""
        return self.run.session.events.waiter(self.dom, kind, predicate)

    def virsh(self, *args, timeout: float = 60):
        """`virsh <args>` against this VM's libvirt, for claims about virsh itself."""
        from .virsh import virsh
        return virsh(self.run.cfg.libvirt_uri, *args, timeout=timeout)

    @verb(lambda self, *a, **k: f"resume {self.name}")
    def resume(self) -> None:
        try:
            self.dom.resume()
        except libvirt.libvirtError as e:
            raise DomainError(f"libvirt could not resume {self.name}: {e.get_error_message()}",
                              e.get_error_message()) from None

    # ------------------------------------------------------------ devices

    def scratch_image(self, name: str, size: str = "64M", fmt: str = "qcow2") -> Path:
        """An empty image in this VM's directory on the lab host (removed with the VM)."""
        return create_image(self.host, self.hdir / f"{name}.{fmt}", size, fmt)

    def image_sha256(self, path, mib: int, fmt: str = "qcow2") -> str:
        return image_sha256(self.host, path, mib, fmt)

    @staticmethod
    def _flags(live: bool, config: bool) -> int:
        f = 0
        if live:
            f |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        if config:
            f |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
        return f

    @verb(lambda self, device, live=True, config=False: f"attach {_describe(device)} to {self.name}"
          f"{' (live)' if live else ''}{' (config)' if config else ''}")
    def attach(self, device: etree._Element, live: bool = True, config: bool = False) -> etree._Element | None:
        """Attach; return the device as libvirt now describes it (live XML when live)."""
        view = self.live_xml if live else self.inactive_xml
        before = {etree.tostring(d) for d in view().find("devices")}
        try:
            self.dom.attachDeviceFlags(X.to_string(device), self._flags(live, config))
        except libvirt.libvirtError as e:
            raise self.refusal(f"attach to {self.name}", e.get_error_message(), AttachRefused) from None
        new = [d for d in view().find("devices") if etree.tostring(d) not in before and d.tag == device.tag]
        return new[0] if new else None

    @verb(lambda self, device, live=True, config=False, **k: f"detach {_describe(device)} from {self.name}"
          f"{' (live: wait for DEVICE_REMOVED)' if live else ''}{' (config)' if config else ''}")
    def detach(self, device: etree._Element, live: bool = True, config: bool = False,
               deadline: Deadline | None = None) -> None:
        """Detach with the same XML; for live, wait for DEVICE_REMOVED (registered
        before the request), then confirm from the re-read XML."""
        deadline = deadline or Deadline(30, f"{device.tag} to leave {self.name}")
        xml = X.to_string(device)
        if live:
            with self.run.session.events.waiter(self.dom, {"device-removed", "device-removal-failed"}) as w:
                try:
                    self.dom.detachDeviceFlags(xml, self._flags(live, config))
                except libvirt.libvirtError as e:
                    raise DomainError(f"detach from {self.name} refused: {e.get_error_message()}") from None
                ev = w.wait(deadline)
                if ev.kind == "device-removal-failed":
                    raise DomainError(f"guest refused to release {ev.detail['alias']} on {self.name}")
            if self.live_xml().find(f"devices/*/alias[@name='{ev.detail['alias']}']") is not None:
                raise DomainError(f"{ev.detail['alias']} is still in {self.name}'s live XML after DEVICE_REMOVED")
        else:
            try:
                self.dom.detachDeviceFlags(xml, self._flags(live, config))
            except libvirt.libvirtError as e:
                raise DomainError(f"detach from {self.name} refused: {e.get_error_message()}") from None
        if config:
            # a --config change sends no event: confirm it from the inactive XML
            key = device_key(device)
            if any(device_key(d) == key for d in self.inactive_xml().find("devices")):
                raise DomainError(f"{key} is still in {self.name}'s persistent definition after detach --config")

    # ------------------------------------------------------------ evidence

    def evidence(self) -> dict[str, str]:
        out = self.access.evidence()
        if self.boot_faults:
            out["hypervisor faults of retried boots"] = "\n".join(self.boot_faults)
        if self.run.session.unanswered:          # asking would wait out a reconnect per VM
            out["live domain XML"] = "(unavailable: libvirt's daemon stopped answering)"
        else:
            try:
                out["live domain XML"] = self.dom.XMLDesc(0) if self.dom else "(no domain)"
            except (libvirt.libvirtError, LabError, AssertionError) as e:
                out["live domain XML"] = f"(unavailable: {e})"
        qlog = self.access.qemu_log_tail(200000)
        if qlog is not None:
            out["QEMU log"] = qlog
        if self.access.has_guest:
            out["guest dmesg"] = self.access.dmesg()
        return out


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


class AttachRefused(AssertionError):
    """libvirt (or QEMU) refused a device attach; the message is libvirt's."""
