"""Architecture facts, in one place.

Suites never name a machine type, a console device or a kernel package: they
ask the lab's `ArchProfile`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchProfile:
    name: str                 # libvirt/QEMU arch name
    deb_arch: str             # Debian architecture of the guest image packages
    machine: str              # libvirt machine type
    emulator_hint: str        # qemu-system-* binary
    console_tty: str          # the guest's serial console device
    kernel_package: str       # Debian meta package that names the current kernel
    firmware: str             # "bios" (direct kernel boot works) or "efi"
    ld_so: str                # the dynamic loader path inside the guest root
    lib_dir: str              # multiarch library dir
    usb_controllers: tuple    # USB controller models the platform offers
    rootport_model: str = "pcie-root-port"
    acpi: bool = True         # aarch64 has ACPI only with UEFI firmware; direct kernel boot uses DT
    tcg_cpu: str | None = None   # libvirt CPU mode for TCG guests (None: the machine default)
    pci_root_bus: str = "pcie.0"  # QEMU's id of the machine's root PCI bus (the guide's pc machine: pci.0)
    # Building a guest root of this architecture on another one (lab/debroot.py): QEMU's user
    # mode emulator, and the ELF header (magic, mask) binfmt_misc hands to it.
    qemu_user: str = ""
    elf_magic: bytes = b""
    elf_mask: bytes = b""
    grub_efi: str = ""            # GRUB's platform for UEFI (grub-mkimage -O), and its package
    efi_boot_file: str = ""       # the removable-media boot file UEFI looks for on the ESP


ARCHES = {
    "x86_64": ArchProfile(
        name="x86_64", deb_arch="amd64", machine="q35", emulator_hint="qemu-system-x86_64",
        console_tty="ttyS0", kernel_package="linux-image-amd64", firmware="bios",
        ld_so="/lib64/ld-linux-x86-64.so.2", lib_dir="/lib/x86_64-linux-gnu",
        usb_controllers=("piix3-uhci", "ehci", "nec-xhci", "qemu-xhci"),
        qemu_user="x86_64",
        elf_magic=b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00",
        elf_mask=b"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        grub_efi="x86_64-efi", efi_boot_file="BOOTX64.EFI",
    ),
    "aarch64": ArchProfile(
        name="aarch64", deb_arch="arm64", machine="virt", emulator_hint="qemu-system-aarch64",
        console_tty="ttyAMA0", kernel_package="linux-image-arm64", firmware="efi",
        ld_so="/lib/ld-linux-aarch64.so.1", lib_dir="/lib/aarch64-linux-gnu",
        usb_controllers=("qemu-xhci", "nec-xhci", "ehci"), acpi=False, tcg_cpu="maximum",
        qemu_user="aarch64",
        elf_magic=b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
        elf_mask=b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        grub_efi="arm64-efi", efi_boot_file="BOOTAA64.EFI",
    ),
}


# The O_DIRECT open flag by the architecture of the lab host's kernel (not the guest's: an
# aarch64 guest emulated on an x86_64 host is served by a QEMU whose descriptors carry x86's).
O_DIRECT = {"x86_64": 0o40000, "i686": 0o40000, "aarch64": 0o200000}


def o_direct(kernel_arch: str) -> int:
    try:
        return O_DIRECT[kernel_arch]
    except KeyError:
        raise ValueError(f"the O_DIRECT flag of a {kernel_arch!r} kernel is not known to lab/arch.py; "
                         f"known: {', '.join(sorted(O_DIRECT))}") from None


def profile(arch: str) -> ArchProfile:
    try:
        return ARCHES[arch]
    except KeyError:
        raise ValueError(
            f"unknown guest architecture {arch!r}; known: {', '.join(sorted(ARCHES))}"
        ) from None


# ARM CPUs say who made them and which core they are by number only ("CPU implementer",
# "CPU part" in /proc/cpuinfo): the names certification reports carry.
ARM_IMPLEMENTERS = {0x41: "ARM", 0x42: "Broadcom", 0x48: "HiSilicon", 0x4e: "NVIDIA", 0x50: "Ampere (APM)",
                    0x51: "Qualcomm", 0x61: "Apple", 0x70: "Phytium", 0xc0: "Ampere"}
ARM_PARTS = {
    (0x48, 0xd01): "Kunpeng 920 (TaiShan v110)",
    (0x48, 0xd02): "Kunpeng 930 (TaiShan v120)",
    (0x41, 0xd03): "Cortex-A53", (0x41, 0xd07): "Cortex-A57", (0x41, 0xd08): "Cortex-A72",
    (0x41, 0xd0c): "Neoverse-N1", (0x41, 0xd40): "Neoverse-V1", (0x41, 0xd49): "Neoverse-N2",
    (0x41, 0xd4f): "Neoverse-V2", (0xc0, 0xac3): "Ampere-1", (0x70, 0x663): "FT-2000+",
}


def cpu_model(cpuinfo: str) -> str | None:
    """A readable CPU model from /proc/cpuinfo: x86's "model name", or an ARM core's
    implementer and part decoded (unknown numbers kept, in hex)."""
    fields = {}
    for line in cpuinfo.splitlines():
        k, sep, v = line.partition(":")
        if sep and k.strip() not in fields:
            fields[k.strip()] = v.strip()
    if fields.get("model name"):
        return fields["model name"]
    try:
        impl, part = int(fields["CPU implementer"], 16), int(fields["CPU part"], 16)
    except (KeyError, ValueError):
        return None
    maker = ARM_IMPLEMENTERS.get(impl, f"implementer 0x{impl:02x}")
    core = ARM_PARTS.get((impl, part), f"part 0x{part:03x}")
    return f"{maker} {core}"
