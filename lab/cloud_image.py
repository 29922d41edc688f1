"""Distribution guest images, built offline from Debian packages: what a lab
engineer brings instead of the harness's own guest.

Two variants of one Debian 12 image, both booted by firmware like any cloud
image (GRUB on an MBR disk, Debian's generic kernel and initramfs, systemd, udev,
OpenSSH, systemd-networkd, predictable interface names).  On x86_64 the image boots
through the BIOS by default, or through UEFI (`[guest] firmware = "efi"`); on
aarch64 (Kunpeng-class guests) always through UEFI.  A UEFI image has an EFI system
partition first with GRUB at the removable-media path (EFI/BOOT/BOOTAA64.EFI or
BOOTX64.EFI), as distribution images do.  A foreign architecture's root is built
here under QEMU's user-mode emulator (lab/debroot.py).

- `debian12-cloud`: cloud-init with the NoCloud data source, no password, no
  SSH host keys until first boot (cloud-init makes them and prints them on the
  console).  The lab config says `access = "nocloud"`.
- `debian12-password`: no cloud-init; root has a password, as openEuler's
  published VM images come.  The lab config says `access = "console-password"`
  and names the password file this builder writes (mode 0600, a random password
  made once per work dir).  The image gets no network configuration of its own
  beyond DHCP on the first Ethernet port, and no key for the harness.

The disk is assembled without loop devices: the root file system is made from a
folder (`mkfs.ext4 -d`), the EFI system partition with mtools, both put behind an
MBR partition table; for the BIOS, GRUB's boot sector and core image are embedded
as `grub-bios-setup` would.  Cached by the hash of its inputs like the default image.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import struct
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import debroot
from . import images
from .arch import ARCHES, ArchProfile
from .images import GuestImage, ImageError, prune_lru, sha256_file

BUILDER_VERSION = "1"
SUITE = "bookworm"
# A server-shaped cloud image: systemd, udev, OpenSSH, the usual admin tools, and the
# tools the harness's probes call in the guest (pciutils, usbutils, ethtool; an image
# without one gets a skip that names it).
PACKAGES = ["systemd", "systemd-sysv", "udev", "dbus", "openssh-server", "iproute2", "kmod", "procps",
            "util-linux", "e2fsprogs", "pciutils", "usbutils", "ethtool", "pci.ids", "sudo", "less", "netbase",
            "iputils-ping"]
DISK_MIB = 2048
PART_START = 2048                      # sectors: the first partition at 1 MiB, as partitioners put it
ESP_MIB = 64                           # the EFI system partition of a UEFI image
# Debian's cloud images' kernel command line (console on the serial port after GRUB).
CMDLINE = "ro console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0"
HOSTNAME = "debian"
FIRMWARES = ("bios", "efi")


def boot_packages(arch: ArchProfile, firmware: str) -> list[str]:
    grub = "grub-pc-bin" if firmware == "bios" else f"grub-efi-{arch.deb_arch}-bin"
    return [arch.kernel_package, "initramfs-tools", grub, "grub2-common"]


def cmdline(arch: ArchProfile) -> str:
    if arch.name == "x86_64":
        return CMDLINE
    return f"ro console=tty0 console={arch.console_tty},115200 consoleblank=0"


def cache_key(variant: str, arch: ArchProfile, firmware: str) -> str:
    """The image's name in the cache: x86_64 BIOS images keep the plain variant name."""
    return variant if (arch.name, firmware) == ("x86_64", "bios") else f"{variant}-{arch.deb_arch}-{firmware}"


@dataclass(frozen=True)
class Variant:
    name: str
    cloud_init: bool
    access: str


VARIANTS = {
    "debian12-cloud": Variant("debian12-cloud", cloud_init=True, access="nocloud"),
    "debian12-password": Variant("debian12-password", cloud_init=False, access="console-password"),
}
IMAGE_FILES = ("disk.qcow2",)


def password_file(cache_dir: Path, variant: str) -> Path:
    """Where the password variant's root password lives (written once, mode 0600)."""
    return cache_dir / f"{variant}.password"


def _password(cache_dir: Path, variant: str) -> str:
    p = password_file(cache_dir, variant)
    if not p.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18) + "\n")
    return p.read_text().strip()


