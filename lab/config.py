"""Lab config: one TOML file per lab host, validated strictly before any VM starts.

Every error is one line naming the file, the key, the value and the fix.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .hostexec import LabPath

from .arch import ARCHES
from .errors import LabError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_LAB = REPO / "labs" / "local.toml"


class LabConfigError(LabError, ValueError):
    pass


@dataclass(frozen=True)
class PciDevice:
    bdf: str
    note: str = ""


@dataclass(frozen=True)
class SriovPf:
    bdf: str
    max_vfs: int = 0
    note: str = ""


@dataclass(frozen=True)
class UsbDevice:
    vendor: str
    product: str
    bus: int | None = None
    device: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Inventory:
    pci: tuple = ()
    sriov_pfs: tuple = ()
    hpre: tuple = ()
    usb: tuple = ()


@dataclass(frozen=True)
class LabConfig:
    path: Path
    name: str
    libvirt_uri: str
    virt_type: str
    arch: str
    work_dir: Path
    timeout_factor: float
    image: str                 # "default", a built-in distribution image, or a path to a qcow2 image
    image_access: str          # cmdline | nocloud | console-password
    memory_mib: int
    ssh_mode: str              # user-hostfwd
    ssh_port_base: int
    fault_backend: str         # auto | dm-error | nbdkit | none
    inventory: Inventory = field(default_factory=Inventory)
    bridge: str = ""
    expected_deviations: tuple = ()   # claim IDs where this platform is known to differ from the guide
    slots: int = 1             # harness workers/runs that may drive this host at once
    boot_retries: int = 0      # guest boots the hypervisor stopped, started again
    shell_address: str = ""    # SSH address for host commands ("" with a local URI: this machine)
    shell_port: int = 22
    shell_user: str = "root"
    shell_key_file: str = ""
    shell_known_hosts: str = ""
    host_work_dir: LabPath = LabPath("/var/lib/acc-harness")   # on the lab host (== work_dir on this machine)
    daemon: str = "system"     # system: libvirt at libvirt_uri is the host's; private: the harness starts one
    emulator: str = ""         # QEMU binary on the lab host for every domain ("" : libvirt's default)
    qemu_source: str = ""      # QEMU source (tarball or git checkout) the harness builds for this lab
    qemu_source_sha256: str = ""   # pin of that tarball
    guest_user: str = "root"   # console login (access = "console-password")
    password_file: str = ""    # where that user's password is read from (never logged)
    password_env: str = ""     # or the environment variable that holds it
    firmware: str = ""         # bios | efi for an image booted by firmware ("" : the architecture's own)
    # [shell] keys the file sets itself: the others come from the user's OpenSSH config
    # (Host alias, User, Port, IdentityFile, ProxyJump), as they do for libvirt's qemu+ssh
    shell_given: frozenset = frozenset()

    @property
    def private_daemon_dir(self) -> Path:
        """Where a private libvirt daemon of this lab host keeps its state."""
        return self.work_dir / "daemon"

    @property
    def on_this_machine(self) -> bool:
        """Host commands run on this machine (a local libvirt URI and no [shell] address)."""
        return not self.shell_address and "://" in self.libvirt_uri and self.libvirt_uri.split("://", 1)[1].startswith("/")

    def host(self):
        """The lab host's commands and files: SSH to it, else this machine (a lab config
        with a remote libvirt URI and no [shell] address is refused when it is loaded)."""
        from .hostexec import LocalHost, SshHost
        if self.shell_address:
            g = self.shell_given
            return SshHost(self.name, self.shell_address, self.shell_port if "port" in g else None,
                           self.shell_user if "user" in g else None, self.shell_key_file,
                           known_hosts=self.shell_known_hosts)
        return LocalHost(self.name)

    @property
    def uses_default_image(self) -> bool:
        return self.image == "default"

    @property
    def image_on_lab_host(self) -> str | None:
        """The path of an image given as already on the lab host (`lab-host:/path`), else None."""
        return self.image[len(LAB_HOST_PREFIX):] if self.image.startswith(LAB_HOST_PREFIX) else None

    @property
    def builtin_image(self) -> bool:
        """A distribution image the harness builds (lab/cloud_image.py)."""
        return self.image in BUILTIN_IMAGES

    def guest_password(self) -> "Secret":
        """The console password of access = 'console-password', read now (a file may be
        written by the image build after the config was loaded)."""
        if self.password_env:
            v = os.environ.get(self.password_env, "")
            if not v:
                raise LabConfigError(f"{self.path}: key 'guest.password_env' names {self.password_env}, which is "
                                     f"unset or empty; fix: export {self.password_env} with the guest's password")
            return Secret(v, f"${self.password_env}")
        p = Path(self.password_file)
        try:
            v = p.read_text().strip()
        except OSError as e:
            raise LabConfigError(f"{self.path}: key 'guest.password_file' names {p}, which cannot be read "
                                 f"({e.strerror}); fix: write the password there (mode 0600)") from None
        if not v:
            raise LabConfigError(f"{self.path}: key 'guest.password_file' names {p}, which is empty; "
                                 f"fix: write the password there")
        return Secret(v, str(p))


class Secret:
    """A password: shown as where it came from, never as itself."""

    def __init__(self, value: str, source: str):
        self._value, self.source = value, source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"<secret from {self.source}>"

    __str__ = __repr__


_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_HEX4 = re.compile(r"^[0-9a-f]{4}$")
_URI = re.compile(r"^(qemu|qemu\+ssh|qemu\+libssh|qemu\+libssh2|qemu\+tcp|qemu\+tls|qemu\+unix|test)://[^\s]*/(system|session|default)(\?[^\s]*)?$")

# key -> (type, default or REQUIRED, check(value) -> error text or None, fix hint)
REQUIRED = object()


def _one_of(*choices):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _positive(v):
    return None if v > 0 else "must be > 0"


def _uri(v):
    return None if _URI.match(v) else "is not a libvirt URI like qemu:///system or qemu+ssh://user@host/system"


def _abs_path(v):
    return None if v.startswith("/") else "must be an absolute path"


# Distribution images the harness builds itself (lab/cloud_image.py), with the access each needs.
BUILTIN_IMAGES = {"debian12-cloud": "nocloud", "debian12-password": "console-password"}
# `[guest] image = "lab-host:/path"`: an image already on the lab host (used in place, never copied).
LAB_HOST_PREFIX = "lab-host:"

SCHEMA = {
    "host": {
        "name": (str, REQUIRED, lambda v: None if re.match(r"^[A-Za-z0-9_.-]+$", v) else "use letters, digits, '.', '_', '-'", "a short host name"),
        "libvirt_uri": (str, REQUIRED, _uri, "qemu:///system for this machine, qemu+ssh://root@HOST/system for a remote lab host"),
        "virt_type": (str, "kvm", _one_of("kvm", "qemu"), "'kvm' on real lab hosts, 'qemu' (TCG) where KVM is unusable"),
        "arch": (str, "x86_64", _one_of(*ARCHES), f"one of {', '.join(ARCHES)}"),
        "work_dir": (str, "/var/lib/acc-harness", _abs_path, "an absolute directory the harness owns (images, overlays, leases)"),
        "timeout_factor": (float, 1.0, _positive, "a number > 0 that scales every deadline (2.0 for a slow host)"),
        "bridge": (str, "", None, "name of a lab bridge for NIC tests, or empty for the harness's own"),
        "slots": (int, 1, lambda v: None if 1 <= v <= 64 else "must be within 1..64",
                  "how many harness workers (xdist workers or concurrent runs) may use this host at once"),
        "boot_retries": (int, 0, lambda v: None if 0 <= v <= 5 else "must be within 0..5",
                         "how often a guest boot that the hypervisor itself stops (KVM internal error) is "
                         "started again; 0 on real lab hosts, where that is a finding"),
        "daemon": (str, "system", _one_of("system", "private"),
                   "'system' (the host's libvirtd) or 'private' (the harness starts its own libvirtd for this "
                   "host in a private mount namespace; libvirt_uri must then name its socket under work_dir)"),
    },
    "guest": {
        "image": (str, "default", lambda v: None if v == "default" or v in BUILTIN_IMAGES or v.startswith("/")
                  or v.startswith(LAB_HOST_PREFIX + "/")
                  else f"must be 'default', one of {', '.join(BUILTIN_IMAGES)}, an absolute path to a qcow2 image "
                  f"on this machine, or {LAB_HOST_PREFIX}/path for one on the lab host",
                  "'default' (the harness's own guest), a built-in distribution image "
                  f"({', '.join(BUILTIN_IMAGES)}), /path/to/image.qcow2 (on this machine: copied to the lab host, "
                  f"cached there by content) or {LAB_HOST_PREFIX}/path/to/image.qcow2 (already on the lab host)"),
        "access": (str, "cmdline", _one_of("cmdline", "nocloud", "console-password"),
                   "'cmdline' for the default image, 'nocloud' for a cloud image (cloud-init), 'console-password' "
                   "for an image without cloud-init (the harness logs in on the serial console)"),
        "user": (str, "root", lambda v: None if re.match(r"^[a-z_][a-z0-9_-]*$", v) else "is not a user name",
                 "the user the harness logs in as on the serial console (access = 'console-password')"),
        "password_file": (str, "", lambda v: None if not v or v.startswith("/") else "must be an absolute path",
                          "an absolute path to a file holding that user's password (mode 0600)"),
        "password_env": (str, "", lambda v: None if not v or re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", v)
                         else "is not an environment variable name", "the environment variable holding the password"),
        "memory_mib": (int, 384, _positive, "guest memory in MiB"),
        "firmware": (str, "", _one_of("", "bios", "efi"),
                     "what boots an image without a kernel of its own: 'bios' (x86_64 only) or 'efi' (UEFI, "
                     "through libvirt's firmware autoselection: Debian's ovmf / qemu-efi-aarch64, openEuler's "
                     "edk2-ovmf / edk2-aarch64 on the lab host); empty: the architecture's own (x86_64 bios, "
                     "aarch64 efi)"),
    },
    "ssh": {
        "mode": (str, "user-hostfwd", _one_of("user-hostfwd"), "'user-hostfwd' (QEMU user networking, forward on 127.0.0.1)"),
        "port_base": (int, 22200, lambda v: None if 1024 <= v <= 64000 else "must be within 1024..64000", "first local port for guest SSH forwards"),
    },
    "shell": {
        "address": (str, "", None, "the lab host's SSH address for host commands (empty: this machine runs them; "
                    "a qemu+ssh:// lab host without it has no host-side capabilities)"),
        "port": (int, 22, lambda v: None if 1 <= v <= 65535 else "must be within 1..65535", "the lab host's SSH port"),
        "user": (str, "root", None, "the SSH user on the lab host (root: the harness writes sysfs and runs dmsetup)"),
        "key_file": (str, "", lambda v: None if not v or v.startswith("/") else "must be an absolute path",
                     "an absolute path to the SSH private key, or empty for the default keys"),
        "known_hosts": (str, "", lambda v: None if not v or v.startswith("/") else "must be an absolute path",
                        "an absolute path to a known_hosts file with the lab host's key (empty: ~/.ssh/known_hosts)"),
        "work_dir": (str, "/var/lib/acc-harness", _abs_path, "a directory on the lab host the harness owns "
                     "(guest images, overlays, fault backing files)"),
    },
    "qemu": {
        "emulator": (str, "", lambda v: None if not v or v.startswith("/") else "must be an absolute path",
                     "the QEMU binary on the lab host every domain uses (libvirt's <emulator>), for example "
                     "/usr/libexec/qemu-kvm; empty: libvirt's default"),
        "source": (str, "", None, "a QEMU source tarball or git checkout (relative to this file) the harness "
                   "builds for this lab, for example openEuler's QEMU; empty: no build"),
        "source_sha256": (str, "", lambda v: None if not v or re.match(r"^[0-9a-f]{64}$", v) else
                          "must be 64 lower-case hex digits", "the sha256 the source tarball must have"),
    },
    "faults": {
        "backend": (str, "auto", _one_of("auto", "dm-error", "nbdkit", "none"), "auto, dm-error, nbdkit or none"),
    },
    "expect": {
        "deviations": (list, [], lambda v: None if all(isinstance(x, str) and re.match(r"^[A-Z]+-\d+$", x) for x in v)
                       else "must list claim IDs like 'USB-3'", "claim IDs whose documented behaviour this platform "
                       "is known not to follow (reported as deviations, not failures)"),
    },
    "inventory": {
        "pci": (list, [], None, "a list of {bdf = '0000:04:10.1'} tables"),
        "sriov_pfs": (list, [], None, "a list of {bdf = '0000:03:00.0', max_vfs = 8} tables"),
        "hpre": (list, [], None, "a list of {bdf = '0000:79:00.0'} tables"),
        "usb": (list, [], None, "a list of {vendor = '0781', product = '5567'} tables"),
    },
}


def load(path: Path | str | None = None) -> LabConfig:
    """One lab host's config (a multi-host config is refused here: see load_set)."""
    path = Path(path) if path else DEFAULT_LAB
    raw = _read(path)
    if "hosts" in raw:
        raise LabConfigError(f"{path}: lists several lab hosts ([[hosts]]) where one is expected; "
                             f"fix: pass one host's config")
    return from_dict(raw, path)


