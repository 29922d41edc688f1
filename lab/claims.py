"""The catalogue of documented claims as data: section, what is claimed, and the
host capabilities a claim needs (empty: runs on any lab host)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    id: str
    feature: str
    story: str
    requires: tuple = ()


_S = {
    "PCIE": "PCIe controllers", "DISK": "Virtual disks", "NIC": "vNICs", "SER": "Serial console",
    "PCI": "PCI passthrough", "SRIOV": "SR-IOV passthrough", "HPRE": "HPRE accelerator",
    "USB": "USB", "SNAP": "Storage snapshots", "IOS": "Disk I/O suspension",
}

_TABLE = [
    ("PCIE-1", "simplified controller form is filled in by libvirt", ()),
    ("PCIE-2", "filled-in numbering follows the documented rules", ()),
    ("PCIE-3", "last controller index is root ports + 1", ()),
    ("PCIE-4", "the guest sees the configured root ports and bridge", ()),
    ("PCIE-5", "devices on root ports are hot-swappable", ()),
    ("PCIE-6", "root ports are not hot-swappable", ()),
    ("PCIE-7", "hot-plug capacity is what was reserved", ()),
    ("DISK-1", "virtio-blk disks are vd[a-z], vd[a-z][a-z]", ()),
    ("DISK-2", "virtio-scsi disks are sd[a-z], sd[a-z][a-z]", ()),
    ("DISK-3", "vhost-scsi disks are sd*", ("vhost-scsi",)),
    ("DISK-4", "attach-device attaches a usable disk", ()),
    ("DISK-5", "live attach is not persistent, --config is", ()),
    ("DISK-6", "detach-device with the same XML removes the disk", ()),
    ("DISK-7", "driver attributes reach QEMU", ()),
    ("NIC-1", "virtio NIC with the given MAC and driver", ()),
    ("NIC-2", "driver name='vhost' gives vhost-net", ("vhost-net",)),
    ("NIC-3", "queues='2' gives two queue pairs", ()),
    ("NIC-4", "source bridge puts the tap on the bridge", ()),
    ("NIC-5", "virtualport openvswitch", ("openvswitch",)),
    ("NIC-6", "live attach is not persistent, --config is", ()),
    ("NIC-7", "detach with the same XML removes the NIC", ()),
    ("NIC-8", "vhost-user NICs work", ("vhost-user",)),
    ("NIC-9", "a hot-plugged NIC carries traffic", ()),
    ("SER-1", "pty serial console gives an interactive shell", ()),
    ("SER-2", "start --console misses no message", ()),
    ("SER-3", "console works without a layer-3 path", ()),
    ("PCI-1", "managed VFIO passthrough", ("vfio", "pci-device")),
    ("PCI-2", "rom bar='off' is honoured", ("vfio", "pci-device")),
    ("PCI-3", "IOMMU group goes to one VM only", ("vfio", "pci-device")),
    ("SRIOV-1", "sriov_numvfs creates and removes VFs", ("sriov",)),
    ("SRIOV-2", "PF/VF mapping from sysfs", ("sriov",)),
    ("SRIOV-3", "VF MAC and rate through ip link", ("sriov",)),
    ("SRIOV-4", "interface type='hostdev' passes a VF", ("sriov", "vfio")),
    ("HPRE-1", "HPRE IDs and VF limit", ("hpre",)),
    ("HPRE-2", "HPRE VF usable in a VM", ("hpre", "vfio")),
    ("HPRE-3", "HPRE driver pinned while in use", ("hpre", "vfio")),
    ("USB-1", "UHCI, EHCI and xHCI controllers", ()),
    ("USB-2", "controller port counts", ()),
    ("USB-3", "one controller of a type per VM", ()),
    ("USB-4", "USB controllers are not hot-swappable", ()),
    ("USB-5", "USB tablet on the USB 1.1 controller", ()),
    ("USB-6", "host USB device passthrough", ("usb-device",)),
    ("USB-7", "USB live/config hot swap", ("usb-device",)),
    ("USB-8", "USB device to one VM only", ("usb-device",)),
    ("USB-9", "no live migration with USB passthrough", ("usb-device",)),
    ("USB-10", "absent USB device fails VM start", ("usb-subsystem",)),
    ("SNAP-1", "domblklist lists disks", ()),
    ("SNAP-2", "external disk-only snapshot", ()),
    ("SNAP-3", "snapshot-list shows disk-snapshot", ()),
    ("SNAP-4", "restore a damaged system", ()),
    ("SNAP-5", "qcow2/raw yes, block devices no", ()),
    ("IOS-1", "retry policy XML accepted", ("error-policy-retry",)),
    # IOS-2..5 and IOS-7 are QEMU behaviour: proven with the guide's XML where libvirt has
    # openEuler's extension, else with the same settings as QEMU device properties.
    ("IOS-2", "short fault: I/O waits and completes", ("qemu-retry", "fault-backend")),
    ("IOS-3", "long fault is reported to the guest", ("qemu-retry", "fault-backend")),
    ("IOS-4", "retry defaults", ("qemu-retry", "fault-backend")),
    ("IOS-5", "read and write errors separately", ("qemu-retry", "fault-backend")),
    ("IOS-6", "only virtio-blk and virtio-scsi", ("error-policy-retry",)),
    ("IOS-7", "QEMU command-line form", ("qemu-retry",)),
    ("IOS-8", "error_policy='stop' pauses and resumes", ("fault-backend",)),
    ("IOS-9", "dm-error fault injection (or a stated fallback)", ("fault-backend",)),
]

CLAIMS: dict[str, Claim] = {cid: Claim(cid, _S[cid.split("-")[0]], story, req) for cid, story, req in _TABLE}


def get(cid: str) -> Claim:
    try:
        return CLAIMS[cid]
    except KeyError:
        raise KeyError(f"unknown claim id {cid!r}; see lab/claims.py") from None
