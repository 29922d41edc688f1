"""The nested lab host (L1): a VM on this machine with emulated lab hardware,
started by QEMU 10 (bookworm-backports, for the igb SR-IOV NIC) under TCG.

QEMU 10 is unpacked from Debian's .debs into the lab's own directory, never
installed over the system's QEMU: it runs in a private mount namespace where its
own module directory is bound over the system's (a QEMU refuses modules of
another build).  L1 is reached only through a port forward on 127.0.0.1.

Hardware of L1 (what a real lab host's inventory would list):
- intel-iommu (interrupt remapping, caching mode) on q35: VFIO works in L1
- igb (82576, SR-IOV PF, up to 7 VFs) on root port 01:00.0
- e1000e on root port 02:00.0: a device for plain PCI passthrough (it has a ROM BAR)
- two e1000 behind a PCIe-to-PCI bridge (bus 04): one IOMMU group with two devices
- qemu-xhci with a USB disk (46f4:0001) and a USB keyboard (0627:0001)
- in software: OVS-DPDK (vhost-user), LIO (vhost-scsi), device-mapper, vhost-net
Everything L1 writes lives in an overlay that is removed when L1 stops.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..hostproc import pid_by_file, reap, terminate
from ..images import ImageError
from ..timeouts import Deadline, poll
from .image import L1Image, l1_image

QEMU_VERSION = "1:10.0.2+ds-2+deb13u1~bpo12+1"
QEMU_PACKAGES = ["qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios"]
BACKPORTS = "bookworm-backports"
# L1's CPU and vCPU count.  With two vCPUs (multi-threaded TCG) L1's kernel died in KVM's
# vCPU threads on the first to third L2 boot (its stack guard page hit while taking an
# exception), with `-cpu max`, with la57=off and with qemu64+svm alike; with one vCPU,
# 5 of 5 L2 boots in a row were clean (57-73 s each).  la57=off: no 5-level paging for
# the nested page tables TCG walks.
L1_CPU = "max,la57=off"
# L1's memory stays below q35's 2816 MiB low-memory split, so L1 has no RAM above 4 GiB.
# With RAM above 4 GiB, SeaBIOS puts the root ports' prefetchable windows above 4 GiB,
# L1's kernel places the igb VFs' 64-bit BARs there (0xc040000000), and QEMU 10.0.2 maps
# a VF's BAR at the low 32 bits of that address only: the VF's registers read 0 and its
# guest driver says "PF still in reset state" (SRIOV-4).  `check_vf_bars` guards this.
L1_MEMORY_MIB = 2560
# The igb PF in L1 (root port rp1 at a fixed slot: fixed BDF).
L1_PF = "0000:01:00.0"
# Debugging the emulated hardware: ACC_L1_TRACE=<QEMU trace patterns, comma-separated>
# starts L1 with those trace events logged to <lab dir>/l1-trace.log and a human monitor
# on <lab dir>/l1/monitor.sock (`info mtree`, `info pci`).
TRACE_ENV = "ACC_L1_TRACE"
L1_CPUS = 1
PANIC_RE = re.compile(rb"Kernel panic - not syncing[^\n]*|end Kernel panic[^\n]*")

# Constant script; paths arrive as arguments.  $1 = QEMU 10's root, then the QEMU argv.
_QEMU = r'''
set -e
q=$1; shift
mount --bind "$q/usr/lib/x86_64-linux-gnu/qemu" /usr/lib/x86_64-linux-gnu/qemu
exec "$@"
'''


@dataclass(frozen=True)
class Layout:
    """Where a lab host the harness starts keeps its files (one directory the harness
    owns): the nested lab's L1 here; the namespace lab host (lab/nslab) names its own."""
    dir: Path
    KEY = "l1_key"                    # root login into the lab host (the harness's)
    HOST_KEY = "l1_host_key"          # the lab host's own SSH host key, pinned in known_hosts
    STATE = "l1"                      # the running lab host (removed at stop)
    PIDFILE = "qemu.pid"
    LOG = "console.log"

    @property
    def key(self) -> Path:
        return self.dir / self.KEY

    @property
    def host_key(self) -> Path:
        return self.dir / self.HOST_KEY

    def shell(self, name: str, port: int):
        """Root's SSH into the lab host through 127.0.0.1:<port>, its host key pinned."""
        from ..hostexec import SshHost
        return SshHost(name, "127.0.0.1", port, "root", str(self.key), known_hosts=str(self.known_hosts),
                       connect_timeout=5, ssh_config=os.devnull)     # the lab's own: no user's ssh config

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def ssh(self) -> Path:            # the ssh command libvirt's qemu+ssh transport runs (pins L1's key)
        return self.dir / "ssh"

    @property
    def qemu_root(self) -> Path:
        return self.dir / "qemu10"

    @property
    def state(self) -> Path:          # the running lab host: L1's overlay, console, pid
        return self.dir / self.STATE

    @property
    def pidfile(self) -> Path:
        return self.state / self.PIDFILE

    @property
    def console(self) -> Path:        # L1's console; the namespace lab host's log
        return self.state / self.LOG


