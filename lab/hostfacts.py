"""Host facts and capabilities, probed (never assumed from the distribution).

Capabilities are data: a name, whether the host has it, and why not.  A claim
that needs a missing capability skips with that reason; a capability the lab
config promises (an inventory entry) but the probe denies is an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import libvirt

from .config import LabConfig
from .errors import LabError
from .hostproc import kernel_has_device_mapper  # noqa: F401  (also public here: a host fact)


@dataclass(frozen=True)
class Capability:
    name: str
    present: bool
    detail: str


# The capabilities only a command on the lab host can tell.
HOST_PROBED = ("vhost-net", "vhost-scsi", "vfio", "device-mapper", "dm-delay", "openvswitch", "nbdkit", "vhost-user",
               "usb-subsystem")


def probe(cfg: LabConfig, conn: libvirt.virConnect | None, h, sysroot: Path = Path("/")) -> dict[str, Capability]:
    """Probe the lab host `h` (this machine, or SSH to a remote lab host) and its libvirt
    `conn`; `sysroot` redirects a local probe to a recorded tree (self-tests)."""
    caps: dict[str, Capability] = {}

    def add(name, present, detail):
        caps[name] = Capability(name, bool(present), detail)

    try:
        _probe_host(cfg, h, sysroot, add)
    except (OSError, LabError) as e:
        for name in HOST_PROBED:
            add(name, False, f"probing lab host {cfg.name} failed: {e}")
    inv = cfg.inventory
    add("pci-device", inv.pci, f"{len(inv.pci)} PCI device(s) listed in [inventory] pci")
    add("sriov", inv.sriov_pfs, f"{len(inv.sriov_pfs)} SR-IOV PF(s) listed in [inventory] sriov_pfs")
    add("hpre", inv.hpre, f"{len(inv.hpre)} HPRE device(s) listed in [inventory] hpre")
    add("usb-device", inv.usb, f"{len(inv.usb)} host USB device(s) listed in [inventory] usb")
    add("second-host", False, "the lab config names one host")
    _probe_retry(cfg, conn, h, add)
    backend = fault_backend(cfg, caps)
    add("fault-backend", backend != "none", f"fault backend: {backend}")
    slow = backend == "nbdkit" or (backend == "dm-error" and caps.get("dm-delay") is not None
                                   and caps["dm-delay"].present)
    add("fault-slow-writes", slow, f"fault backend {backend} " + (
        "makes every write slow and fails writes alone (nbdkit's delay and error filters)" if backend == "nbdkit" else
        "makes every write slow and fails writes alone (dm-delay onto an all-error device)" if slow else
        "cannot make writes slow (nbdkit's delay filter or device-mapper's dm-delay can)"))
    if conn is not None:
        kvm = _virt_type_available(conn, "kvm")
        add("kvm", kvm, "KVM " + ("usable by libvirt" if kvm else "is not offered by libvirt's domain capabilities"))
    return caps


def _probe_retry(cfg: LabConfig, conn, h, add) -> None:
    """The two faces of disk I/O suspension: libvirt's XML (error-policy-retry) and QEMU's
    device properties (qemu-retry), each asked of the thing itself."""
    try:
        emulator = lab_emulator(cfg, h, conn)
    except (LabError, libvirt.libvirtError) as e:
        add("error-policy-retry", False, f"no QEMU to probe: {e}")
        add("qemu-retry", False, f"no QEMU to probe: {e}")
        return
    ok, why = probe_qemu_retry(h, emulator)
    q = (ok, why + h.on)
    x = probe_retry_policy(conn, cfg, emulator) if conn is not None else \
        (False, "error_policy='retry' needs a libvirt connection to probe")
    if q[0] and not x[0]:
        x = (False, f"{x[1]}. This lab's QEMU has the retry properties, so IOS-2..5 and IOS-7 are proven with the "
                    f"guide's settings on QEMU's device (<qemu:override>); IOS-1 and IOS-6 are about libvirt's XML "
                    f"and stay unproven on this lab host")
    add("error-policy-retry", *x)
    add("qemu-retry", *q)


def _probe_host(cfg, h, sysroot: Path, add) -> None:
    p = lambda rel: str(sysroot / rel.lstrip("/"))     # noqa: E731  (sysroot "/" but in self-tests)
    on = h.on
    vn = h.exists(p("/dev/vhost-net"))
    add("vhost-net", vn, "/dev/vhost-net " + ("present" if vn else "is missing (no vhost_net module)") + on)
    vs = h.exists(p("/sys/kernel/config/target/vhost")) or h.exists(p("/sys/module/vhost_scsi"))
    add("vhost-scsi", vs, "vhost_scsi target support " + ("present" if vs else "is missing (no vhost_scsi module / LIO configfs)") + on)
    usb = h.exists(p("/sys/bus/usb/devices"))
    add("usb-subsystem", usb, "USB subsystem " + ("present (/sys/bus/usb/devices), so libvirt can look a USB device up"
        if usb else "is missing (no /sys/bus/usb/devices): libvirt refuses any USB hostdev before it looks for "
        "the device") + on)
    groups = h.listdir(p("/sys/kernel/iommu_groups")) if h.exists(p("/sys/kernel/iommu_groups")) else []
    node = h.exists(p("/dev/vfio/vfio"))
    vfio = node and bool(groups)
    add("vfio", vfio, f"{len(groups)} IOMMU groups, /dev/vfio/vfio " + ("present" if node else "missing")
        + ("" if vfio else " (no IOMMU/VFIO on this host)") + on)
    try:
        misc = h.read_text(p("/proc/misc"))
    except OSError:
        misc = ""
    dm = kernel_has_device_mapper(text=misc)
    add("device-mapper", dm, "device-mapper " + ("in the kernel" if dm else
        "is not in the kernel (no 'device-mapper' in /proc/misc; a /dev/mapper/control node alone proves nothing)") + on)
    # device-mapper's delay target (loaded, or a module the kernel can load): one-direction and slow-write faults
    delay = dm and h.which("dmsetup") and (
        "delay" in h.run("dmsetup", "targets", check=False).stdout.split()
        or h.run("modprobe", "-n", "-q", "dm-delay", check=False).ok)
    add("dm-delay", delay, "device-mapper's delay target " + ("is available" if delay else
        "is not available (no dm-delay module)") + on)
    has_ovs = h.which("ovs-vsctl")
    ovs = has_ovs and h.run("ovs-vsctl", "--timeout=5", "show", check=False).ok
    add("openvswitch", ovs, "Open vSwitch " + ("running" if ovs else "is not installed or not running") + on)
    nbd = h.which("nbdkit")
    add("nbdkit", nbd, "nbdkit " + ("installed" if nbd else "is not installed") + on)
    from .network import ovs_dpdk_ready
    ok, why = ovs_dpdk_ready(h) if has_ovs else (False, "Open vSwitch is not installed")
    add("vhost-user", ok, f"vhost-user backend (OVS-DPDK): {why}")


def fault_backend(cfg: LabConfig, caps: dict[str, Capability]) -> str:
    if cfg.fault_backend != "auto":
        return cfg.fault_backend
    if caps.get("device-mapper") and caps["device-mapper"].present:
        return "dm-error"
    if caps.get("nbdkit") and caps["nbdkit"].present:
        return "nbdkit"
    return "none"


def _virt_type_available(conn, virt_type: str) -> bool:
    try:
        conn.getDomainCapabilities(None, None, None, virt_type, 0)
        return True
    except libvirt.libvirtError:
        return False


def facts(cfg: LabConfig, conn: libvirt.virConnect, image_digest: str = "") -> dict[str, str]:
    """What the Allure environment and the certification report record (one connection
    to the lab host for all of it, closed at the end)."""
    with cfg.host() as h:
        return _facts(cfg, conn, h, image_digest)


def _facts(cfg: LabConfig, conn, h, image_digest: str) -> dict[str, str]:
    def ver(v):
        return f"{v // 1000000}.{(v // 1000) % 1000}.{v % 1000}"

    info = conn.getInfo()
    out = {
        "lab.host": cfg.name,
        "lab.config": str(cfg.path),
        "host.hostname": conn.getHostname(),
        "host.cpu": _cpu_model(h) or info[0],
        "host.cpus": str(info[2]),
        "host.memory_mib": str(info[1]),
        "host.kernel": h.run("uname", "-r", check=False).stdout.strip() or "(unknown)",
        "libvirt.version": ver(conn.getLibVersion()),
        "qemu.version": ver(conn.getVersion()),       # libvirt's default QEMU; qemu_facts() names the lab's
        "virt.type": cfg.virt_type,
        "guest.arch": cfg.arch,
        # the default image by its hash, a built-in one by name and hash, a lab's own by its path
        "guest.image": " ".join(x for x in ("" if cfg.uses_default_image else cfg.image, image_digest) if x),
        "guest.access": cfg.image_access,
        "timeout.factor": str(cfg.timeout_factor),
    }
    out.update(qemu_facts(cfg, conn, h))
    out.update(dmi(h))
    bdfs = [d.bdf for d in (*cfg.inventory.sriov_pfs, *cfg.inventory.pci, *cfg.inventory.hpre)]
    if bdfs:
        out.update(device_models(h, bdfs))
    caps = probe(cfg, conn, h)
    out["fault.backend"] = fault_backend(cfg, caps)
    out["ios.retry_form"] = retry_form(caps)[1]
    x = caps.get("error-policy-retry")
    if x is not None and x.present:     # a finding for users who validate their XML
        out["ios.retry_xml_schema"] = x.detail.split("; ", 1)[-1]
    return out


def retry_form(caps: dict[str, Capability]) -> tuple[str, str]:
    """How this lab host proves the disk I/O suspension claims: ('xml', why) with the
    guide's libvirt XML, ('override', why) with the guide's settings as QEMU device
    properties through <qemu:override>, or ('none', why)."""
    x, q = caps.get("error-policy-retry"), caps.get("qemu-retry")
    if x is not None and x.present:
        return "xml", "the guide's libvirt XML (this libvirt has the error_policy='retry' extension)"
    if q is not None and q.present:
        return "override", ("the guide's settings as QEMU device properties (werror, rerror, retry_interval, "
                            "retry_timeout) through libvirt's <qemu:override>: this QEMU has the retry feature, "
                            "this libvirt lacks openEuler's XML extension, so IOS-1 and IOS-6 stay unproven here")
    return "none", "neither libvirt nor QEMU has the disk I/O suspension extension"


def _cpu_model(h) -> str:
    """The lab host's CPU model from its /proc/cpuinfo ("" when it cannot be read)."""
    from .arch import cpu_model
    try:
        return cpu_model(h.read_text("/proc/cpuinfo")) or ""
    except (OSError, LabError):
        return ""