def from_dict(raw: dict, path: Path) -> LabConfig:
    def err(key, msg, fix=""):
        text = f"{path}: key '{key}' {msg}" + (f"; fix: {fix}" if fix else "")
        # One line, whatever the file held: a key or path with a newline or a control
        # character is shown escaped (found by tests/test_config_fuzz.py: a key '\n').
        return LabConfigError("".join(c if c.isprintable() else repr(c)[1:-1] for c in text))

    for section in raw:
        if section not in SCHEMA:
            raise err(section, "is not a known section", f"use one of [{'], ['.join(SCHEMA)}]")
    vals: dict = {}
    for section, keys in SCHEMA.items():
        got = raw.get(section, {})
        if not isinstance(got, dict):
            raise err(section, "must be a table", f"write it as [{section}]")
        for k in got:
            if k not in keys:
                raise err(f"{section}.{k}", "is not a known key", f"use one of {', '.join(keys)}")
        for k, (typ, default, check, fix) in keys.items():
            key = f"{section}.{k}"
            if k not in got:
                if default is REQUIRED:
                    raise err(key, "is missing", fix)
                vals[key] = default
                continue
            v = got[k]
            if typ is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
                raise err(key, f"has value {v!r} of type {type(v).__name__}, expected {typ.__name__}", fix)
            if check:
                problem = check(v)
                if problem:
                    raise err(key, f"has value {v!r} that {problem}", fix)
            vals[key] = v

    if vals["guest.image"] in BUILTIN_IMAGES:
        want = BUILTIN_IMAGES[vals["guest.image"]]
        if vals["guest.access"] != want:
            raise err("guest.access", f"is {vals['guest.access']!r}, but the built-in image {vals['guest.image']} "
                      f"takes {want!r}", f"write access = '{want}'")
    elif vals["guest.image"] != "default":
        img = Path(vals["guest.image"])
        if vals["guest.image"].startswith(LAB_HOST_PREFIX):
            pass        # on the lab host: checked there when a run starts
        elif not img.is_file():
            raise err("guest.image", f"names {img}, which does not exist",
                      "build or copy the image there, or use image = 'default'")
        if vals["guest.access"] == "cmdline":
            raise err("guest.access", "is 'cmdline', which only the default image understands",
                      "use access = 'nocloud' with a cloud image, 'console-password' with one without cloud-init")
    if vals["guest.firmware"] == "bios" and vals["host.arch"] != "x86_64":
        raise err("guest.firmware", f"is 'bios', but {vals['host.arch']} guests have no BIOS",
                  "set firmware = 'efi' (UEFI) or leave it out")
    if vals["guest.access"] == "console-password":
        if bool(vals["guest.password_file"]) == bool(vals["guest.password_env"]):
            raise err("guest.password_file", "and guest.password_env: access = 'console-password' needs exactly one",
                      "name the file (password_file = '/path', mode 0600) or the variable (password_env = 'NAME') "
                      "that holds the console password")
    elif vals["guest.password_file"] or vals["guest.password_env"]:
        key = "guest.password_file" if vals["guest.password_file"] else "guest.password_env"
        raise err(key, f"is set with access = {vals['guest.access']!r}, which logs in with no password",
                  "drop it, or use access = 'console-password'")
    if not vals["shell.address"] and not vals["host.libvirt_uri"].split("://", 1)[-1].startswith("/"):
        raise err("host.libvirt_uri", f"names a remote lab host ({vals['host.libvirt_uri']!r}) but [shell] has no "
                  "address: the harness would make overlays, bridges and fault devices on this machine instead",
                  "add [shell] address, user and key_file for the same lab host (its commands and files go there)")
    if vals["host.daemon"] == "private":
        sock = f"{vals['host.work_dir'].rstrip('/')}/daemon/sock/libvirt-sock"
        want = f"qemu+unix:///system?socket={sock}"
        if vals["host.libvirt_uri"] != want:
            raise err("host.libvirt_uri", f"has value {vals['host.libvirt_uri']!r}, but daemon = 'private' serves "
                      f"{want}", f"write libvirt_uri = \"{want}\"")
    qemu_source = ""
    if vals["qemu.source"]:
        if vals["qemu.emulator"]:
            raise err("qemu.source", "is set together with qemu.emulator", "set one: emulator (an installed QEMU) "
                      "or source (the harness builds it)")
        if vals["host.arch"] != "x86_64":
            raise err("qemu.source", f"asks for a QEMU build on a {vals['host.arch']} lab host, but the harness "
                      "builds x86_64-softmmu only", "build QEMU for that lab host yourself and set qemu.emulator "
                      "to its path there")
        src = (path.parent / vals["qemu.source"]).resolve()
        if not src.exists():
            raise err("qemu.source", f"names {src}, which does not exist",
                      "name the QEMU source tarball or git checkout, relative to this file or absolute")
        qemu_source = str(src)
    elif vals["qemu.source_sha256"]:
        raise err("qemu.source_sha256", "is set without qemu.source", "drop it, or name the source it pins")
    inv = _inventory(vals, err)
    return LabConfig(
        path=path, name=vals["host.name"], libvirt_uri=vals["host.libvirt_uri"],
        virt_type=vals["host.virt_type"], arch=vals["host.arch"], work_dir=Path(vals["host.work_dir"]),
        timeout_factor=vals["host.timeout_factor"], bridge=vals["host.bridge"],
        image=vals["guest.image"], image_access=vals["guest.access"], memory_mib=vals["guest.memory_mib"],
        firmware=vals["guest.firmware"],
        ssh_mode=vals["ssh.mode"], ssh_port_base=vals["ssh.port_base"],
        fault_backend=vals["faults.backend"], inventory=inv,
        expected_deviations=tuple(vals["expect.deviations"]),
        slots=vals["host.slots"], daemon=vals["host.daemon"], boot_retries=vals["host.boot_retries"],
        shell_address=vals["shell.address"], shell_port=vals["shell.port"], shell_user=vals["shell.user"],
        shell_key_file=vals["shell.key_file"], shell_known_hosts=vals["shell.known_hosts"],
        host_work_dir=LabPath(vals["shell.work_dir"] if vals["shell.address"] else vals["host.work_dir"]),
        emulator=vals["qemu.emulator"], qemu_source=qemu_source, qemu_source_sha256=vals["qemu.source_sha256"],
        guest_user=vals["guest.user"], password_file=vals["guest.password_file"],
        password_env=vals["guest.password_env"],
        shell_given=frozenset(k for k in (raw.get("shell") or {}) if isinstance(raw.get("shell"), dict)),
    )