def _sh(cmd, what, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise ImageError(f"nested lab: {what} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")
    return r.stdout


def ensure_keys(lay: Layout) -> None:
    """The lab's login key, the lab host's (L1's) SSH host key, and the ssh command for
    libvirt's qemu+ssh transport (`command=` in the URI): OpenSSH with that host key
    pinned in the lab's own known_hosts, so nothing is written to ~/.ssh.  Shared with
    the namespace lab host (lab/nslab), whose Layout names its own key files."""
    lay.dir.mkdir(parents=True, exist_ok=True)
    for key, comment in ((lay.key, f"acc-{lay.dir.name}-lab"), (lay.host_key, f"acc-{lay.dir.name}-host")):
        if not key.exists():
            _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)], f"ssh-keygen {key}")
    script = ("#!/bin/sh\n# qemu+ssh to the lab host: its host key is pinned, ~/.ssh is not touched\n"
              f"exec ssh -o UserKnownHostsFile={lay.known_hosts} -o StrictHostKeyChecking=yes "
              "-o GlobalKnownHostsFile=/dev/null -o BatchMode=yes \"$@\"\n")
    if not lay.ssh.exists() or lay.ssh.read_text() != script:
        lay.ssh.write_text(script)
        lay.ssh.chmod(0o755)


def pin_host_key(lay: Layout, port: int) -> None:
    """known_hosts holds exactly the lab host's own key, for 127.0.0.1:<port>."""
    kind, blob = lay.host_key.with_suffix(".pub").read_text().split()[:2]
    lay.known_hosts.write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")


def ssh_banner(port: int) -> bool:
    """An sshd answers on 127.0.0.1:<port> with its banner (before that, paramiko only
    logs tracebacks)."""
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def ensure_qemu(lay: Layout, log=print) -> Path:
    """QEMU 10 from bookworm-backports, unpacked into the lab dir (apt state of its
    own: the machine's apt sources and packages stay as they are)."""
    from ..debroot import locked
    with locked(lay.dir / ".qemu.lock"):
        return _ensure_qemu(lay, log)


def _ensure_qemu(lay: Layout, log) -> Path:
    from ..debroot import apt_mirrors, unpack_debs, unpacked
    q = lay.qemu_root
    if unpacked(q, QEMU_VERSION):
        return q
    mirror = apt_mirrors().get("bookworm")
    if not mirror:
        raise ImageError("no apt source for bookworm in /etc/apt: the nested lab takes QEMU 10 from the same "
                         "mirror's bookworm-backports")
    apt = lay.dir / "apt"
    (apt / "lists/partial").mkdir(parents=True, exist_ok=True)
    (apt / "cache/archives/partial").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb {mirror} {BACKPORTS} main\n")
    opts = ["-o", f"Dir::Etc::SourceList={apt / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt / 'cache'}",
            "-o", "APT::Sandbox::User=root"]
    log(f"[nested] fetching QEMU {QEMU_VERSION} from {BACKPORTS}")
    _sh(["apt-get", *opts, "update", "-qq"], f"apt-get update of {BACKPORTS}")
    debs = apt / "debs"
    debs.mkdir(exist_ok=True)
    for f in debs.glob("*.deb"):
        f.unlink()
    want = [f"{p}={QEMU_VERSION}" if p.startswith("qemu") else p for p in QEMU_PACKAGES]
    _sh(["apt-get", *opts, "-t", BACKPORTS, "download", *want], "apt-get download of QEMU 10", cwd=debs)
    unpack_debs(debs, q, QEMU_VERSION)
    return q


