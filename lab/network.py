"""Lab networking the harness owns, and host-side probes of NICs.

The harness's bridge is isolated: no IPv4, IPv6 disabled on the bridge itself
(so the host has no address on it), tagged with an interface alias naming its
run so a crashed run's bridge is swept.  Guests talk over IPv6 link-local only.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path

ALIAS_PREFIX = "acc-harness run="


class Bridge:
    """An isolated Linux bridge on the lab host (the documented `br0`, when the lab names none)."""

    def __init__(self, run_id: str, host, name: str | None = None, work_dir: Path | str = ""):
        """`work_dir`: the run's work dir on the lab host (its lease is found there)."""
        self.name = name or f"accbr{secrets.token_hex(3)}"
        self.run_id = run_id
        self.work_dir = str(work_dir)
        self.host = host

    def create(self) -> "Bridge":
        self.host.run("ip", "link", "add", self.name, "type", "bridge")
        try:
            self.host.run("ip", "link", "set", self.name, "alias", f"{ALIAS_PREFIX}{self.run_id} dir={self.work_dir}")
            self.host.run("sysctl", "-q", "-w", f"net.ipv6.conf.{self.name}.disable_ipv6=1")
            self.host.run("ip", "link", "set", self.name, "up")
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        self.host.run("ip", "link", "del", self.name, check=False)

    def ports(self) -> list[str]:
        out = self.host.run("ip", "-j", "link", "show", "master", self.name, check=False).stdout
        return sorted(link["ifname"] for link in json.loads(out or "[]"))

    def host_addresses(self) -> list[str]:
        out = self.host.run("ip", "-j", "addr", "show", "dev", self.name).stdout
        return [a["local"] for i in json.loads(out or "[]") for a in i.get("addr_info", [])]


def harness_bridges(host, work_dir: Path | str | None = None) -> dict[str, tuple[str, str]]:
    """bridge name -> (run id, the lab host work dir of that run), for every bridge a harness
    run made on the lab host (with the given lab host work dir only, when one is given)."""
    out = host.run("ip", "-j", "link", "show", "type", "bridge", check=False).stdout
    res = {}
    for link in json.loads(out or "[]"):
        alias = link.get("ifalias", "")
        if not alias.startswith(ALIAS_PREFIX):
            continue
        run_id, _, rest = alias[len(ALIAS_PREFIX):].partition(" dir=")
        if work_dir is None or rest == str(work_dir):
            res[link["ifname"]] = (run_id, rest)
    return res


def tap_master(tap: str, sys_net) -> str | None:
    """The bridge a tap is on; `sys_net`: the lab host's /sys/class/net (a Path or HostPath)."""
    m = sys_net / tap / "master"
    return m.readlink().name if m.is_symlink() else None


def parse_vhost_workers(ps_tid_comm: str, qemu_pid: int) -> list[int]:
    """`ps -eLo tid=,comm=` -> the task ids of QEMU `qemu_pid`'s vhost workers.  They are
    named vhost-<QEMU's pid>: kernel threads up to Linux 6.3, threads of QEMU's own
    process from 6.4 on; one per vhost device (per queue pair of a vhost-net NIC)."""
    want = f"vhost-{qemu_pid}"
    out = []
    for line in ps_tid_comm.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip() == want and parts[0].isdigit():
            out.append(int(parts[0]))
    return out


def parse_schedstat(text: str) -> dict[int, int]:
    """Lines "<tid> <ns on CPU> <ns waiting> <slices>" -> {tid: ns on CPU}; a task
    that ended between listing and reading (no numbers) is left out."""
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 2 and f[0].isdigit() and f[1].isdigit():
            out[int(f[0])] = int(f[1])
    return out