DMI = (("vendor", "sys_vendor"), ("product", "product_name"), ("version", "product_version"),
       ("bios_vendor", "bios_vendor"), ("bios_version", "bios_version"), ("bios_date", "bios_date"))


def dmi(h) -> dict[str, str]:
    """The server's make, model and firmware from the lab host's DMI (sysfs; serial numbers
    and UUIDs are left out): host.dmi.vendor, .product, .version, .bios_*."""
    out = {}
    for key, name in DMI:
        try:
            v = h.read_text(f"/sys/class/dmi/id/{name}").strip()
        except (OSError, LabError):
            continue        # no DMI (a virt board without SMBIOS, some ARM boards): said by absence
        if v and v.lower() not in ("to be filled by o.e.m.", "default string", "not specified"):
            out[f"host.dmi.{key}"] = v
    return out or {"host.dmi": "(none: the lab host's sysfs has no /sys/class/dmi/id)"}


def device_models(h, bdfs) -> dict[str, str]:
    """lspci's name of each inventory device the run may use (PFs, passthrough functions)."""
    out = {}
    for bdf in bdfs:
        r = h.run("lspci", "-s", bdf, check=False)
        line = r.stdout.strip().splitlines()[0] if r.ok and r.stdout.strip() else ""
        out[f"device.{bdf}"] = line.split(" ", 1)[1] if " " in line else "(lspci gave no name)"
    return out


