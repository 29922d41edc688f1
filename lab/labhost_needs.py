"""What a lab host needs beside libvirtd and QEMU: the programs the harness runs there and
the sshd features it uses, each with what a lab host without it cannot prove.  Data for
`doctor` and README's table; `check(host)` asks the lab host (one command, plus two SSH
probes on a remote one)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Need:
    program: str
    packages: str        # openEuler/RPM package; Debian package
    used_for: str
    costs: str           # what a lab host without it cannot prove


NEEDS = (
    Need("qemu-img", "qemu-img; qemu-utils", "overlays, scratch disks, image hashes", "every claim (no VM starts)"),
    Need("sh", "bash; dash", "every host command's shell", "every claim"),
    Need("bash", "bash; bash", "the run's lease holder (a run is alive on the lab host while it runs)", "every claim"),
    Need("flock", "util-linux; util-linux", "run, port, device and slot leases on the lab host", "every claim"),
    Need("ip", "iproute; iproute2", "bridges, taps, VLANs, link state", "NIC-1..9 (no test bridge)"),
    Need("dmsetup", "device-mapper; dmsetup", "dm-error storage faults", "IOS-2..5, IOS-7..9 with [faults] backend dm-error"),
    Need("losetup", "util-linux; mount", "loop devices under dm faults and block-device disks",
         "IOS with dm-error, SNAP-5 (block-device disk)"),
    Need("blockdev", "util-linux; util-linux", "block device sizes", "IOS with dm-error, SNAP-5"),
    Need("nbdkit", "nbdkit; nbdkit", "the storage's request log and slow writes (error, log, delay filters)",
         "IOS-4's interval test; IOS-2/3/4's retry counts ([faults] backend nbdkit)"),
    Need("lspci", "pciutils; pciutils", "PCI discovery", "PCI-1..3, SRIOV-1..4, HPRE-1..3"),
    Need("ping", "iputils; iputils-ping", "a ping flood between two VFs in the harness's network namespaces",
         "SRIOV-3's measured VF rate"),
    Need("modprobe", "kmod; kmod", "host drivers (vfio-pci, vhost, hisi_hpre)", "PCI, SRIOV, HPRE, DISK-3, NIC-2"),
    Need("ovs-vsctl", "openvswitch; openvswitch-switch", "Open vSwitch bridges and vhost-user ports", "NIC-5, NIC-8"),
    Need("unshare", "util-linux; util-linux", "USB-9's second libvirt endpoint on the lab host", "USB-9"),
    Need("virtlogd", "libvirt-daemon; libvirt-daemon-system", "the second endpoint's log daemon", "USB-9"),
)

SSHD = (
    ("sftp", "files are copied over SFTP (guest image, NoCloud seeds, scripts)",
     "every claim on a remote lab host; fix: Subsystem sftp internal-sftp in sshd_config"),
    ("tcp-forwarding", "guest SSH is tunnelled through the lab host's sshd (direct-tcpip)",
     "every claim on a remote lab host; fix: AllowTcpForwarding yes (or local) in sshd_config"),
)


def _programs(host) -> dict[str, bool]:
    script = "for t in " + " ".join(n.program for n in NEEDS) + \
             '; do if command -v "$t" >/dev/null 2>&1; then echo "$t yes"; else echo "$t no"; fi; done'
    out = host.run("sh", "-c", 'PATH="$PATH:/usr/sbin:/sbin"; ' + script, check=False).stdout
    got = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
    return {n.program: got.get(n.program) == "yes" for n in NEEDS}


def _sshd(host) -> dict[str, tuple[bool, str]]:
    out = {}
    try:
        host.listdir("/")
        out["sftp"] = (True, "")
    except Exception as e:          # paramiko's SSHException, an EOF: reported, not raised
        out["sftp"] = (False, f"{type(e).__name__}: {e}")
    try:    # sshd forwards (or tries to: "Connect failed" is a forwarding sshd) unless prohibited
        host.connect_tcp("127.0.0.1", 22, timeout=10).close()
        out["tcp-forwarding"] = (True, "")
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
        out["tcp-forwarding"] = ("prohibited" not in msg.lower(), msg)
    return out


def check(host) -> list[tuple[bool, str]]:
    """(ok, line) per program and, on a remote lab host, per sshd feature."""
    have = _programs(host)
    lines = []
    for n in NEEDS:
        rpm, deb = (p.strip() for p in n.packages.split(";"))
        lines.append((have[n.program], f"{n.program:10} {n.used_for}" if have[n.program] else
                      f"{n.program:10} MISSING (openEuler/RPM: {rpm}; Debian: {deb}): costs {n.costs}"))
    if not getattr(host, "local", True):
        sshd = _sshd(host)
        for key, why, costs in SSHD:
            ok, err = sshd[key]
            lines.append((ok, f"sshd {key}: {why}" if ok else f"sshd {key} REFUSED ({err}): costs {costs}"))
    return lines
