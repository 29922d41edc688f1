"""Command line of the harness library: `python -m lab doctor|image|qemu|sweep|secrets-scan|...`."""
from __future__ import annotations

import argparse
import time
import sys
from pathlib import Path

from . import claims, config, daemon, hostfacts, images, labhost_needs, timeouts
from .arch import profile
from .errors import LabError
from .session import LabUnreachable, Session
from .sweep import sweep


def _hosts(args) -> list[config.LabConfig]:
    """The lab hosts of --lab (all of a multi-host config, or the one named by --host)."""
    labs = config.load_set(args.lab)
    return [labs.host(args.host)] if args.host else list(labs.hosts)


def _each(fn):
    """Run a per-host command on every host of the lab config; the worst exit code wins."""
    def run(args) -> int:
        rc = 0
        hosts = _hosts(args)
        for i, cfg in enumerate(hosts):
            if len(hosts) > 1:
                print(("\n" if i else "") + f"===== lab host {cfg.name} ({cfg.path.name}) =====")
            rc = max(rc, fn(cfg))
        return rc
    return run


def cmd_doctor(cfg) -> int:
    print(f"lab config   {cfg.path}: valid (host {cfg.name}, {cfg.arch}, virt type {cfg.virt_type}, "
          f"{cfg.slots} slot(s), {cfg.daemon} libvirtd)")
    try:
        daemon.ensure(cfg)
    except Exception as e:
        print(f"libvirtd     the private daemon of {cfg.name} did not start: {e}")
    conn = None
    try:
        s = Session(cfg.libvirt_uri, timeout_s=10)
        conn = s.conn
        v = s.versions()
        print(f"libvirt      {cfg.libvirt_uri}: reachable, libvirt {v['libvirt']}, {v['hypervisor']}")
        try:
            dcaps = conn.getDomainCapabilities(cfg.emulator or None, cfg.arch, profile(cfg.arch).machine,
                                               cfg.virt_type, 0)
            print(f"virt type    {cfg.virt_type} on {cfg.arch}: offered by libvirt")
            if not cfg.uses_default_image and (cfg.firmware or profile(cfg.arch).firmware) == "efi":
                print(f"firmware     {hostfacts.uefi_offered(dcaps)}")
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
    elif cfg.builtin_image:
        print(f"guest image  {cfg.image} (built by the harness from Debian packages; access {cfg.image_access})")
    else:
        print(f"guest image  {cfg.image} (lab-provided; access {cfg.image_access})")
    if cfg.image_access == "console-password":
        src = f"${cfg.password_env}" if cfg.password_env else cfg.password_file
        print(f"console      login as {cfg.guest_user}, password from {src}")
    with cfg.host() as h:
        return _doctor_host(cfg, conn, h)


def _doctor_host(cfg, conn, h) -> int:
    """The doctor's part that asks the lab host (its one connection, `h`)."""
    q = hostfacts.qemu_facts(cfg, conn, h) if conn is not None else {}
    if q:
        print(f"qemu         {q.get('qemu.emulator')}: {q.get('qemu.version', '?')}"
              + (f"; {q['qemu.build']}" if "qemu.build" in q else ""))
    caps = hostfacts.probe(cfg, conn, h)
    print("\ncapabilities (probed on the host):")
    for c in caps.values():
        print(f"  {'yes' if c.present else 'no ':3}  {c.name:20} {c.detail}")
    print(f"\nfault backend: {hostfacts.fault_backend(cfg, caps)}")
    bad = 0
    if any((cfg.inventory.pci, cfg.inventory.sriov_pfs, cfg.inventory.usb, cfg.inventory.hpre)):
        print("\ninventory (the lab config against the host):")
        for ok, line in inventory_check(cfg, h):
            bad += not ok
            print(f"  {'ok ' if ok else 'BAD'}  {line}")
    print("\nlab host programs and sshd (what each missing one costs):")
    try:
        for ok, line in labhost_needs.check(h):
            print(f"  {'ok ' if ok else 'NO '}  {line}")
    except Exception as e:          # an unreachable shell is said above by the probes too
        print(f"  ??   the lab host's shell did not answer: {type(e).__name__}: {e}")
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
    if bad:
        print(f"{bad} inventory entr{'y does' if bad == 1 else 'ies do'} not match lab host {cfg.name}: "
              f"fix [inventory] in {cfg.path.name} (discover lists what the host has)")
    return 0 if conn is not None and not bad else 2


