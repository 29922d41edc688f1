"""The L1 lab-host image of the nested lab, built offline from Debian packages.

debootstrap into a folder, Debian's generic kernel and modules installed in the
chroot (the newest one may live in the security suite), the lab host's software
(libvirt, QEMU, dmsetup, Open vSwitch, LIO's targetcli, pciutils, usbutils,
sshd), then an ext4 file system made from the folder (`mkfs.ext4 -d`, no loop
mounts) and converted to qcow2.  Content-addressed like the guest image: the
cache key hashes the package list, the mirror's package versions of the
kernel, the builder's version and the lab key that may log in as root.  The Debian
root comes from lab/debroot.py.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..debroot import candidate, chroot, debootstrap, install, prune_docs, sh, write
from ..images import ImageError

BUILDER_VERSION = "2"
SUITE = "bookworm"
# What a lab host runs.  libpam-systemd: polkitd (pulled by libvirt) fails to configure without it.
PACKAGES = [
    "systemd", "systemd-sysv", "libpam-systemd", "udev", "dbus", "openssh-server", "iproute2", "kmod",
    "procps", "util-linux", "netcat-openbsd", "libvirt-daemon-system", "libvirt-clients",
    "qemu-system-x86", "qemu-utils", "dmsetup", "openvswitch-switch", "targetcli-fb", "pciutils",
    "usbutils", "pci.ids", "ethtool", "coreutils", "e2fsprogs",
    # a ping flood between two VFs measures SRIOV-3's rate (a lab host needs ping: lab/labhost_needs.py)
    "iputils-ping",
    # OVS-DPDK, the vhost-user backend (NIC-8); DPDK finds no mempool driver without the ring one
    "openvswitch-switch-dpdk", "librte-mempool-ring23",
]
# OVS-DPDK on a one-vCPU host: DPDK's memory from 2 MiB hugepages (320 MiB reserved at boot),
# one mempool per port (the shared default asks for 262144 mbufs), the PMD thread on CPU 0
# sleeping up to 10 ms when idle instead of spinning L1's only vCPU, no PCI probing.
HUGEPAGES_2M = 160
OVS_DPDK_CONFIG = ["dpdk-init=true", "dpdk-socket-mem=256", "dpdk-lcore-mask=0x1", "pmd-cpu-mask=0x1",
                   "pmd-maxsleep=10000", "per-port-memory=true", "dpdk-extra=--no-pci"]
KERNEL_PACKAGE = "linux-image-amd64"
# Loaded at boot: what the hardware claims need of the lab host's kernel.
MODULES = ["kvm_amd", "vfio_pci", "vhost_net", "vhost_scsi", "tun", "bridge", "dm_mod",
           "target_core_mod", "target_core_file", "loop", "igb", "e1000e", "e1000", "usb_storage"]
# Kernel trees a lab host never needs (the image shrinks by about half).
PRUNE_MODULES = ["drivers/gpu", "sound", "drivers/net/wireless", "drivers/media", "drivers/infiniband",
                 "drivers/staging", "drivers/bluetooth", "net/bluetooth", "drivers/iio", "drivers/isdn"]
IMAGE_FILES = ("vmlinuz", "initrd.img", "root.qcow2")
ROOT_SIZE_MIB = 3072


@dataclass(frozen=True)
class L1Image:
    dir: Path
    digest: str

    @property
    def root(self) -> Path:
        return self.dir / "root.qcow2"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"


def _sh(cmd: list[str], what: str, **kw) -> str:
    return sh(cmd, f"L1 image: {what}", **kw)


def inputs(pubkey: str, host_key: Path | None = None) -> dict:
    return {"host_key": host_key.with_suffix(".pub").read_text().strip() if host_key else "",
            "builder": BUILDER_VERSION, "suite": SUITE, "packages": PACKAGES,
            "kernel": [KERNEL_PACKAGE, candidate(KERNEL_PACKAGE)], "libvirt": candidate("libvirt-daemon-system"),
            "modules": MODULES, "prune": PRUNE_MODULES, "pubkey": pubkey.strip(), "size": ROOT_SIZE_MIB,
            "hugepages": HUGEPAGES_2M, "ovs_dpdk": OVS_DPDK_CONFIG}


def _complete(d: Path) -> bool:
    try:
        m = json.loads((d / "manifest.json").read_text())
        return all((d / f).stat().st_size == m["sizes"][f] for f in IMAGE_FILES)
    except (OSError, ValueError, KeyError):
        return False


def l1_image(cache_dir: Path, pubkey: str, host_key: Path | None = None, log=print) -> L1Image:
    """The cached L1 image for this key, built first when its inputs changed.
    `host_key`: L1's SSH host key (private; .pub beside it), made by the lab, so the
    harness pins it instead of trusting on first use."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    inp = inputs(pubkey, host_key)
    digest = hashlib.sha256(json.dumps(inp, sort_keys=True).encode()).hexdigest()[:16]
    final = cache_dir / f"l1-{digest}"
    with open(cache_dir / f".l1-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(final):
            os.utime(final / "manifest.json")
            return L1Image(final, digest)
        shutil.rmtree(final, ignore_errors=True)
        log(f"building the L1 lab-host image {final.name} (debootstrap {SUITE}, kernel {inp['kernel'][1]})")
        tmp = Path(tempfile.mkdtemp(prefix=f".build-l1-{digest}-", dir=cache_dir))
        try:
            _build(tmp, pubkey, host_key)
            sizes = {f: (tmp / f).stat().st_size for f in IMAGE_FILES}
            (tmp / "manifest.json").write_text(json.dumps({"digest": digest, "sizes": sizes, "inputs": inp}, indent=1))
            os.chmod(tmp, 0o755)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for old in cache_dir.glob("l1-*"):
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
            log(f"pruned old L1 image {old.name}")
    return L1Image(final, digest)


def _build(out: Path, pubkey: str, host_key: Path | None = None) -> None:
    root = out / "root"
    debootstrap(root, SUITE, PACKAGES, "the L1 lab-host image")
    install(root, [KERNEL_PACKAGE, "initramfs-tools"], "the L1 lab-host image")
    _configure(root, pubkey)
    if host_key:
        for f in (root / "etc/ssh").glob("ssh_host_*"):
            f.unlink()
        shutil.copy2(host_key, root / "etc/ssh/ssh_host_ed25519_key")
        os.chmod(root / "etc/ssh/ssh_host_ed25519_key", 0o600)
        shutil.copy2(host_key.with_suffix(".pub"), root / "etc/ssh/ssh_host_ed25519_key.pub")
        write(root, "/etc/ssh/sshd_config.d/acc-hostkey.conf", "HostKey /etc/ssh/ssh_host_ed25519_key\n")
    boot = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not boot or not initrds:
        raise ImageError(f"L1 image: no kernel/initrd in {root / 'boot'} after installing {KERNEL_PACKAGE}")
    shutil.copy2(boot[-1], out / "vmlinuz")
    shutil.copy2(initrds[-1], out / "initrd.img")
    _prune(root)
    raw = out / "root.raw"
    _sh(["mkfs.ext4", "-q", "-L", "l1root", "-d", str(root), str(raw), f"{ROOT_SIZE_MIB}M"], "mkfs.ext4 -d")
    shutil.rmtree(root)
    _sh(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / "root.qcow2")], "qemu-img convert")
    raw.unlink()
    for f in IMAGE_FILES:
        os.chmod(out / f, 0o644)


