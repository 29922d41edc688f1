"""How the harness reaches one domain's guest: the serial console (QEMU's log of it and
`virsh console`), the end of the boot, the console log-in that sets up an image without
cloud-init, and SSH pinned to the host key the console showed.  It knows the domain only
through `Reach` (names, ports, credentials, where the console log is) and a state reader."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import libvirt

from .errors import LabError
from .guest import Guest
from .guest.console import PANIC_RE, Console, GuestPanic
from .guest.login import (PREPARE_ERRORS, READY_RE, boot_done, boot_done_patterns, host_key_from_console, parse_prepared,
                          prepare_script)
from .guest.ssh import SSH
from .steps import verb
from . import timeouts
from .timeouts import Deadline, poll


class HypervisorFault(LabError):
    """The hypervisor stopped the guest (for example a KVM internal error pausing it
    while it boots): the host's fault, not the product's."""


class GuestNotReady(AssertionError):
    """The guest did not become reachable (boot, console log-in or SSH)."""


@dataclass
class Reach:
    """What reaching one guest takes, and nothing else of the run."""
    name: str
    host: object                      # the lab host (lab/hostexec.py)
    libvirt_uri: str
    image: object                     # the run's GuestImage: access, kernel, firmware, console tty
    key: object                       # the run's SSH key
    console_login: object
    mac: str                          # the management NIC (the console set-up brings it up)
    ssh_port: int                     # 127.0.0.1 on the lab host, forwarded to the guest's 22
    local_dir: Path                   # this machine: console transcripts
    serial_log: object                # the lab host: QEMU's log of the serial console
    firmware_key_set: bool            # guest.firmware was given in the lab config
    efi_boot_file: str                # the arch's removable-media boot file (for the empty-console hint)
    log: Callable[[str], None]
    boot_deadline: Callable[[str], Deadline]


class GuestAccess:
    def __init__(self, reach: Reach, state: Callable[[], tuple[str, int]]):
        self.r = reach
        self._state = state               # () -> (libvirt state name, reason)
        self.boot_id: str | None = None
        self.host_key: str | None = None
        self.host_key_source = ""         # where the pinned SSH host key came from
        self.consoles: list[Console] = []
        self._guest: Guest | None = None
        self.start_console: Console | None = None   # the console `start --console` attached

    # ------------------------------------------------------------ the console log

    def serial_text(self) -> str:
        try:
            return self.r.host.read_bytes(self.r.serial_log).decode(errors="replace")
        except FileNotFoundError:
            return ""

    def qemu_log_tail(self, n: int = 600) -> str | None:
        """The end of this domain's QEMU log on the lab host (None: there is none)."""
        try:
            return self.r.host.read_text(f"/var/log/libvirt/qemu/{self.r.name}.log")[-n:]
        except (OSError, LabError):
            return None

    def check_alive(self) -> None:
        """While booting: fail fast on a guest panic, a domain that stopped, or one the
        hypervisor paused (nothing pauses a booting guest but a fault)."""
        text = self.serial_text()
        m = PANIC_RE.search(text)
        if m:
            raise GuestPanic(f"{self.r.name}: guest panicked: {m.group(0)}")
        try:
            st, reason = self._state()
        except libvirt.libvirtError:
            st, reason = "unknown", 0
        if st == "paused":
            tail = self.qemu_log_tail() or ""
            why = re.search(r"KVM internal error[^\n]*|emulation failure|[^\n]*error[^\n]*", tail)
            raise HypervisorFault(f"{self.r.name} was paused by the hypervisor while booting (reason {reason}): "
                                  f"{why.group(0) if why else 'see the QEMU log'}; console tail: {text[-200:]!r}")
        if st in ("shutoff", "crashed", "unknown"):
            raise GuestNotReady(f"{self.r.name} stopped while booting (state {st}, reason {reason}); "
                                f"console tail: {text[-400:]!r}")

    # ------------------------------------------------------------ boot and log-in

    def reset(self) -> None:
        """A new boot begins: what was known of the last one goes."""
        self.boot_id = None
        self.start_console = None
        if self._guest:
            self._guest.close()
            self._guest = None

    @verb(lambda self, *a, **k: f"wait for {self.r.name}: the console says the boot is done, then SSH")
    def wait_ready(self, deadline: Deadline | None = None) -> Guest:
        """Ready = the console shows the end of the boot (the harness's marker, cloud-init's
        host keys, or a login prompt, by the image's access) and SSH answers with the host
        key the console showed."""
        deadline = deadline or self.r.boot_deadline(f"{self.r.name} to boot")
        access = self.r.image.access

        def ready():
            self.check_alive()
            return boot_done(self.serial_text(), access)

        m = poll(ready, deadline, interval=0.05 if access == "cmdline" else 0.2,
                 detail=lambda: f"the end of the boot on the console ({access} image); "
                                f"console tail: {self.serial_text()[-400:]!r}{self.silent_console_hint()}")
        if m.re is READY_RE:
            self.boot_id = m.group(1)
            if m.group(2) and m.group(2) != "none":
                self.host_key, self.host_key_source = m.group(2), "the harness's marker on the console"
        elif access == "nocloud":
            key = host_key_from_console(self.serial_text())
            if key:
                self.host_key, self.host_key_source = key, "cloud-init's host-key block on the console"
        else:
            self._prepare_over_console(deadline)
        ssh = SSH("127.0.0.1", self.r.ssh_port, self.r.key, host_key=self.host_key, via=self.r.host)
        ssh.connect(deadline, alive=self.check_alive)
        if not self.host_key_source:
            self.host_key_source = "trusted on first use (the console showed no host key)"
            self.r.log(f"[lab] {self.r.name}: SSH host key {ssh.host_key[:24]}... {self.host_key_source}")
        self.host_key = ssh.host_key
        self._guest = Guest(ssh)
        if self.boot_id is None:
            self.boot_id = self._guest.boot_id()
        return self._guest

    def boot_done_patterns(self) -> list:
        """What this guest's console shows at the end of its boot (by its image's access)."""
        return boot_done_patterns(self.r.image.access)

    def silent_console_hint(self) -> str:
        """For a boot that timed out: what a console that never showed a line points at."""
        if self.serial_text().strip():
            return ""
        img = self.r.image
        if img.kernel:
            return (f". The console stayed empty: the kernel printed nothing on {img.console_tty} "
                    f"(console= on its command line, or the guest's serial device)")
        other = "efi" if img.firmware == "bios" else "bios"
        return (f". The console stayed empty: the firmware probably never reached the image's boot loader. "
                f"The image was booted through {img.firmware.upper()} (guest.firmware = {img.firmware!r}"
                f"{'' if self.r.firmware_key_set else ', the default'}): an image made for "
                f"{other.upper()} shows nothing; a UEFI image also needs the lab host's firmware package "
                f"(edk2-aarch64 / edk2-ovmf, qemu-efi-aarch64 / ovmf) and a boot loader at "
                f"EFI/BOOT/{self.r.efi_boot_file or 'BOOT<arch>.EFI'} or in its NVRAM, and prints "
                f"on the serial port only when its console is set there")

    @verb(lambda self, *a, **k: f"log in on {self.r.name}'s console: the run's SSH key, the management NIC, sshd")
    def _prepare_over_console(self, deadline: Deadline) -> None:
        """An image without cloud-init: log in on the serial console with the lab's
        credentials, install the run's key, bring up the management NIC and sshd, and
        pin the host key the guest shows there.  Logs out again."""
        con = self.start_console if self.start_console and self.start_console.child.isalive() else None
        own = con is None
        if own:
            con = self.console()
            con.wait_connected(deadline.sub(15, "virsh console"))
        try:
            con.sync_shell(deadline)          # logs in with the run's console login (default_login)
            r = con.run(prepare_script(self.r.key.public_line, self.r.mac), deadline.sub(90, "console set-up"),
                        check=False)
            out = r.stdout
            if r.rc != 0:
                raise GuestNotReady(f"{self.r.name}: setting the guest up over its console failed (exit {r.rc}: "
                                    f"{PREPARE_ERRORS.get(r.rc, 'see the console transcript')}): {out.strip()[-300:]!r}")
            got = parse_prepared(out)
            if not got.get("HOSTKEY"):
                raise GuestNotReady(f"{self.r.name}: the guest has no ed25519 SSH host key "
                                    f"(/etc/ssh/ssh_host_ed25519_key.pub): {out.strip()[-300:]!r}")
            self.host_key, self.host_key_source = got["HOSTKEY"], "the guest's key file, read on its console"
            self.boot_id = got.get("BOOT_ID") or None
            con.logout(deadline.sub(30, "the login prompt after the console set-up"))
        finally:
            if own:
                con.close()

    # ------------------------------------------------------------ the ways in

    @property
    def guest(self) -> Guest:
        if self._guest is None:
            raise GuestNotReady(f"{self.r.name} has no ready guest (start it and wait_ready first)")
        return self._guest

    @property
    def has_guest(self) -> bool:
        return self._guest is not None

    def console(self) -> Console:
        con = Console.attach(self.r.libvirt_uri, self.r.name, self.r.local_dir / f"console-{len(self.consoles)}.log")
        con.default_login = self.r.console_login      # sync_shell logs in where the console asks
        self.consoles.append(con)
        return con

    def start_attached(self, transcript: Path) -> Console:
        """`virsh start --console`: the attached console, kept for the console log-in."""
        con = Console.start_attached(self.r.libvirt_uri, self.r.name, transcript)
        con.default_login = self.r.console_login
        self.consoles.append(con)
        self.start_console = con
        return con

    def connect_ssh(self, deadline: Deadline) -> SSH:
        """A new SSH connection to the guest, as the harness makes one (through the lab host,
        pinned to the guest's host key); the caller closes it."""
        ssh = SSH("127.0.0.1", self.r.ssh_port, self.r.key, host_key=self.host_key, via=self.r.host)
        ssh.connect(deadline)
        return ssh

    def unresponsive(self, seconds: float = 20) -> str | None:
        """Why this guest cannot serve another test as it is (None: it runs and answers
        over SSH within `seconds`)."""
        try:
            st, reason = self._state()
        except libvirt.libvirtError as e:
            return f"libvirt cannot read its state: {e.get_error_message()}"
        if st != "running":
            return f"the domain is {st} (reason {reason})"
        panic = PANIC_RE.search(self.serial_text())
        if panic:
            return f"the guest panicked: {panic.group(0)}"
        if self._guest is None:
            return "it has no ready guest"
        try:
            r = self._guest.run("true", timeout=seconds, check=False)     # run() scales it
        except Exception as e:     # any way SSH can fail means the same here: it does not answer
            return f"its guest did not answer over SSH within {seconds * timeouts.factor():.0f} s ({type(e).__name__}: {e})"
        return None if r.rc == 0 else f"`true` in the guest exited {r.rc}"

    def close_consoles(self) -> None:
        for con in self.consoles:
            con.close()
        self.consoles = []

    def evidence(self) -> dict[str, str]:
        out = {"console (serial log)": self.serial_text()}
        for con in self.consoles:
            try:
                out[f"console transcript {con.transcript.name}"] = con.transcript.read_bytes().decode(errors="replace")
            except OSError:
                pass
        return out

    def dmesg(self) -> str:
        try:
            return self._guest.run("dmesg", timeout=10, check=False).stdout
        except Exception as e:     # evidence must never mask the failure itself
            return f"(unavailable over SSH: {type(e).__name__}: {e})"
