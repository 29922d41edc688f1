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
    o_direct: int = 0o40000       # the O_DIRECT open flag of the host kernel (asm-generic: 0o40000)


ARCHES = {
    "x86_64": ArchProfile(
        name="x86_64", deb_arch="amd64", machine="q35", emulator_hint="qemu-system-x86_64",
        console_tty="ttyS0", kernel_package="linux-image-amd64", firmware="bios",
        ld_so="/lib64/ld-linux-x86-64.so.2", lib_dir="/lib/x86_64-linux-gnu",
        usb_controllers=("piix3-uhci", "ehci", "nec-xhci", "qemu-xhci"),
    ),
    "aarch64": ArchProfile(
        name="aarch64", deb_arch="arm64", machine="virt", emulator_hint="qemu-system-aarch64",
        console_tty="ttyAMA0", kernel_package="linux-image-arm64", firmware="efi",
        ld_so="/lib/ld-linux-aarch64.so.1", lib_dir="/lib/aarch64-linux-gnu",
        usb_controllers=("qemu-xhci", "nec-xhci", "ehci"), acpi=False, tcg_cpu="maximum",
        o_direct=0o200000,
    ),
}


def profile(arch: str) -> ArchProfile:
    try:
        return ARCHES[arch]
    except KeyError:
        raise ValueError(
            f"unknown guest architecture {arch!r}; known: {', '.join(sorted(ARCHES))}"
        ) from None
