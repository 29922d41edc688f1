"""A harness-owned VM, composed of parts (labgrid's target and drivers): its libvirt
domain (`vm.domain`: state, XML, events, attach/detach; lab/vmdomain.py), its guest
access (`vm.access`, `vm.guest`: console, login, SSH; lab/access.py), its QEMU process
(`vm.qemu`: pid, open files, QMP/HMP; lab/qemuproc.py) and its disks (`vm.disks`:
overlay, seed, scratch images; lab/vmdisks.py).  The VM itself holds the lifecycle:
define, start (with boot retries), power off, destroy, migrate, clean up, evidence."""
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
from .steps import verb
from .sweep import undefine
from .timeouts import Deadline, poll
from .errors import LabError
from .refusals import classify
from .access import GuestAccess, HypervisorFault, Reach
from .qemuproc import QemuProcess, QemuProcessNotFound
from .vmdisks import VmDisks
from .vmdomain import AttachRefused, Domain, DomainError, device_key  # noqa: F401  (their home is vmdomain)


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
    def __init__(self, lab, spec: VMSpec, name: str):
        """`lab`: the run's Lab on the lab host this VM is on."""
        self.lab, self.spec, self.name = lab, spec, name
        self.cfg = lab.cfg                           # the lab host's config (read only)
        self.session = lab.session
        self.dir: Path = lab.dir / name              # this machine: transcripts, evidence
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = lab.host
        self.hdir = lab.hdir / name                  # the lab host: overlays, logs QEMU writes
        self.host.makedirs(self.hdir)
        self.serial_log = self.hdir / "serial.log"
        self.mac = random_mac()
        self.port_lease = lab.lease_port()
        self.ssh_port: int = self.port_lease.value
        self.boot_faults: list[str] = []     # hypervisor faults of boots that were retried
        self.domain = Domain(lab.session, name, self.refusal)
        self.disks = VmDisks(self.host, self.hdir, self.dir, name, lab)
        self.qemu = QemuProcess(self.host, name, lambda: self.domain.handle, lab.libvirt_facts.o_direct)
        self.access = GuestAccess(Reach(
            name=name, host=self.host, libvirt_uri=self.cfg.libvirt_uri, image=lab.image, key=lab.key,
            console_login=lab.console_login, mac=self.mac, ssh_port=self.ssh_port, local_dir=self.dir,
            serial_log=self.serial_log, firmware_key_set=bool(self.cfg.firmware),
            efi_boot_file=lab.arch.efi_boot_file, log=lab.log, boot_deadline=lab.boot_deadline), self.domain.state)

    # ------------------------------------------------------------ XML

    def build_xml(self) -> etree._Element:
        """The domain's XML (no side effects: `define` makes the disks it names)."""
        lab, img, arch = self.lab, self.lab.image, self.lab.arch
        overlay = self.disks.overlay
        devices = []
        if self.spec.pcie_root_ports is not None:
            devices += X.simplified_pcie_topology(self.spec.pcie_root_ports, bridge=self.spec.pcie_bridge)
        # User aliases for the harness's own disks: libvirt's own names (virtio-disk0, ...) stay
        # free for a claim that names a device that way (the guide's QEMU command line does).
        devices.append(X.disk(str(overlay), target="vda", bus="virtio", serial="acc-root", alias="ua-acc-root"))
        if img.access == "nocloud":
            # A CD-ROM on the machine's own SATA controller, as cloud tools attach a NoCloud seed: it
            # takes no PCI slot, no virtio or SCSI disk name and no target a claim's disks use.
            devices.append(X.disk(str(self.disks.seed), target="sdzz", bus="sata", fmt="raw", device="cdrom",
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
                cmdline += f" acc.sshkey={lab.key.public_blob}"
            if self.spec.extra_cmdline:
                cmdline += " " + self.spec.extra_cmdline
        meta = X.harness_metadata(lab.run_id, os.getpid(), self.spec.role, [self.hdir], work_dir=lab.work_dir,
                                  hostdir=self.cfg.host_work_dir)
        return X.domain(self.name, virt_type=self.cfg.virt_type, arch=arch,
                        memory_mib=self.spec.memory_mib or self.cfg.memory_mib, vcpus=self.spec.vcpus,
                        kernel=img.kernel, initrd=img.initrd, cmdline=cmdline, metadata=meta, devices=devices,
                        shared_memory=self.spec.shared_memory, emulator=lab.emulator,
                        overrides=self.spec.overrides, qemu_args=self.spec.qemu_args, firmware=img.firmware)

    def define(self) -> "VM":
        self.disks.make()
        xml = X.to_string(self.build_xml())
        (self.dir / "defined.xml").write_text(xml)
        self.domain.define(xml)
        return self

    # ------------------------------------------------------------ lifecycle

    @verb(lambda self, *a, **k: f"start {self.name}")
    def start(self, deadline: Deadline | None = None, wait: bool = True) -> "VM":
        """Start; with `wait`, until the guest is ready.  A boot the hypervisor itself
        stops (HypervisorFault) is started again up to [host] boot_retries times,
        each one logged and kept in the VM's evidence."""
        retries = self.cfg.boot_retries if wait else 0
        for attempt in range(retries + 1):
            self._reset_boot()
            t0 = time.monotonic()
            try:
                self.domain.handle.create()
            except libvirt.libvirtError as e:
                raise self.refusal(f"libvirt could not start {self.name}", e.get_error_message()) from None
            self._after_start()
            if not wait:
                return self
            try:
                self.wait_ready(deadline)
                self.lab.boot_seconds.append(time.monotonic() - t0)
                return self
            except HypervisorFault as e:
                if attempt == retries:
                    raise
                self.boot_faults.append(str(e))
                self.lab.log(f"[lab] {e}; starting it again ({attempt + 1} of {retries}, [host] boot_retries)")
                self.destroy()

    def start_with_console(self, transcript: Path) -> Console:
        """`virsh start --console`: returns the attached console; call wait_ready() next."""
        self._reset_boot()
        con = self.access.start_attached(transcript)
        poll(lambda: self.domain.is_active() or not con.child.isalive(), Deadline(20, f"{self.name} to start"))
        if not self.domain.is_active():
            raise DomainError(f"'virsh start --console {self.name}' did not start it: {con.tail()!r}")
        self._after_start()
        return con

    def refusal(self, what: str, message: str, kind=None) -> Exception:
        """libvirt's refusal as the error it is: a lab problem (security driver, permissions,
        a harness helper not answering; lab/refusals.py) or the product's answer (`kind`,
        DomainError by default)."""
        problem = classify(what, message, [self.lab.hdir])
        if problem is not None:
            return problem
        return kind(message) if kind else DomainError(f"{what}: {message}", message)

    def _reset_boot(self) -> None:
        self.access.reset()

    def _after_start(self) -> None:
        alias = self.domain.live_xml().find("devices/interface[@type='user']/alias")
        netdev = "host" + alias.get("name") if alias is not None else "hostnet0"
        out = self.qemu.monitor(f"hostfwd_add {netdev} tcp:127.0.0.1:{self.ssh_port}-:22", hmp=True)
        if out.strip():
            raise DomainError(f"could not forward 127.0.0.1:{self.ssh_port} to {self.name}'s SSH: {out.strip()}")

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
        outcome = migrate_live(self.domain.handle, target, deadline or Deadline(120, f"{self.name}'s live migration"))
        if outcome.done:
            self._reset_boot()
        return outcome

    @verb(lambda self, *a, **k: f"power off {self.name} from inside, wait for libvirt's stopped event")
    def poweroff(self, deadline: Deadline | None = None) -> None:
        """A clean shutdown from inside the guest; waits for libvirt's stopped event.  The
        budget follows the boots measured in this run (a shutdown is no slower than a boot),
        so a host busy with other work does not fail a good guest."""
        deadline = deadline or self.lab.boot_deadline(f"{self.name} to power off")
        with self.domain.waiter("lifecycle", lambda e: e.detail["event"] == "stopped") as w:
            try:
                self.guest.run("sync; poweroff", timeout=10, check=False)
            except (EOFError, OSError, ConnectionError, TimeoutError):
                pass      # the connection may drop while the guest goes down
            if self.domain.is_active():
                w.wait(deadline)
        self._reset_boot()

    def destroy(self) -> None:
        if self.domain.known and self.domain.is_active():
            try:
                self.domain.handle.destroy()
            except libvirt.libvirtError as e:
                if self.domain.is_active():
                    raise DomainError(f"could not destroy {self.name}: {e.get_error_message()}") from None
        self._reset_boot()

    def cleanup(self) -> list[str]:
        """Undo everything this VM made; returns what was undone."""
        undone = []
        self.access.close_consoles()
        if self.domain.known and self.lab.session.unanswered:
            undone += self._stop_without_libvirt()
        if self.domain.known and not self.lab.session.unanswered:
            if self.domain.is_active():
                self.destroy()
                undone.append(f"destroyed domain {self.name}")
            try:
                undefine(self.domain.handle)
                undone.append(f"undefined domain {self.name}")
            except libvirt.libvirtError:
                pass
            self.domain.handle = None
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
        if not self.lab.session.answers(20):
            undone.append(f"left domain {self.name} defined: libvirt's daemon still does not answer; the next "
                          "run's sweeper undefines it")
            self.domain.forget()
        return undone

    def boot_deadline(self, what: str) -> Deadline:
        """A boot's deadline for this VM, fitted to its image and the boots measured so far."""
        return self.lab.boot_deadline(what)

    def virsh(self, *args, timeout: float = 60):
        """`virsh <args>` against this VM's libvirt, for claims about virsh itself."""
        from .virsh import virsh
        return virsh(self.cfg.libvirt_uri, *args, timeout=timeout)

    # ------------------------------------------------------------ evidence

    def evidence(self) -> dict[str, str]:
        out = self.access.evidence()
        if self.boot_faults:
            out["hypervisor faults of retried boots"] = "\n".join(self.boot_faults)
        if self.lab.session.unanswered:          # asking would wait out a reconnect per VM
            out["live domain XML"] = "(unavailable: libvirt's daemon stopped answering)"
        else:
            try:
                out["live domain XML"] = self.domain.handle.XMLDesc(0) if self.domain.known else "(no domain)"
            except (libvirt.libvirtError, LabError, AssertionError) as e:
                out["live domain XML"] = f"(unavailable: {e})"
        qlog = self.access.qemu_log_tail(200000)
        if qlog is not None:
            out["QEMU log"] = qlog
        if self.access.has_guest:
            out["guest dmesg"] = self.access.dmesg()
        return out