def _inventory(vals, err) -> Inventory:
    def items(key, cls, required, checks):
        out = []
        for i, item in enumerate(vals[key]):
            where = f"{key}[{i}]"
            if not isinstance(item, dict):
                raise err(where, f"has value {item!r}, expected a table", f"write {{{', '.join(f'{r} = ...' for r in required)}}}")
            fields = cls.__dataclass_fields__
            for k in item:
                if k not in fields:
                    raise err(f"{where}.{k}", "is not a known key", f"use one of {', '.join(fields)}")
            for r in required:
                if r not in item:
                    raise err(f"{where}.{r}", "is missing", f"add {r} = ...")
            for k, (rx, fix) in checks.items():
                if k in item and not (isinstance(item[k], str) and rx.match(item[k])):
                    raise err(f"{where}.{k}", f"has value {item[k]!r}", fix)
            out.append(cls(**item))
        return tuple(out)

    bdf = {"bdf": (_BDF, "write the full lower-case PCI address, like '0000:04:10.1'")}
    usb = {"vendor": (_HEX4, "four lower-case hex digits, like '0781'"),
           "product": (_HEX4, "four lower-case hex digits, like '5567'")}
    return Inventory(
        pci=items("inventory.pci", PciDevice, ["bdf"], bdf),
        sriov_pfs=items("inventory.sriov_pfs", SriovPf, ["bdf"], bdf),
        hpre=items("inventory.hpre", PciDevice, ["bdf"], bdf),
        usb=items("inventory.usb", UsbDevice, ["vendor", "product"], usb),
    )