def vhost_work(qemu_pid: int, host) -> dict[int, int]:
    """{task id: nanoseconds on CPU} of each vhost worker of QEMU `qemu_pid` on the lab
    host ({} when QEMU has none: its NICs' data path is QEMU's own)."""
    tids = parse_vhost_workers(host.run("ps", "-eLo", "tid=,comm=").stdout, qemu_pid)
    if not tids:
        return {}
    r = host.run("sh", "-c", 'for t; do echo "$t $(cat /proc/$t/schedstat 2>/dev/null)"; done', "sh",
                 *map(str, tids))
    return parse_schedstat(r.stdout)


class OvsBridge:
    """An Open vSwitch bridge on the lab host for NIC-5 (lab hosts with ovs-vswitchd running)."""

    def __init__(self, run_id: str, host, name: str | None = None, datapath: str = "system"):
        self.name = name or f"accovs{secrets.token_hex(3)}"
        self.run_id = run_id
        self.host = host
        self.datapath = datapath          # "netdev" for an OVS-DPDK (userspace) bridge

    def create(self) -> "OvsBridge":
        self.host.run("ovs-vsctl", "--may-exist", "add-br", self.name, "--", "set", "bridge", self.name,
                 f"datapath_type={self.datapath}", f"external-ids:acc-harness-run={self.run_id}")
        return self

    def add_vhostuser_port(self, port: str, socket: str) -> None:
        """An OVS-DPDK vhost-user client port; QEMU is the server on `socket`."""
        self.host.run("ovs-vsctl", "add-port", self.name, port, "--", "set", "Interface", port,
                 "type=dpdkvhostuserclient", f"options:vhost-server-path={socket}")

    def remove(self) -> None:
        self.host.run("ovs-vsctl", "--if-exists", "del-br", self.name, check=False)

    def ports(self) -> list[str]:
        out = self.host.run("ovs-vsctl", "list-ports", self.name).stdout
        return sorted(out.split())


def bridge_interface(mac: str, bridge: str, model: str = "virtio", driver: str | None = None,
                     queues: int | None = None, virtualport: str | None = None):
    """The guide's `<interface type='bridge'>`."""
    from . import xml as X
    i = X.el("interface", {"type": "bridge"}, X.el("mac", {"address": mac}), X.el("source", {"bridge": bridge}))
    if virtualport:
        i.append(X.el("virtualport", {"type": virtualport}))
    i.append(X.el("model", {"type": model}))
    if driver or queues:
        i.append(X.el("driver", {"name": driver, "queues": queues}))
    return i


def ovs_dpdk_ready(host) -> tuple[bool, str]:
    """Whether Open vSwitch runs with DPDK initialised (the vhost-user backend) on the lab host."""
    if not host.which("ovs-vsctl"):
        return False, "Open vSwitch is not installed"
    r = host.run("ovs-vsctl", "get", "Open_vSwitch", ".", "dpdk_initialized", check=False)
    if not r.ok:
        return False, f"ovs-vsctl failed: {r.stderr.strip() or 'ovsdb not running'}"
    if r.stdout.strip() != "true":
        return False, "Open vSwitch runs without DPDK (dpdk_initialized is not true)"
    return True, "OVS-DPDK is initialised"


def vhostuser_socket_dir(host, parent) -> str:
    """A directory for QEMU's vhost-user server sockets, inside `parent` (the run's
    directory on the lab host, removed with the run).  QEMU runs as libvirt's QEMU user,
    not root: it cannot bind in /run/openvswitch, so the directory is writable for all,
    sticky like /tmp (`install -d` sets the mode whatever the umask)."""
    d = f"{parent}/vhost-user"
    host.run("install", "-d", "-m", "1777", d)
    return d


def vhostuser_interface(mac: str, socket: str, queues: int | None = None):
    """QEMU as the vhost-user server on `socket` (OVS connects as the client)."""
    from . import xml as X
    i = X.el("interface", {"type": "vhostuser"}, X.el("mac", {"address": mac}),
             X.el("source", {"type": "unix", "path": socket, "mode": "server"}), X.el("model", {"type": "virtio"}))
    if queues:
        i.append(X.el("driver", {"queues": queues}))
    return i
