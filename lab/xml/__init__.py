"""lxml builders for libvirt XML.  No string templates: every element is built
from data, so a test asks for `disk(bus='scsi', serial='x')`, never for a text.
"""
from __future__ import annotations

from lxml import etree

from ..arch import ArchProfile

META_NS = "https://acc-harness.invalid/xmlns/harness/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def el(tag: str, attrib: dict | None = None, *children, text: str | None = None) -> etree._Element:
    e = etree.Element(tag, {k: str(v) for k, v in (attrib or {}).items() if v is not None})
    for c in children:
        if c is not None:
            e.append(c)
    if text is not None:
        e.text = text
    return e


def to_string(e: etree._Element) -> str:
    return etree.tostring(e, pretty_print=True, encoding="unicode")


def parse(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode() if isinstance(xml, str) else xml)


# ------------------------------------------------------------------ domain

def domain(name: str, *, virt_type: str, arch: ArchProfile, memory_mib: int = 384, vcpus: int = 1,
           kernel=None, initrd=None, cmdline: str | None = None, metadata: etree._Element | None = None,
           devices=(), acpi: bool = True, shared_memory: bool = False, emulator: str = "",
           overrides: dict | None = None, qemu_args=(), firmware: str = "bios") -> etree._Element:
    """`emulator`: the QEMU binary on the lab host ("" : libvirt's default); `overrides`:
    {device alias: {property: value}} set on QEMU's device (frontend) through libvirt's
    <qemu:override>, for properties this libvirt cannot express; `qemu_args`: arguments
    handed to QEMU as they are (<qemu:commandline>), for a claim about QEMU's own
    command line.  `firmware`: 'efi' boots a disk without a kernel through UEFI, chosen by
    libvirt's firmware autoselection (the host's firmware descriptors), without Secure
    Boot: a distribution image's own GRUB is not signed for enrolled keys."""
    os_el = _os(arch, kernel, initrd, cmdline, firmware)
    feats = el("features")
    if acpi and arch.acpi:
        # Without ACPI a q35 guest drops every root-port bus at the first PCIe hot-plug.
        feats.append(el("acpi"))
    dev = el("devices")
    if emulator:
        dev.append(el("emulator", text=str(emulator)))
    for d in devices:
        if d is not None:
            dev.append(d)
    root = el(
        "domain", {"type": virt_type},
        el("name", text=name),
        el("metadata", None, metadata) if metadata is not None else None,
        el("memory", {"unit": "MiB"}, text=str(memory_mib)),
        el("memoryBacking", None, el("source", {"type": "memfd"}), el("access", {"mode": "shared"}))
        if shared_memory else None,
        el("vcpu", text=str(vcpus)),
        os_el,
        feats,
        el("cpu", {"mode": "host-passthrough"}) if virt_type == "kvm" else
        (el("cpu", {"mode": arch.tcg_cpu}) if arch.tcg_cpu else None),
        el("clock", {"offset": "utc"}),
        el("on_poweroff", text="destroy"),
        el("on_reboot", text="restart"),
        el("on_crash", text="destroy"),
        dev,
    )
    if qemu_args or overrides:
        root = _with_qemu_ns(root)
    if qemu_args:
        cl = etree.SubElement(root, f"{{{QEMU_NS}}}commandline")
        for a in qemu_args:
            etree.SubElement(cl, f"{{{QEMU_NS}}}arg", value=str(a))
    if overrides:
        qemu_override(root, overrides)
    return root


def _os(arch: ArchProfile, kernel, initrd, cmdline, firmware: str) -> etree._Element:
    """<os>: a direct kernel boot, or the disk through the firmware (UEFI picked by
    libvirt's autoselection, Secure Boot off)."""
    efi = firmware == "efi" and not kernel
    os_el = el("os", {"firmware": "efi"} if efi else None,
               el("type", {"arch": arch.name, "machine": arch.machine}, text="hvm"))
    if efi:
        os_el.append(el("firmware", None, el("feature", {"enabled": "no", "name": "secure-boot"}),
                        el("feature", {"enabled": "no", "name": "enrolled-keys"})))
    if kernel:
        os_el.append(el("kernel", text=str(kernel)))
        if initrd:
            os_el.append(el("initrd", text=str(initrd)))
        if cmdline:
            os_el.append(el("cmdline", text=cmdline))
    else:
        os_el.append(el("boot", {"dev": "hd"}))
    return os_el


def _with_qemu_ns(dom: etree._Element) -> etree._Element:
    out = etree.Element(dom.tag, dict(dom.attrib), nsmap={"qemu": QEMU_NS})
    for child in dom:
        out.append(child)
    return out