def lab_emulator(cfg: LabConfig, host, conn=None) -> str:
    """The QEMU binary the lab's domains use, a path on the lab host `host`: the lab
    config's (or its build, copied there), else libvirt's default for the guest
    architecture (asked of libvirt's capabilities)."""
    from . import qemu_build
    emu = qemu_build.emulator_of(cfg, host, build=False)
    if emu or conn is None:
        return emu
    from . import xml as X
    caps = X.parse(conn.getCapabilities())
    found = caps.find(f"guest/arch[@name='{cfg.arch}']/emulator")
    return found.text.strip() if found is not None and found.text else ""


def probe_qemu_retry(h, emulator: str) -> tuple[bool, str]:
    """Does this QEMU have openEuler's disk I/O suspension on the devices the guide names
    (retry_interval/retry_timeout beside werror/rerror on virtio-blk-pci and scsi-hd)?
    Asked of the binary itself (`-device X,help`), never guessed from its version."""
    from . import qemu_build
    if not emulator:
        return False, "libvirt names no QEMU for this architecture"
    missing = []
    for dev in ("virtio-blk-pci", "scsi-hd"):
        r = h.run(emulator, "-device", f"{dev},help", check=False, timeout=60)
        if r.rc != 0:
            return False, f"{emulator} -device {dev},help failed: {(r.stderr or r.stdout).strip()[-200:]}"
        have = {line.split("=", 1)[0].strip() for line in r.stdout.splitlines() if "=" in line}
        missing += [f"{dev}.{p}" for p in qemu_build.RETRY_PROPERTIES if p not in have]
    if missing:
        return False, f"{emulator} has no disk I/O suspension (no {', '.join(missing)}: upstream QEMU)"
    return True, f"{emulator} has retry_interval/retry_timeout on virtio-blk-pci and scsi-hd"