def inputs(v: Variant, password: str | None, arch: ArchProfile | None = None, firmware: str = "bios") -> dict:
    arch = arch or ARCHES["x86_64"]
    here = Path(__file__).read_bytes()
    foreign = "" if arch.name == "x86_64" else f":{arch.deb_arch}"
    return {"builder": BUILDER_VERSION, "suite": SUITE, "variant": v.name, "packages": PACKAGES,
            "arch": arch.deb_arch, "firmware": firmware,
            "boot": {p: _candidate(p, foreign) for p in boot_packages(arch, firmware)},
            "cloud-init": debroot.candidate("cloud-init") if v.cloud_init else None,
            "cmdline": cmdline(arch), "disk_mib": DISK_MIB, "source": hashlib.sha256(here).hexdigest()[:16],
            # a salted hash, so a new password means a new image (the password itself is never stored here)
            "password": hashlib.sha256(b"acc-image-password:" + password.encode()).hexdigest()[:16]
            if password else None}


def _candidate(pkg: str, foreign: str) -> str:
    """apt's candidate of `pkg` for the image's architecture (an architecture-independent
    package has no foreign name)."""
    if foreign:
        try:
            return debroot.candidate(pkg + foreign)
        except ImageError:
            pass
    return debroot.candidate(pkg)