def qemu_override(dom: etree._Element, overrides: dict) -> None:
    """Add <qemu:override> frontend properties to a domain built with the qemu namespace:
    {alias: {name: value}}; an int goes in as 'signed', a bool as 'bool', else 'string'."""
    ov = etree.SubElement(dom, f"{{{QEMU_NS}}}override")
    for alias, props in overrides.items():
        front = etree.SubElement(etree.SubElement(ov, f"{{{QEMU_NS}}}device", alias=alias), f"{{{QEMU_NS}}}frontend")
        for name, value in props.items():
            kind = "bool" if isinstance(value, bool) else "signed" if isinstance(value, int) else "string"
            etree.SubElement(front, f"{{{QEMU_NS}}}property", name=name, type=kind,
                             value=str(value).lower() if isinstance(value, bool) else str(value))


def harness_metadata(run_id: str, pid: int, role: str, files=(), work_dir: str = "",
                     hostdir: str = "") -> etree._Element:
    """Tag that marks a domain as the harness's own; the sweeper reads it back.  `work_dir`:
    the controller's; `hostdir`: the run's work dir on the lab host, where its lease is."""
    m = etree.Element(f"{{{META_NS}}}harness", nsmap={"acc": META_NS})
    m.set("run", run_id)
    m.set("dir", str(work_dir))
    if hostdir:
        m.set("hostdir", str(hostdir))
    m.set("pid", str(pid))
    m.set("role", role)
    for f in files:
        m.append(el(f"{{{META_NS}}}file", {"path": str(f)}))
    return m


# ------------------------------------------------------------------ controllers

def pci_controller(model: str, index: int | None = None) -> etree._Element:
    """The guide's simplified form: libvirt fills in everything else."""
    return el("controller", {"type": "pci", "index": index, "model": model})


def simplified_pcie_topology(root_ports: int, bridge: bool = True) -> list[etree._Element]:
    """pcie-root, a root port, the pcie-to-pci bridge, then the other root ports (guide order)."""
    out = [pci_controller("pcie-root", 0)]
    idx = 1
    for n in range(root_ports):
        out.append(pci_controller("pcie-root-port", idx))
        idx += 1
        if bridge and n == 0:
            out.append(pci_controller("pcie-to-pci-bridge", idx))
            idx += 1
    return out


def scsi_controller(index: int = 0, model: str = "virtio-scsi", address: dict | None = None) -> etree._Element:
    c = el("controller", {"type": "scsi", "index": index, "model": model})
    if address:
        c.append(el("address", {"type": "pci", **address}))
    return c


def pci_address(bus: int, slot: int, function: int = 0) -> dict:
    return {"domain": "0x0000", "bus": f"{bus:#04x}", "slot": f"{slot:#04x}", "function": f"{function:#x}"}


def usb_controller(model: str, index: int | None = None) -> etree._Element:
    return el("controller", {"type": "usb", "index": index, "model": model})


# ------------------------------------------------------------------ devices

def disk(source: str, *, target: str, bus: str = "virtio", fmt: str = "qcow2", serial: str | None = None,
         cache: str | None = None, io: str | None = None, readonly: bool = False,
         device: str = "disk", kind: str = "file", drive_address: dict | None = None,
         error_policy: str | None = None, rerror_policy: str | None = None,
         pci_address: dict | None = None, alias: str | None = None) -> etree._Element:
    """`alias`: a user alias (libvirt wants the 'ua-' prefix), for <qemu:override>."""
    if kind == "network":
        # `source` is an NBD unix socket path
        src = el("source", {"protocol": "nbd"}, el("host", {"transport": "unix", "socket": source}))
    else:
        src = el("source", {{"file": "file", "block": "dev"}[kind]: source})
    d = el("disk", {"type": kind, "device": device},
           el("driver", {"name": "qemu", "type": fmt, "cache": cache, "io": io,
                         "error_policy": error_policy, "rerror_policy": rerror_policy}),
           src,
           el("target", {"dev": target, "bus": bus}))
    if serial:
        d.append(el("serial", text=serial))
    if readonly:
        d.append(el("readonly"))
    if drive_address:
        d.append(el("address", {"type": "drive", **drive_address}))
    if pci_address:
        d.append(el("address", {"type": "pci", **pci_address}))
    if alias:
        d.append(el("alias", {"name": alias}))
    return d


def user_interface(mac: str, model: str = "virtio") -> etree._Element:
    """User-mode networking for the harness's own management/SSH path."""
    return el("interface", {"type": "user"}, el("mac", {"address": mac}), el("model", {"type": model}))


def serial_pty(log_file: str | None = None) -> etree._Element:
    s = el("serial", {"type": "pty"})
    if log_file:
        s.append(el("log", {"file": log_file, "append": "off"}))
    return s


def console_pty() -> etree._Element:
    return el("console", {"type": "pty"}, el("target", {"type": "serial"}))


def no_memballoon() -> etree._Element:
    return el("memballoon", {"model": "none"})


def no_usb() -> etree._Element:
    return el("controller", {"type": "usb", "model": "none"})