def qemu_facts(cfg: LabConfig, conn, h) -> dict[str, str]:
    """Which QEMU the lab's domains run: its path, its own version string and, for a
    build of the harness's, what it was built from (`h`: the lab host's commands)."""
    from . import qemu_build
    out = {}
    try:
        emu = lab_emulator(cfg, h, conn)
    except (LabError, libvirt.libvirtError) as e:
        return {"qemu.emulator": f"unavailable: {e}"}
    out["qemu.emulator"] = emu or "(libvirt's default)"
    if emu:
        r = h.run(emu, "--version", check=False, timeout=30)
        out["qemu.version"] = (r.stdout.splitlines() or ["(no answer)"])[0].strip()
    b = qemu_build.for_lab(cfg, build=False) if cfg.qemu_source else None
    if b is not None:
        out["qemu.build"] = b.describe()
    return out


def probe_retry_policy(conn, cfg: LabConfig, emulator: str = "") -> tuple[bool, str]:
    """Does this host's libvirt take the openEuler disk I/O suspension XML
    (error_policy='retry' with retry_interval/retry_timeout)?  Asked of libvirt's parser
    (a define without schema validation: openEuler's libvirt parses the XML its schema
    lacks) and decided by what libvirt kept, never guessed from the distribution.  The
    same domain with error_policy='stop' must define first, so a refusal is about
    'retry'.  Whether the schema validation also takes it (`virsh define --validate`)
    is said beside, as a finding for users who validate."""
    try:
        _define_probe(conn, cfg, emulator, "stop", False)
    except libvirt.libvirtError as e:
        return False, f"probe inconclusive: libvirt refused even error_policy='stop' ({e.get_error_message().splitlines()[0]})"
    try:
        back = _define_probe(conn, cfg, emulator, "retry", True)
    except libvirt.libvirtError as e:
        return False, f"libvirt's parser refuses error_policy='retry' (upstream libvirt; the openEuler extension " \
                      f"is absent): {e.get_error_message().splitlines()[0]}"
    drv = back.find("devices/disk/driver")
    if drv is None or drv.get("error_policy") != "retry" or drv.get("retry_interval") != "1000" \
            or drv.get("retry_timeout") != "0":
        return False, "libvirt accepted but dropped error_policy='retry' / retry_interval / retry_timeout " \
                      f"(it kept {dict(drv.attrib) if drv is not None else 'no driver element'})"
    return True, "libvirt's parser accepts and keeps error_policy='retry' with retry_interval/retry_timeout; " \
                 + schema_verdict(conn, cfg, emulator)