# ------------------------------------------------------------------ several lab hosts

PLACEMENTS = ("split", "every")


@dataclass(frozen=True)
class LabSet:
    """A lab config as given to the harness: one lab host, or several
    (`[[hosts]]` entries, each inline or `include = "other.toml"`)."""
    path: Path
    hosts: tuple
    # "split": each test on one host that can run it (throughput); "every": every test on
    # every host (certify each host: a verdict for every claim on every host)
    placement: str = "split"

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def host(self, name: str) -> LabConfig:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabConfigError(f"{self.path}: no lab host named {name!r}; fix: use one of {', '.join(self.names)}")


def _read(path: Path) -> dict:
    if not path.exists():
        raise LabConfigError(f"lab config {path} does not exist; fix: pass --lab with an existing file "
                             f"(the local lab is {DEFAULT_LAB.relative_to(REPO)})")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise LabConfigError(f"{path}: not valid TOML: {e}") from None


def load_set(path: Path | str | None = None) -> LabSet:
    path = Path(path) if path else DEFAULT_LAB
    raw = _read(path)
    if "hosts" not in raw:
        return LabSet(path, (from_dict(raw, path),))

    def err(key, msg, fix):
        return LabConfigError(f"{path}: key '{key}' {msg}; fix: {fix}")

    for k in raw:
        if k not in ("hosts", "placement"):
            raise err(k, "is not allowed beside [[hosts]]", "put it inside a [[hosts]] entry (or the file it includes)")
    placement = raw.get("placement", "split")
    if placement not in PLACEMENTS:
        raise err("placement", f"has value {placement!r}", "'split' (each test on one host) or 'every' "
                  "(every test on every host)")
    entries = raw["hosts"]
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise err("hosts", "must be a non-empty array of tables", "write one [[hosts]] table per lab host")
    cfgs = [_set_entry(path, f"hosts[{i}]", e, err) for i, e in enumerate(entries)]
    _check_distinct(cfgs, err)
    return LabSet(path, tuple(cfgs), placement)