def qemu_argv(lay: Layout, img: L1Image, overlay: Path, usb_disk: Path, ssh_port: int,
              memory_mib: int = L1_MEMORY_MIB, cpus: int = L1_CPUS) -> list[str]:
    q = lay.qemu_root
    return [
        str(q / "usr/bin/qemu-system-x86_64"), "-name", "acc-l1,process=acc-l1",
        "-L", str(q / "usr/share/qemu"), "-L", str(q / "usr/share/seabios"),
        "-machine", "q35,accel=tcg,kernel-irqchip=split", "-cpu", L1_CPU, "-smp", str(cpus), "-m", str(memory_mib),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-device", "intel-iommu,intremap=on,caching-mode=on",
        "-kernel", str(img.kernel), "-initrd", str(img.initrd),
        "-append", "root=LABEL=l1root rw console=ttyS0,115200 intel_iommu=on iommu=pt panic=-1 quiet",
        "-serial", f"file:{lay.console}", "-pidfile", str(lay.pidfile), "-no-reboot",
        "-drive", f"file={overlay},if=none,id=root,format=qcow2,cache=unsafe",
        "-device", "virtio-blk-pci,drive=root,addr=0x5",
        "-netdev", f"user,id=mgmt,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=mgmt,addr=0x6",
        # lab hardware on root ports with fixed slots: fixed bus numbers, so fixed BDFs in L1
        "-device", "pcie-root-port,id=rp1,chassis=1,addr=0x10",
        "-netdev", "user,id=lab0,restrict=on,net=10.0.9.0/24",
        "-device", "igb,bus=rp1,netdev=lab0",
        "-device", "pcie-root-port,id=rp2,chassis=2,addr=0x11",
        "-device", "e1000e,bus=rp2",
        "-device", "pcie-root-port,id=rp3,chassis=3,addr=0x12",
        "-device", "pcie-pci-bridge,id=pb1,bus=rp3",
        "-device", "e1000,bus=pb1,addr=0x1,romfile=",
        "-device", "e1000,bus=pb1,addr=0x2,romfile=",
        "-device", "qemu-xhci,id=xhci,addr=0x7",
        "-drive", f"file={usb_disk},if=none,id=usbdisk,format=raw",
        "-device", "usb-storage,bus=xhci.0,drive=usbdisk,serial=ACCUSB0001",
        "-device", "usb-kbd,bus=xhci.0",
    ] + debug_argv(lay)


def debug_argv(lay: Layout) -> list[str]:
    patterns = [p for p in os.environ.get(TRACE_ENV, "").split(",") if p.strip()]
    if not patterns:
        return []
    out = []
    for p in patterns:
        out += ["-trace", f"enable={p.strip()}"]
    return out + ["-D", str(lay.dir / "l1-trace.log"), "-monitor", f"unix:{lay.state / 'monitor.sock'},server,nowait"]


def check_vf_bars(host, pf: str = L1_PF) -> None:
    """The PF's VF BARs (sysfs resource lines 7-12) must sit below 4 GiB: QEMU 10.0.2
    maps a VF's BAR at the low 32 bits of its address only (see L1_MEMORY_MIB)."""
    lines = host.run("cat", f"/sys/bus/pci/devices/{pf}/resource").stdout.splitlines()
    for i, line in enumerate(lines[7:13]):
        start, end, _ = (int(x, 16) for x in line.split())
        if end and end >= 1 << 32:
            raise ImageError(f"L1's igb VF BAR {i} is at {start:#x}-{end:#x}, above 4 GiB, where QEMU 10.0.2 "
                             f"does not map it (the VFs would read 0): keep L1's memory below 2816 MiB "
                             f"(L1_MEMORY_MIB) so SeaBIOS puts the prefetchable windows below 4 GiB")


def running_pid(lay: Layout) -> int | None:
    """The L1 QEMU of this lab dir, if it runs (by its pid file, checked against its argv)."""
    return pid_by_file(lay.pidfile, lambda argv: str(lay.pidfile) in argv)


def stop(lay: Layout, log=print) -> list[str]:
    """Stop L1 and remove everything it wrote (the overlay, the console log)."""
    return stop_started(lay, running_pid, "L1", "QEMU pid", "nested", log)


