"""Storage snapshots: the guide's external disk-only snapshot (through virsh,
as documented) and the restore of a disk to its pre-snapshot state."""
from __future__ import annotations

import re
import time

import libvirt

from . import xml as X


def create_external(vm, disks: dict, others_no: list[str] = ()) -> tuple[str, float]:
    """`virsh snapshot-create-as --domain VM --disk-only --diskspec D,snapshot=external,file=F --atomic`;
    returns (snapshot name, seconds taken)."""
    args = ["snapshot-create-as", "--domain", vm.name, "--disk-only", "--atomic"]
    for target, path in disks.items():
        args += ["--diskspec", f"{target},snapshot=external,file={path}"]
    for target in others_no:
        args += ["--diskspec", f"{target},snapshot=no"]
    t = time.monotonic()
    r = vm.virsh(*args).check()
    took = time.monotonic() - t
    m = re.search(r"Domain snapshot (\S+) created", r.stdout)
    if not m:
        raise AssertionError(f"virsh snapshot-create-as said: {r.stdout.strip()!r}")
    return m.group(1), took


def restore_external(vm, name: str, target: str = "vda") -> None:
    """Bring `target` back to its state when snapshot `name` was taken: stop the
    VM, point the disk at the snapshot's backing image again, drop the overlay
    and the snapshot's metadata, start the VM."""
    snap = vm.domain.handle.snapshotLookupByName(name)
    sx = X.parse(snap.getXMLDesc())
    before = sx.find(f"domain/devices/disk/target[@dev='{target}']/..")
    overlay = sx.find(f"disks/disk[@name='{target}']/source").get("file")      # a path on the lab host
    vm.destroy()
    dom_xml = vm.domain.inactive_xml()
    disk = dom_xml.find(f"devices/disk/target[@dev='{target}']/..")
    disk.find("source").set("file", before.find("source").get("file"))
    for bs in disk.findall("backingStore"):
        disk.remove(bs)
    vm.domain.define(X.to_string(dom_xml))
    snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    vm.host.unlink(overlay)
    vm.start()