def _configure(root: Path, pubkey: str) -> None:
    write(root, "/etc/hostname", "acc-l1\n")
    write(root, "/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 acc-l1\n")
    write(root, "/etc/fstab", "LABEL=l1root / ext4 defaults,noatime 0 1\n")
    write(root, "/root/.ssh/authorized_keys", pubkey.strip() + "\n", 0o600)
    os.chmod(root / "root/.ssh", 0o700)
    write(root, "/etc/ssh/sshd_config.d/acc.conf",
           "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\nMaxSessions 64\nMaxStartups 64\n")
    # The management NIC (virtio) takes DHCP from QEMU's user network; every other NIC is lab hardware.
    write(root, "/etc/systemd/network/10-mgmt.network", "[Match]\nDriver=virtio_net\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n")
    write(root, "/etc/modules-load.d/acc-lab.conf", "\n".join(MODULES) + "\n")
    write(root, "/etc/modprobe.d/acc-lab.conf", "options kvm_amd nested=1\n")
    write(root, "/etc/sysctl.d/acc-hugepages.conf", f"vm.nr_hugepages = {HUGEPAGES_2M}\n")
    settings = " ".join(f"other_config:{c}" for c in OVS_DPDK_CONFIG)
    write(root, "/etc/systemd/system/acc-ovs-dpdk.service",
           "[Unit]\nDescription=OVS-DPDK settings of the lab host, before ovs-vswitchd reads them\n"
           "Requires=ovsdb-server.service\nAfter=ovsdb-server.service\nBefore=ovs-vswitchd.service\n\n"
           f"[Service]\nType=oneshot\nExecStart=/usr/bin/ovs-vsctl --no-wait set Open_vSwitch . {settings}\n\n"
           "[Install]\nWantedBy=ovs-vswitchd.service\n")
    # No libvirt network of its own: the lab's bridges are made by the harness.
    for f in (root / "etc/libvirt/qemu/networks/autostart").glob("*.xml"):
        f.unlink()
    chroot(root, "sh", "-c",
            "systemctl enable systemd-networkd ssh libvirtd virtlogd acc-ovs-dpdk >/dev/null 2>&1; "
            "update-alternatives --set ovs-vswitchd /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk >/dev/null; "
            "systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer "
            "man-db.timer systemd-timesyncd.service >/dev/null 2>&1; "
            "ssh-keygen -A >/dev/null; "
            "apt-get clean",
            what="enabling the L1 services")


def _prune(root: Path) -> None:
    prune_docs(root)
    for kdir in (root / "lib/modules").glob("*"):
        for rel in PRUNE_MODULES:
            shutil.rmtree(kdir / "kernel" / rel, ignore_errors=True)
        _sh(["depmod", "-b", str(root), kdir.name], f"depmod of the pruned modules {kdir.name}")