def inventory_check(cfg, h) -> list[tuple[bool, str]]:
    """Does every device the lab config lists exist on the host as listed?"""
    from . import pci, usb
    from .hostexec import sys_root
    sysr = sys_root(h)
    out = []
    for d in cfg.inventory.pci:
        try:
            dev = pci.read_device(d.bdf, sysr)
            out.append((dev.iommu_group is not None, f"pci {d.bdf}: {dev.ids} driver {dev.driver or '-'}, "
                        f"IOMMU group {dev.iommu_group}" + ("" if dev.iommu_group is not None else " (no IOMMU group)")))
        except LookupError:
            out.append((False, f"pci {d.bdf}: no such device on {cfg.name}"))
    for d in cfg.inventory.sriov_pfs:
        try:
            dev = pci.read_device(d.bdf, sysr)
            ok = dev.is_pf and dev.totalvfs >= d.max_vfs
            out.append((ok, f"sriov_pf {d.bdf}: {dev.ids}, sriov_totalvfs {dev.totalvfs} (listed max_vfs {d.max_vfs}), "
                            f"netdev {', '.join(dev.netdevs) or '-'}"))
        except LookupError:
            out.append((False, f"sriov_pf {d.bdf}: no such device on {cfg.name}"))
    present = usb.host_devices_sysfs(sysr / "bus/usb/devices")
    for d in cfg.inventory.usb:
        try:
            u = usb.resolve(d, present)
            out.append((True, f"usb {d.vendor}:{d.product}: bus {u.bus} device {u.device} {u.description}"))
        except usb.InventoryError as e:
            out.append((False, f"usb {d.vendor}:{d.product}: {e}"))
    for d in cfg.inventory.hpre:
        ok = any(x["bdf"] == d.bdf for x in pci.hpre_devices(sysr))
        out.append((ok, f"hpre {d.bdf}: " + ("under /sys/class/uacce" if ok else "not under /sys/class/uacce")))
    return out


def cmd_image(cfg) -> int:
    if cfg.builtin_image:
        from . import cloud_image
        arch = profile(cfg.arch)
        img = cloud_image.image(cfg.work_dir / "images", cfg.image, arch=arch, firmware=cfg.firmware or arch.firmware)
        print(f"guest image {cfg.image} {img.digest}: {img.root.parent}")
        return 0
    if not cfg.uses_default_image:
        print(f"lab {cfg.name} uses its own image {cfg.image}; nothing to build")
        return 0
    img = images.default_image(cfg.work_dir / "images", profile(cfg.arch))
    print(f"guest image {img.digest}: {img.root.parent}")
    return 0


def cmd_qemu(cfg) -> int:
    """Build (or find cached) the lab's QEMU from [qemu] source; say which QEMU the lab uses."""
    from . import qemu_build
    if not cfg.qemu_source:
        print(f"lab {cfg.name} builds no QEMU; its domains use "
              f"{cfg.emulator or 'libvirt default QEMU'}")
        return 0
    t = time.monotonic()
    b = qemu_build.for_lab(cfg, build=True)
    where = b.emulator
    with cfg.host() as h:
        if not h.local:                     # a remote lab host: copied there (cached)
            where = f"{h.name}:{qemu_build.emulator_of(cfg, h, build=False)}"
    print(f"{b.describe()}: {where} (ready in {time.monotonic() - t:.1f} s; "
          f"built in {b.info['build_seconds']:.0f} s on {b.info['built']})")
    return 0


def cmd_sweep(cfg) -> int:
    timeouts.set_factor(cfg.timeout_factor)
    daemon.ensure(cfg)
    s = Session(cfg.libvirt_uri)
    host = cfg.host()
    try:
        undone = sweep(s.conn, cfg.work_dir, log=print, host=host, host_work_dir=cfg.host_work_dir)
    finally:
        host.close()
        s.close()
    print(f"swept {len(undone)} leftover(s)")
    return 0