def stop_started(lay: Layout, running, name: str, pid_what: str, tag: str, log=print,
                 signal_to=lambda pid: pid) -> list[str]:
    """Stop a lab host the harness started (its process found by `running(lay)`; the
    signals go to `signal_to(pid)`) and remove its state dir; says what it did."""
    done = []
    pid = running(lay)
    if pid is not None:
        terminate(signal_to(pid), lambda: running(lay) is None, name)
        reap(pid)       # started by this process (a self-test's second start): no zombie left
        done.append(f"stopped {name} ({pid_what} {pid})")
    if lay.state.exists():
        subprocess.run(["rm", "-rf", str(lay.state)])
        done.append(f"removed {lay.state}")
    for line in done:
        log(f"[{tag}] {line}")
    return done


def await_up(lay: Layout, host, up, deadline: Deadline, interval: float, stop, log, then=lambda host: None) -> None:
    """Poll `up()` until the deadline, then `then(host)`; on any failure (also Ctrl-C)
    the lab host is stopped; the shell is closed either way."""
    try:
        poll(up, deadline, interval=interval, detail=lambda: "console/log tail: " + (
            lay.console.read_text(errors="replace")[-600:] if lay.console.exists() else "(none)"))
        then(host)
    except BaseException:
        stop(lay, log)
        raise
    finally:
        host.close()


@dataclass
class L1:
    lay: Layout
    pid: int
    ssh_port: int
    boot_s: float


def prepare(lay: Layout, log=print) -> L1Image:
    """Everything a start needs, built or fetched (cached): keys, QEMU 10, the L1 image."""
    ensure_keys(lay)
    ensure_qemu(lay, log)
    return l1_image(lay.dir / "images", lay.key.with_suffix(".pub").read_text(), lay.host_key, log=log)


def start(lay: Layout, ssh_port: int, log=print, deadline: Deadline | None = None) -> L1:
    """Build (if needed) and boot L1; return once root can run a command over SSH
    and libvirtd answers inside it."""
    img = prepare(lay, log)
    stop(lay, log)                      # a crashed run's L1 first
    lay.state.mkdir(parents=True)
    overlay, usb = lay.state / "root.qcow2", lay.state / "usb-disk.img"
    _sh(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(img.root), str(overlay)], "L1 overlay")
    with open(usb, "wb") as f:
        f.truncate(64 << 20)
    pin_host_key(lay, ssh_port)
    argv = qemu_argv(lay, img, overlay, usb, ssh_port)
    log(f"[nested] starting L1 (QEMU 10, TCG, igb SR-IOV, intel-iommu, xhci) with SSH on 127.0.0.1:{ssh_port}")
    t0 = time.monotonic()
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", _QEMU, "sh",
                             str(lay.qemu_root), *argv], stdout=subprocess.DEVNULL, stderr=open(lay.state / "qemu.stderr", "wb"),
                            start_new_session=True)
    deadline = deadline or Deadline(240, "L1 to boot to SSH", scaled=False)
    from paramiko import SSHException

    from ..hostexec import HostCommandFailed
    from ..result import ExecTimeout
    host = lay.shell("l1", ssh_port)

    def up():
        if proc.poll() is not None:
            raise ImageError(f"L1 QEMU exited with {proc.returncode}: "
                             f"{(lay.state / 'qemu.stderr').read_text(errors='replace')[-600:]}")
        text = lay.console.read_bytes() if lay.console.exists() else b""
        m = PANIC_RE.search(text)
        if m:
            raise ImageError(f"L1 kernel panicked: {m.group(0).decode(errors='replace')}")
        if not ssh_banner(ssh_port):
            return False
        try:
            return host.run("systemctl", "is-active", "libvirtd", check=False, timeout=10).stdout.strip() == "active"
        except (HostCommandFailed, OSError, EOFError, SSHException, ExecTimeout):
            # sshd answers its banner before the system can open a session (still booting)
            host.close()
            return False

    await_up(lay, host, up, deadline, 1.0, stop, log, then=check_vf_bars)
    boot = time.monotonic() - t0
    log(f"[nested] L1 is up: SSH and libvirtd answered after {boot:.1f} s")
    return L1(lay, running_pid(lay) or proc.pid, ssh_port, boot)
