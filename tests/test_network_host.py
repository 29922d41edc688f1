"""Host-side NIC logic on recorded trees and a recording command runner."""
import os
import subprocess

from lab import network
from lab.hostexec import LocalHost
from tests.fakehost import FakeHost as RecordingHost
from lab.guest.probes import parse_channels, parse_nics

ETHTOOL_L = """Channel parameters for eth1:
Pre-set maximums:
RX:		n/a
TX:		n/a
Other:		n/a
Combined:	2
Current hardware settings:
RX:		n/a
TX:		n/a
Other:		n/a
Combined:	1
"""


def Recorder(stdout="", rc=0):
    """A lab host whose every command answers `stdout` with `rc`; `.calls` lists the argvs."""
    h = RecordingHost(lambda argv, input: (rc, stdout), which=True)
    h.argvs = lambda: [argv for argv, _ in h.calls]
    return h


def test_channels_parse_distinguishes_max_and_current():
    ch = parse_channels(ETHTOOL_L)
    assert ch["max"]["combined"] == 2 and ch["current"]["combined"] == 1, \
        "a guest showing 1 current queue must not pass as 2"


def test_nic_parse():
    nics = parse_nics("eth1 52:54:00:aa:bb:cc up virtio_net 2 /sys/devices/pci0000:00/0000:00:01.3/0000:04:00.0/virtio3\n")
    assert nics[0].driver == "virtio_net" and nics[0].rx_queues == 2 and nics[0].mac == "52:54:00:aa:bb:cc"


def test_tap_master_and_qemu_holds_on_recorded_trees(tmp_path):
    sysnet = tmp_path / "sys/class/net"
    (sysnet / "accbr1").mkdir(parents=True)
    (sysnet / "vnet7").mkdir()
    os.symlink("../accbr1", sysnet / "vnet7" / "master")
    (sysnet / "vnet8").mkdir()
    assert network.tap_master("vnet7", sysnet) == "accbr1"
    assert network.tap_master("vnet8", sysnet) is None
    # QemuProcess.holds asks the lab host's /proc: this process holding a file, and not another
    from lab.qemuproc import QemuProcess
    me = QemuProcess(LocalHost(), "me", domain=lambda: None, o_direct=lambda: 0o40000)
    me.pid = os.getpid
    with open(tmp_path / "held", "w"):
        assert me.holds(tmp_path / "held")
        assert not me.holds("/dev/vfio/vfio")


def test_ovs_bridge_commands_are_tagged_and_removed():
    rec = Recorder()
    br = network.OvsBridge("run42", rec, name="accovs1", datapath="netdev").create()
    br.add_vhostuser_port("vhu0", "/run/openvswitch/s0.sock")
    br.remove()
    assert rec.argvs()[0][:4] == ["ovs-vsctl", "--may-exist", "add-br", "accovs1"]
    assert "datapath_type=netdev" in rec.argvs()[0] and "external-ids:acc-harness-run=run42" in rec.argvs()[0]
    assert "type=dpdkvhostuserclient" in rec.argvs()[1] and "options:vhost-server-path=/run/openvswitch/s0.sock" in rec.argvs()[1]
    assert rec.argvs()[2] == ["ovs-vsctl", "--if-exists", "del-br", "accovs1"]


def test_ovs_dpdk_probe_reasons():
    assert network.ovs_dpdk_ready(Recorder("true\n")) == (True, "OVS-DPDK is initialised")
    ok, why = network.ovs_dpdk_ready(Recorder("false\n"))
    assert not ok and "without DPDK" in why
    ok, why = network.ovs_dpdk_ready(Recorder("", rc=1))
    assert not ok and "ovs-vsctl failed" in why


def test_interface_builders_follow_the_guide():
    i = network.bridge_interface("52:54:00:76:f2:bb", "br0", driver="vhost", queues=2, virtualport="openvswitch")
    assert [c.tag for c in i] == ["mac", "source", "virtualport", "model", "driver"]
    assert i.find("driver").attrib == {"name": "vhost", "queues": "2"}
    v = network.vhostuser_interface("52:54:00:00:00:01", "/run/s.sock")
    assert v.get("type") == "vhostuser" and v.find("source").get("mode") == "server"


def test_harness_bridge_is_isolated_and_swept(tmp_path):
    """A real bridge: no host address, tagged with its run, found by the sweeper's scan."""
    from lab.sweep import sweep
    import libvirt
    work = tmp_path / "work"
    br = network.Bridge("deadrun1", LocalHost(), work_dir=work).create()
    try:
        assert br.host_addresses() == []
        assert network.harness_bridges(LocalHost(), work).get(br.name) == ("deadrun1", str(work))
        assert br.name not in network.harness_bridges(LocalHost(), tmp_path / "other-work-dir")
        conn = libvirt.open("test:///default")
        undone = sweep(conn, work, log=lambda m: None, host=LocalHost())
        conn.close()
        assert f"removed leftover bridge {br.name} of dead run deadrun1" in undone
    finally:
        br.remove()
    assert br.name not in network.harness_bridges(LocalHost())


PS_TID_COMM = """      1 init
   4242 qemu-system-x86
   4250 CPU 0/TCG
   4251 vhost-4242
   4260 vhost-42420
   4261 vhost-4242
  51234 kworker/0:1
"""


def test_vhost_workers_are_the_tasks_named_after_qemus_pid():
    assert network.parse_vhost_workers(PS_TID_COMM, 4242) == [4251, 4261]
    assert network.parse_vhost_workers(PS_TID_COMM, 4250) == []


def test_schedstat_gives_cpu_ns_per_task_and_skips_ended_ones():
    assert network.parse_schedstat("4251 1830000 2000 12\n4261 \n") == {4251: 1830000}


class FakeHost:
    def __init__(self, outputs):
        self.outputs, self.calls = outputs, []

    def run(self, *argv, check=True):
        self.calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, self.outputs.pop(0), "")


def test_vhost_work_reads_each_workers_schedstat_on_the_host():
    host = FakeHost([PS_TID_COMM, "4251 100 5 2\n4261 300 5 3\n"])
    assert network.vhost_work(4242, host) == {4251: 100, 4261: 300}
    assert host.calls[1][-2:] == ("4251", "4261")
    assert network.vhost_work(1, FakeHost([PS_TID_COMM])) == {}