def schema_verdict(conn, cfg: LabConfig, emulator: str = "") -> str:
    """A finding: does libvirt's schema validation (virsh define --validate) take the
    guide's retry XML?  openEuler 24.03's libvirt parses it but its domaincommon.rng lacks it."""
    try:
        _define_probe(conn, cfg, emulator, "retry", True, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        return "its schema validation (virsh define --validate) accepts the guide's XML"
    except libvirt.libvirtError as e:
        return ("its schema validation (virsh define --validate) REFUSES the guide's XML: users who validate "
                f"are refused ({e.get_error_message().splitlines()[0]})")


def _define_probe(conn, cfg: LabConfig, emulator: str, policy: str, retry: bool, flags: int = 0):
    """Define a tagged one-disk probe domain, read back its inactive XML, undefine it."""
    import secrets

    from . import xml as X
    from .arch import profile
    from .sweep import undefine
    d = X.disk("/dev/null", target="vdb", fmt="raw", kind="block", error_policy=policy, rerror_policy=policy)
    if retry:
        d.find("driver").set("retry_interval", "1000")
        d.find("driver").set("retry_timeout", "0")
    meta = X.harness_metadata("probe", 0, "probe", work_dir=cfg.work_dir)
    dom_xml = X.domain(f"acc-probe-{secrets.token_hex(3)}", virt_type=cfg.virt_type, arch=profile(cfg.arch),
                       metadata=meta, devices=[d], emulator=emulator)
    dom = conn.defineXMLFlags(X.to_string(dom_xml), flags)
    try:
        return X.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    finally:
        undefine(dom)


@dataclass(frozen=True)
class QemuUser:
    """Who QEMU runs as under libvirt on the lab host, as libvirt's capabilities say it
    (<secmodel>: the DAC base label, and whether SELinux labels QEMU's files)."""
    uid: int
    gid: int
    selinux: bool = False
    apparmor: bool = False

    def describe(self) -> str:
        drivers = [d for d, on in (("SELinux", self.selinux), ("AppArmor", self.apparmor)) if on]
        return f"uid {self.uid}, gid {self.gid}" + (f", {' and '.join(drivers)}" if drivers else "")


# The type libvirt's SELinux driver gives a VM's disk images (security_selinux.c's image
# label from the policy's virt contexts); s0 without categories: any VM's MCS pair dominates it.
SVIRT_IMAGE_TYPE = "svirt_image_t"


def qemu_user(caps_xml: str, virt_type: str) -> QemuUser:
    """libvirt's word on QEMU's identity for `virt_type` domains, from its capabilities XML."""
    from lxml import etree
    root = etree.fromstring(caps_xml.encode())
    models = {m.findtext("model"): m for m in root.findall("host/secmodel")}
    uid = gid = 0
    dac = models.get("dac")
    if dac is not None:
        label = next((b.text for b in dac.findall("baselabel") if b.get("type") == virt_type),
                     dac.findtext("baselabel") or "+0:+0")
        try:
            uid, gid = (int(x.strip().lstrip("+")) for x in label.split(":"))
        except ValueError:
            raise LabError(f"libvirt's DAC base label for {virt_type} domains is {label!r}, not +UID:+GID") from None
    return QemuUser(uid, gid, selinux="selinux" in models, apparmor="apparmor" in models)


def host_arch(caps_xml: str) -> str:
    """The lab host's own architecture (its kernel's), from libvirt's capabilities XML."""
    from lxml import etree
    arch = etree.fromstring(caps_xml.encode()).findtext("host/cpu/arch")
    if not arch:
        raise LabError("libvirt's capabilities name no host/cpu/arch: the lab host's architecture is unknown")
    return arch.strip()


def grant_to_qemu(h, path: str, who: QemuUser) -> None:
    """A file the harness made on the lab host, handed to QEMU the way libvirt hands it a
    disk: owned by QEMU's user and group (mode 0600: nobody else), and with SELinux
    labelled as a VM image.  For files libvirt itself does not label (a socket of a fault
    helper, a device on QEMU's own command line); removed with the file."""
    steps = [("chown", f"{who.uid}:{who.gid}", path), ("chmod", "0600", path)]
    if who.selinux:
        steps.append(("chcon", "-t", SVIRT_IMAGE_TYPE, path))
    for argv in steps:
        r = h.run(*argv, check=False)
        if not r.ok:
            raise LabError(f"lab host {h.name}: {' '.join(argv)} failed: {r.stderr.strip()}; QEMU "
                           f"({who.describe()}) could not open {path}. Fix: run the harness's [shell] as root "
                           f"on the lab host")


def uefi_offered(domcaps_xml: str) -> str:
    """Whether libvirt can pick UEFI firmware for `<os firmware='efi'>`, from its domain
    capabilities (the firmware descriptors it found, and the loaders they name)."""
    from lxml import etree
    root = etree.fromstring(domcaps_xml.encode())
    fw = root.xpath("os/enum[@name='firmware']/value/text()")
    loaders = root.xpath("os/loader/value/text()")
    if "efi" in fw:
        return f"UEFI: offered by libvirt's firmware autoselection ({', '.join(loaders[:3]) or 'loader from descriptors'})"
    return ("UEFI: NOT offered (libvirt found no firmware descriptor for this architecture and machine); fix: install "
            "the lab host's UEFI firmware (openEuler: edk2-aarch64 / edk2-ovmf; Debian: qemu-efi-aarch64 / ovmf)")
