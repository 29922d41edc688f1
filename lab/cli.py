"""Command line of the harness library: `python -m lab doctor|image|sweep`."""
from __future__ import annotations

import argparse
import sys

from . import claims, config, host, images, timeouts
from .arch import profile
from .session import LabUnreachable, Session
from .sweep import sweep


def _load(args) -> config.LabConfig:
    return config.load(args.lab)


def cmd_doctor(args) -> int:
    cfg = _load(args)
    print(f"lab config   {cfg.path}: valid (host {cfg.name}, {cfg.arch}, virt type {cfg.virt_type})")
    conn = None
    try:
        s = Session(cfg.libvirt_uri, timeout_s=10)
        conn = s.conn
        v = s.versions()
        print(f"libvirt      {cfg.libvirt_uri}: reachable, libvirt {v['libvirt']}, {v['hypervisor']}")
        try:
            conn.getDomainCapabilities(None, cfg.arch, None, cfg.virt_type, 0)
            print(f"virt type    {cfg.virt_type} on {cfg.arch}: offered by libvirt")
        except Exception as e:        # libvirtError, but keep doctor going on anything
            print(f"virt type    {cfg.virt_type} on {cfg.arch}: NOT offered ({e}); fix [host] virt_type")
    except LabUnreachable as e:
        print(f"libvirt      {e}")
    if cfg.uses_default_image:
        try:
            inp = images.inputs(profile(cfg.arch))
            d = images.digest_of(inp)
            path = cfg.work_dir / "images" / f"guest-{cfg.arch}-{d}"
            state = "built" if images._complete(path) else "not built yet (./harness setup builds it)"
            print(f"guest image  default {d} ({inp['kernel'][0]} {inp['kernel'][1]}): {state}")
        except images.ImageError as e:
            print(f"guest image  {e}")
    else:
        print(f"guest image  {cfg.image} (lab-provided, SSH key via NoCloud seed)")
    caps = host.probe(cfg, conn)
    print("\ncapabilities (probed on the host):")
    for c in caps.values():
        print(f"  {'yes' if c.present else 'no ':3}  {c.name:20} {c.detail}")
    print(f"\nfault backend: {host.fault_backend(cfg, caps)}")
    print("\nclaims:")
    runs = 0
    for cl in claims.CLAIMS.values():
        missing = [caps[r] for r in cl.requires if not caps[r].present]
        if missing:
            print(f"  skip  {cl.id:8} {cl.story}: lacks " + "; ".join(f"{m.name} ({m.detail})" for m in missing))
        else:
            runs += 1
            print(f"  run   {cl.id:8} {cl.story}")
    print(f"\n{runs} of {len(claims.CLAIMS)} claims can run on {cfg.name}")
    return 0 if conn is not None else 2


def cmd_image(args) -> int:
    cfg = _load(args)
    if not cfg.uses_default_image:
        print(f"lab {cfg.name} uses its own image {cfg.image}; nothing to build")
        return 0
    img = images.default_image(cfg.work_dir / "images", profile(cfg.arch))
    print(f"guest image {img.digest}: {img.root.parent}")
    return 0


def cmd_sweep(args) -> int:
    cfg = _load(args)
    timeouts.set_factor(cfg.timeout_factor)
    s = Session(cfg.libvirt_uri)
    undone = sweep(s.conn, cfg.work_dir, log=print)
    print(f"swept {len(undone)} leftover(s)")
    return 0


def cmd_discover(args) -> int:
    """What passthrough hardware this host has (read-only), and a config snippet."""
    from . import pci
    devs = pci.discover()
    hpre = pci.hpre_devices()
    print(f"{'BDF':14} {'IDs':10} {'class':9} {'driver':12} {'group':5} SR-IOV")
    for d in devs:
        sriov = f"PF {d.numvfs}/{d.totalvfs} VFs" if d.is_pf else (f"VF of {d.physfn}" if d.is_vf else "")
        print(f"{d.bdf:14} {d.ids:10} {d.pci_class:9} {d.driver or '-':12} {str(d.iommu_group):5} {sriov}")
    for h in hpre:
        print(f"HPRE {h['name']} at {h['bdf']} ({h['vendor']}:{h['device']})")
    print("\n# a lab-config snippet; keep only what the harness may take from this host")
    print(pci.config_snippet(devs, hpre))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    p.add_argument("--lab", default=None, help="lab config (default: labs/local.toml)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("doctor", help="what this lab host can do, and which claims will run or skip")
    sub.add_parser("image", help="build (or check) the default guest image")
    sub.add_parser("sweep", help="remove leftovers of dead runs")
    sub.add_parser("discover", help="host PCI/SR-IOV/HPRE devices (read-only) and a lab-config snippet")
    args = p.parse_args(argv)
    try:
        return {"doctor": cmd_doctor, "image": cmd_image, "sweep": cmd_sweep, "discover": cmd_discover}[args.cmd](args)
    except (config.LabConfigError, images.ImageError, LabUnreachable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