def image(cache_dir: Path, variant: str, log=print, arch: ArchProfile | None = None,
          firmware: str | None = None) -> GuestImage:
    """The cached image of `variant` for `arch` booted by `firmware` (None: the
    architecture's own: BIOS on x86_64, UEFI on aarch64), built first when its inputs changed."""
    if variant not in VARIANTS:
        raise ImageError(f"no built-in guest image {variant!r}; known: {', '.join(VARIANTS)}")
    arch = arch or ARCHES["x86_64"]
    firmware = firmware or arch.firmware
    if firmware not in FIRMWARES or (firmware == "bios" and arch.name != "x86_64"):
        raise ImageError(f"guest image {variant} cannot boot {arch.name} through {firmware!r}: "
                         f"{'only x86_64 has a BIOS' if firmware == 'bios' else 'use bios or efi'}")
    v = VARIANTS[variant]
    password = None if v.cloud_init else _password(cache_dir, variant)
    inp = inputs(v, password, arch, firmware)
    digest = hashlib.sha256(json.dumps(inp, sort_keys=True).encode()).hexdigest()[:16]
    key = cache_key(variant, arch, firmware)
    final = cache_dir / f"{key}-{digest}"
    img = GuestImage(root=final / "disk.qcow2", digest=digest, access=v.access, console_tty=arch.console_tty,
                     firmware=firmware)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{key}-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if images._complete(final, IMAGE_FILES):
            os.utime(final / "manifest.json")
            return img
        shutil.rmtree(final, ignore_errors=True)
        for stale in cache_dir.glob(f".build-{key}-*"):
            if _key_of(stale.name[len(".build-"):]) == key:
                shutil.rmtree(stale, ignore_errors=True)          # a killed build's leftovers
        t0 = time.monotonic()
        kpkg = arch.kernel_package
        log(f"building guest image {final.name} (Debian {SUITE} {arch.deb_arch}, {firmware.upper()}, {kpkg} "
            f"{inp['boot'][kpkg]}, {'cloud-init ' + inp['cloud-init'] if v.cloud_init else 'root password, no cloud-init'})"
            f"; about {2 if arch.name == 'x86_64' else 8} minutes")
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-{digest}-", dir=cache_dir))
        try:
            _build(tmp, v, password, log, arch, firmware)
            files = {f: sha256_file(tmp / f) for f in IMAGE_FILES}
            (tmp / "manifest.json").write_text(json.dumps({"digest": digest, "files": files, "inputs": inp}, indent=1))
            os.chmod(tmp, 0o755)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"built {final.name} in {time.monotonic() - t0:.0f} s")
    prune_lru((d for d in cache_dir.glob(f"{key}-*") if d.is_dir() and _key_of(d.name) == key), 2, "manifest.json",
              lambda d: cache_dir / f".{d.name}.lock", "guest image", log)
    for lock_file in cache_dir.glob(f".{key}-*.lock"):        # locks of images that are gone
        if _key_of(lock_file.name[1:-len(".lock")]) != key:
            continue
        if not (cache_dir / lock_file.name[1:-len(".lock")]).exists():
            with open(lock_file, "w") as lk:
                try:
                    fcntl.flock(lk, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue
                lock_file.unlink(missing_ok=True)
    return img


def _key_of(name: str) -> str:
    """`<key>-<16 hex digest>[-tmp suffix]` -> key (so x86's `debian12-password-*` never
    takes `debian12-password-arm64-efi-*` for one of its own)."""
    parts = name.split("-")
    for i in range(len(parts) - 1, 0, -1):
        if len(parts[i]) == 16 and all(c in "0123456789abcdef" for c in parts[i]):
            return "-".join(parts[:i])
    return name


def _build(out: Path, v: Variant, password: str | None, log, arch: ArchProfile, firmware: str) -> None:
    what = f"guest image {cache_key(v.name, arch, firmware)}"
    root = out / "root"
    emu = debroot.Emulator.for_arch(arch, out.parent, what)
    log(f"  [1/5] debootstrap {SUITE} {arch.deb_arch} ({len(PACKAGES)} packages"
        f"{', emulated by ' + emu.interpreter.name if emu else ''})")
    debroot.debootstrap(root, SUITE, PACKAGES, what, arch=arch, emulator=emu)
    log(f"  [2/5] kernel, GRUB{' and cloud-init' if v.cloud_init else ''}")
    debroot.install_kernel(root, boot_packages(arch, firmware) + (["cloud-init"] if v.cloud_init else []), what,
                           emulator=emu)
    log("  [3/5] configuring")
    disk_id = f"{secrets.randbits(32):08x}"
    root_part = f"{disk_id}-{'01' if firmware == 'bios' else '02'}"
    fs_uuid = str(uuid.uuid4())
    _configure(root, v, password, root_part, what, emu, esp=f"{disk_id}-01" if firmware == "efi" else None)
    if firmware == "bios":
        _grub(root, root_part, fs_uuid, what)
    else:
        _grub_efi(root, out / arch.efi_boot_file, arch, root_part, fs_uuid, what, emu)
    debroot.prune_docs(root)
    log("  [4/5] file systems and disk")
    start = PART_START
    parts = []                       # (type, file)
    if firmware == "efi":
        esp = out / "esp.raw"
        debroot.sh(["mkfs.vfat", "-F", "32", "-n", "ESP", "-C", str(esp), str(ESP_MIB * 1024)], f"{what}: mkfs.vfat")
        debroot.sh(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], f"{what}: mmd")
        debroot.sh(["mcopy", "-i", str(esp), str(out / arch.efi_boot_file), f"::/EFI/BOOT/{arch.efi_boot_file}"],
                   f"{what}: mcopy")
        parts.append((0xEF, esp))
    part = out / "part.raw"
    part_mib = DISK_MIB - PART_START * 512 // (1 << 20) - (ESP_MIB if firmware == "efi" else 0)
    debroot.sh(["mkfs.ext4", "-q", "-U", fs_uuid, "-L", "root", "-d", str(root), str(part), f"{part_mib}M"],
               f"{what}: mkfs.ext4 -d")
    parts.append((0x83, part))
    disk = out / "disk.raw"
    table = []
    for ptype, f in parts:
        table.append((ptype, start, f.stat().st_size // 512))
        start += f.stat().st_size // 512
    with open(disk, "wb") as f:
        f.write(mbr_table(int(disk_id, 16), table, boot=len(table) - 1).ljust(PART_START * 512, b"\0"))
        for _ptype, pf in parts:
            with open(pf, "rb") as p:
                shutil.copyfileobj(p, f, 1 << 20)
            pf.unlink()
    log(f"  [5/5] {'GRUB boot sector, ' if firmware == 'bios' else ''}qcow2")
    if firmware == "bios":
        grub_dir = root / "boot/grub/i386-pc"
        embed_grub(disk, (grub_dir / "boot.img").read_bytes(), (grub_dir / "core.img").read_bytes())
    debroot.sh(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(out / "disk.qcow2")],
               f"{what}: qemu-img convert")
    shutil.rmtree(root)
    disk.unlink()
    os.chmod(out / "disk.qcow2", 0o644)


# GRUB 2.06, include/grub/i386/pc/boot.h: fields of boot.img that grub-bios-setup fills in
BOOT_KERNEL_SECTOR, BOOT_DRIVE, BOOT_DRIVE_CHECK, BOOT_NT_MAGIC, BOOT_PART_END = 0x5c, 0x64, 0x66, 0x1b8, 0x1fe
KERNEL_SEGMENT = 0x800          # GRUB_BOOT_I386_PC_KERNEL_SEG


def embed_grub(disk: Path, boot_img: bytes, core_img: bytes) -> None:
    """What `grub-bios-setup` does for a disk with a DOS label (it only works on a
    device it can find the root of, not on an image file): core.img goes into the gap
    after the MBR (sectors 1..), its first sector (diskboot) gets the block list of the
    rest, and boot.img becomes the MBR's code, told where core.img starts, with the
    disk's own signature and partition table kept."""
    nsec = (len(core_img) + 511) // 512
    if len(boot_img) != 512 or boot_img[510:] != b"\x55\xaa" or nsec + 1 > PART_START:
        raise ImageError(f"GRUB images do not fit: boot.img {len(boot_img)} bytes (a boot sector is 512, ending "
                         f"55 aa), core.img {nsec} sectors (room for {PART_START - 1})")
    core = bytearray(core_img.ljust(nsec * 512, b"\0"))
    # diskboot's block list, at the end of its sector: the rest of core.img, loaded after it
    struct.pack_into("<QHH", core, 512 - 12, 2, nsec - 1, KERNEL_SEGMENT + (512 >> 4))
    with open(disk, "r+b") as f:
        old = f.read(512)
        boot = bytearray(boot_img)
        struct.pack_into("<Q", boot, BOOT_KERNEL_SECTOR, 1)
        boot[BOOT_DRIVE] = 0xff                        # the drive the BIOS booted from
        boot[BOOT_DRIVE_CHECK:BOOT_DRIVE_CHECK + 2] = b"\x90\x90"   # a hard disk: no floppy probe
        boot[BOOT_NT_MAGIC:BOOT_PART_END] = old[BOOT_NT_MAGIC:BOOT_PART_END]
        f.seek(0)
        f.write(boot)
        f.seek(512)
        f.write(core)


def mbr(disk_id: int, start: int, sectors: int) -> bytes:
    """A DOS partition table with one bootable Linux partition (what `sfdisk` writes
    for `start=S, size=N, type=83, bootable`); Linux names it PARTUUID=<id>-01.
    CHS fields hold the 'beyond CHS' marker: everything boots by LBA."""
    return mbr_table(disk_id, [(0x83, start, sectors)], boot=0)


def mbr_table(disk_id: int, parts: list[tuple[int, int, int]], boot: int | None) -> bytes:
    """A DOS partition table of up to four primary partitions [(type, start, sectors)]
    (0x83 Linux, 0xEF EFI system); partition `boot` gets the bootable flag.  Linux names
    partition n PARTUUID=<id>-0n."""
    if len(parts) > 4:
        raise ValueError("an MBR holds four primary partitions")
    entries = b"".join(struct.pack("<B3sB3sII", 0x80 if i == boot else 0, b"\xfe\xff\xff", ptype,
                                   b"\xfe\xff\xff", start, sectors)
                       for i, (ptype, start, sectors) in enumerate(parts))
    return bytes(440) + struct.pack("<IH", disk_id, 0) + entries.ljust(64, b"\0") + b"\x55\xaa"


def _configure(root: Path, v: Variant, password: str | None, root_part: str, what: str,
               emu: "debroot.Emulator | None" = None, esp: str | None = None) -> None:
    w = debroot.write
    w(root, "/etc/hostname", f"{HOSTNAME}\n")
    w(root, "/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n")
    w(root, "/etc/fstab", f"PARTUUID={root_part} / ext4 rw,discard,errors=remount-ro 0 1\n"
      + (f"PARTUUID={esp} /boot/efi vfat umask=0077,nofail 0 1\n" if esp else ""))
    if esp:
        (root / "boot/efi").mkdir(parents=True, exist_ok=True)
    # systemd makes a machine id at first boot, as in every distribution image
    w(root, "/etc/machine-id", "")
    units = ["systemd-networkd", "ssh"]
    if v.cloud_init:
        # NoCloud only (no metadata service is ever asked for); cloud-init renders its
        # network config for systemd-networkd and brings up the first NIC only.
        w(root, "/etc/cloud/cloud.cfg.d/01_acc_datasource.cfg",
          "datasource_list: [ NoCloud, None ]\nlocale: C.UTF-8\n"
          "system_info:\n  network:\n    renderers: ['networkd']\n")
        units += ["cloud-init-local", "cloud-init", "cloud-config", "cloud-final"]
        for f in (root / "etc/ssh").glob("ssh_host_*"):
            f.unlink()                                     # cloud-init makes them at first boot
    else:
        # DHCP on the first Ethernet port, as a distribution installer leaves it
        w(root, "/etc/systemd/network/80-first-ether.network",
          "[Match]\nName=enp1s0 ens3 eth0\n\n[Network]\nDHCP=ipv4\n")
    debroot.chroot(root, "sh", "-c",
                   f"systemctl enable {' '.join(units)} >/dev/null 2>&1; "
                   "systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer "
                   "man-db.timer >/dev/null 2>&1; apt-get clean", what=f"{what}: enabling services", emulator=emu)
    if password is not None:
        # through stdin: the password is never on a command line
        debroot.chroot(root, "chpasswd", what=f"{what}: setting root's password", input=f"root:{password}\n",
                       emulator=emu)


def _kernel_version(root: Path, what: str) -> str:
    kernels = sorted(p.name for p in (root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageError(f"{what}: no kernel in /boot after installing the kernel package")
    return kernels[-1].removeprefix("vmlinuz-")


def _grub_efi(root: Path, boot_file: Path, arch: ArchProfile, root_part: str, fs_uuid: str, what: str,
              emu: "debroot.Emulator | None") -> None:
    """GRUB for UEFI: modules under /boot/grub/<platform>, a GRUB EFI program (the ESP's
    removable-media boot file, written to `boot_file`) that finds them on the root
    partition, and a menu on UEFI's own console (which the firmware puts on the serial port)."""
    kver = _kernel_version(root, what)
    mods = root / "boot/grub" / arch.grub_efi
    mods.mkdir(parents=True, exist_ok=True)
    for f in (root / "usr/lib/grub" / arch.grub_efi).iterdir():
        if f.suffix in (".mod", ".lst"):
            shutil.copy2(f, mods / f.name)
    debroot.chroot(root, "grub-mkimage", "-O", arch.grub_efi, "-o", "/boot/grub/boot.efi",
                   "-p", "(hd0,msdos2)/boot/grub", "part_msdos", "ext2", "fat", "search_fs_uuid", "normal", "linux",
                   what=f"{what}: grub-mkimage", emulator=emu)
    shutil.move(root / "boot/grub/boot.efi", boot_file)
    debroot.write(root, "/boot/grub/grub.cfg", f"""\
set timeout=1
insmod part_msdos
insmod ext2
search --no-floppy --fs-uuid --set=root {fs_uuid}
menuentry 'Debian GNU/Linux, with Linux {kver}' {{
    linux /boot/vmlinuz-{kver} root=PARTUUID={root_part} {cmdline(arch)}
    initrd /boot/initrd.img-{kver}
}}
""")


def _grub(root: Path, root_part: str, fs_uuid: str, what: str) -> None:
    """GRUB for BIOS: modules under /boot/grub, a core image that finds them on the
    first partition, and a menu like the one grub-mkconfig writes on a cloud image."""
    kver = _kernel_version(root, what)
    mods = root / "boot/grub/i386-pc"
    mods.mkdir(parents=True, exist_ok=True)
    for f in (root / "usr/lib/grub/i386-pc").iterdir():       # what grub-install puts there
        if f.suffix in (".mod", ".lst", ".img"):
            shutil.copy2(f, mods / f.name)
    debroot.chroot(root, "grub-mkimage", "-O", "i386-pc", "-o", "/boot/grub/i386-pc/core.img",
                   "-p", "(hd0,msdos1)/boot/grub", "biosdisk", "part_msdos", "ext2",
                   what=f"{what}: grub-mkimage")
    debroot.write(root, "/boot/grub/grub.cfg", f"""\
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
insmod part_msdos
insmod ext2
search --no-floppy --fs-uuid --set=root {fs_uuid}
menuentry 'Debian GNU/Linux, with Linux {kver}' {{
    linux /boot/vmlinuz-{kver} root=PARTUUID={root_part} {CMDLINE}
    initrd /boot/initrd.img-{kver}
}}
""")