def _set_entry(path: Path, where: str, e: dict, err) -> LabConfig:
    """One [[hosts]] entry of a lab set: an include of a one-host config, or inline."""
    if "include" not in e:
        try:
            return from_dict(e, path)
        except LabConfigError as x:
            raise LabConfigError(str(x).replace(f"{path}: key '", f"{path}: key '{where}.", 1)) from None
    inc = e["include"]
    if set(e) != {"include"}:
        raise err(where, f"mixes include with {sorted(set(e) - {'include'})}",
                  "either include = 'host.toml' or an inline host, not both")
    if not isinstance(inc, str) or not inc:
        raise err(f"{where}.include", f"has value {inc!r}", "a path to a one-host lab config, relative to this file")
    target = (path.parent / inc).resolve()
    if not target.is_file():
        raise err(f"{where}.include", f"names {target}, which does not exist", "include an existing one-host lab config")
    sub = _read(target)
    if "hosts" in sub:
        raise err(f"{where}.include", f"names {target}, which lists hosts itself", "include one-host configs only")
    return from_dict(sub, target)


def _check_distinct(cfgs: list, err) -> None:
    """The hosts of a set share no name, work_dir, libvirt endpoint or SSH port range."""
    for attr, what in (("name", "host.name"), ("work_dir", "host.work_dir"), ("libvirt_uri", "host.libvirt_uri")):
        seen = {}
        for i, c in enumerate(cfgs):
            v = getattr(c, attr)
            if v in seen:
                raise err(f"hosts[{i}].{what}", f"has value {str(v)!r}, the same as hosts[{seen[v]}]",
                          "every lab host needs its own name, work_dir and libvirt endpoint")
            seen[v] = i
    bases = sorted((c.ssh_port_base, i) for i, c in enumerate(cfgs))
    for (a, ia), (b, ib) in zip(bases, bases[1:]):
        if b - a < 100:
            raise err(f"hosts[{ib}].ssh.port_base", f"has value {b}, within 100 of hosts[{ia}]'s {a}",
                      "give each lab host its own range of SSH forward ports (100 apart)")