def _files(paths) -> list[Path]:
    out = []
    for top in map(Path, paths):
        out += [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
    return out


def secret_leaks(secret: str, files) -> list[str]:
    """Those of `files` whose bytes contain `secret` (names only, never the secret)."""
    needle = secret.encode()
    found = []
    for f in files:
        try:
            if needle in f.read_bytes():
                found.append(str(f))
        except OSError:
            pass
    return found


def cmd_secrets_scan(cfg, paths) -> int:
    """Fail when the lab's console password is in any file under `paths` (reports, logs, Allure)."""
    if cfg.image_access != "console-password":
        print(f"lab {cfg.name} has no console password (access = {cfg.image_access}); nothing to scan for")
        return 0
    files, password = _files(paths), cfg.guest_password()
    leaks = secret_leaks(password.reveal(), files)
    if leaks:
        print(f"the console password of {cfg.name} (from {password.source}) is written in "
              f"{len(leaks)} file(s): " + ", ".join(leaks))
        return 1
    print(f"the console password of {cfg.name} is in none of {len(files)} file(s) under {', '.join(map(str, paths))}")
    return 0


def cmd_daemon(cfg, action) -> int:
    if cfg.daemon != "private":
        print(f"lab host {cfg.name} uses its own libvirtd ({cfg.libvirt_uri}); nothing to {action}")
        return 0
    if action == "start":
        daemon.ensure(cfg)
        print(f"private libvirtd of {cfg.name} runs: {cfg.libvirt_uri}")
    else:
        for line in daemon.stop(cfg) or [f"the private libvirtd of {cfg.name} was not running"]:
            print(line)
    return 0


def cmd_discover(cfg) -> int:
    """What passthrough hardware the lab host has (read-only), and a config snippet."""
    from .hostexec import sys_root
    with cfg.host() as h:
        return _discover(cfg, sys_root(h))


def _discover(cfg, sysr) -> int:
    from . import pci, usb
    devs = pci.discover(sysr)
    hpre = pci.hpre_devices(sysr)
    print(f"{'BDF':14} {'IDs':10} {'class':9} {'driver':12} {'group':5} SR-IOV")
    for d in devs:
        sriov = f"PF {d.numvfs}/{d.totalvfs} VFs" if d.is_pf else (f"VF of {d.physfn}" if d.is_vf else "")
        print(f"{d.bdf:14} {d.ids:10} {d.pci_class:9} {d.driver or '-':12} {str(d.iommu_group):5} {sriov}")
    for h in hpre:
        print(f"HPRE {h['name']} at {h['bdf']} ({h['vendor']}:{h['device']})")
    usbs = [u for u in usb.host_devices_sysfs(sysr / "bus/usb/devices") if not u.is_root_hub]
    for u in usbs:
        print(f"USB bus {u.bus} device {u.device}: {u.vendor}:{u.product} {u.description}")
    print(f"\n# a lab-config snippet for {cfg.name}; keep only what the harness may take from it")
    print(pci.config_snippet(devs, hpre))
    print("usb = [" + ", ".join(f'{{ vendor = "{u.vendor}", product = "{u.product}", note = "{u.description}" }}'
                                 for u in usbs) + "]")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    p.add_argument("--lab", default=None, help="lab config (default: labs/local.toml)")
    p.add_argument("--host", default=None, help="only this lab host of a multi-host lab config")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("doctor", help="what this lab host can do, and which claims will run or skip")
    sub.add_parser("image", help="build (or check) the lab's guest image (default or built-in distribution image)")
    sub.add_parser("qemu", help="build (or check) the lab's own QEMU ([qemu] source in the lab config)")
    sub.add_parser("sweep", help="remove leftovers of dead runs")
    sub.add_parser("discover", help="host PCI/SR-IOV/HPRE devices (read-only) and a lab-config snippet")
    sc = sub.add_parser("secrets-scan", help="fail if the lab's console password is in any file under PATHS")
    sc.add_argument("paths", nargs="+")
    mg = sub.add_parser("merge", help="merge separate runs' outputs (Allure results, JUnit, certification) into OUT")
    mg.add_argument("out")
    mg.add_argument("runs", nargs="+", help="the runs' report directories")
    d = sub.add_parser("daemon", help="start or stop the private libvirtd of lab hosts with daemon = 'private'")
    d.add_argument("action", choices=["start", "stop"])
    args = p.parse_args(argv)
    try:
        if args.cmd == "merge":
            from .merge import MergeError, merge
            try:
                merge(Path(args.out), [Path(r) for r in args.runs])
                return 0
            except MergeError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        if args.cmd == "daemon":
            return _each(lambda cfg: cmd_daemon(cfg, args.action))(args)
        if args.cmd == "secrets-scan":
            return _each(lambda cfg: cmd_secrets_scan(cfg, args.paths))(args)
        return _each({"doctor": cmd_doctor, "image": cmd_image, "qemu": cmd_qemu, "sweep": cmd_sweep,
                      "discover": cmd_discover}[args.cmd])(args)
    except LabError as e:          # a bad config, an image, an unreachable host, a QEMU build: said, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
