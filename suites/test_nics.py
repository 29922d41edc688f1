"""Managing vNICs (NIC-1..9): the guide's `<interface type='bridge'>` attached
to running VMs, seen by the guest (MAC, driver, queues, traffic) and by the
host (the tap on the bridge, QEMU holding vhost-net, the OVS port)."""
import contextlib
from types import SimpleNamespace

from fixtures.api import claims, shared_vm
from lab import network
from lab.domain import VMSpec, random_mac
from lab.timeouts import Deadline, poll


def tap_of(live_iface):
    return live_iface.find("target").get("dev")


def driver_name(run):
    """The guide asks for vhost; hosts without vhost-net get QEMU's own backend."""
    from fixtures.api import capabilities
    return "vhost" if capabilities(run)["vhost-net"].present else "qemu"


# One vCPU: the device offers the queue pairs queues='N' asks for whatever the guest's CPU
# count (NIC-3 turns them all on with ethtool -L); a second TCG vCPU on a busy 2-core host
# starves and stalls (RCU stalls on the console, a poweroff with no stopped event).
nic_vm = shared_vm(lambda: VMSpec("nics", pcie_root_ports=6))


@contextlib.contextmanager
def bridge_nic(vm, lab, **kw):
    """The guide's bridge NIC attached live (its XML, MAC, tap and bridge); detached with the
    same XML at the end, unless the test already detached it (then the live XML lacks it)."""
    br = lab.bridge()
    mac = random_mac()
    iface = network.bridge_interface(mac, br.name, driver=driver_name(lab), **kw)
    live = vm.domain.attach(iface, live=True)
    try:
        yield SimpleNamespace(xml=iface, mac=mac, tap=tap_of(live), bridge=br)
    finally:
        if vm.domain.live_xml().find(f"devices/interface/mac[@address='{mac}']") is not None:
            vm.domain.detach(iface, live=True)


@claims("NIC-1")
def test_attached_nic_has_its_mac_and_the_virtio_net_driver(nic_vm, lab):
    with bridge_nic(nic_vm, lab) as n:
        nic = nic_vm.guest.net.wait_for(n.mac)
        assert nic.mac == n.mac.lower()
        assert nic.driver == "virtio_net", f"guest NIC {nic.name} is driven by {nic.driver}"


@claims("NIC-3")
def test_two_queues_give_the_guest_two_queue_pairs(nic_vm, lab):
    vm = nic_vm
    with bridge_nic(vm, lab, queues=2) as n:
        nic = vm.guest.net.wait_for(n.mac)
        if vm.guest.has("ethtool"):
            ch = vm.guest.net.channels(nic.name)
            assert ch["max"].get("combined") == 2, f"the device offers the guest {ch['max']} channels for queues='2'"
            ch = vm.guest.net.use_channels(nic.name, 2)      # virtio_net starts min(pairs, CPUs) of them
            assert ch["current"].get("combined") == 2, f"guest channels after ethtool -L combined 2: {ch}"
            rxq = vm.guest.net.wait_for(n.mac).rx_queues
            assert rxq == 2, f"the guest has {rxq} rx queues with both pairs on"
        else:
            # no ethtool in this guest: virtio_net sets up every queue pair the device offers at
            # probe, each with its own interrupt vector (virtioN-input.K / -output.K)
            pairs = vm.guest.net.virtqueue_pairs(nic.name)
            assert pairs == 2, f"the guest's virtio_net set up {pairs} queue pair(s) for queues='2'"


@claims("NIC-4")
def test_the_nics_tap_is_on_the_bridge(nic_vm, lab):
    with bridge_nic(nic_vm, lab) as n:
        nic_vm.guest.net.wait_for(n.mac)
        assert network.tap_master(n.tap, lab.sys / "class/net") == n.bridge.name, \
            f"tap {n.tap} is not on bridge {n.bridge.name}"
        assert n.tap in n.bridge.ports()
        assert n.bridge.host_addresses() == [], "the harness's bridge must carry no host address"


@claims("NIC-7")
def test_detach_with_the_same_xml_removes_the_nic(nic_vm, lab):
    vm = nic_vm
    with bridge_nic(vm, lab) as n:
        vm.guest.net.wait_for(n.mac)
        assert n.tap in n.bridge.ports()
        vm.domain.detach(n.xml, live=True)                                           # the same XML
        vm.guest.net.wait_gone(n.mac)
        assert n.mac not in vm.guest.net.by_mac()
        assert n.tap not in n.bridge.ports() and network.tap_master(n.tap, lab.sys / "class/net") is None


@claims("NIC-6")
def test_live_nic_is_gone_after_restart_config_nic_stays(nic_vm, lab):
    vm = nic_vm
    br = lab.bridge()
    live_only = network.bridge_interface(random_mac(), br.name)
    persistent = network.bridge_interface(random_mac(), br.name)
    vm.domain.attach(live_only, live=True)
    vm.domain.attach(persistent, live=True, config=True)
    vm.guest.net.wait_for(live_only.find("mac").get("address"))
    vm.guest.net.wait_for(persistent.find("mac").get("address"))
    try:
        vm.poweroff()
        vm.start()
        assert vm.guest.net.find(live_only.find("mac").get("address")) is None, "a live-only NIC survived a restart"
        assert vm.guest.net.find(persistent.find("mac").get("address")) is not None, "the --config NIC is gone"
    finally:
        vm.domain.detach(persistent, live=vm.guest.net.find(persistent.find("mac").get("address")) is not None,
                  config=True)


@claims("NIC-9")
def test_hot_plugged_nics_carry_traffic_between_two_guests(nic_vm, vms, lab):
    br = lab.bridge()
    peer = vms.boot(VMSpec("nics-peer"))
    ends = []
    for vm in (nic_vm, peer):
        iface = network.bridge_interface(random_mac(), br.name)
        vm.domain.attach(iface, live=True)
        nic = vm.guest.net.wait_for(iface.find("mac").get("address"))
        vm.guest.run("ip link set %s up", nic.name)
        ends.append((vm, iface, nic))
    try:
        (a, _, nic_a), (b, _, nic_b) = ends
        addr_b = poll(lambda: b.guest.net.link_local(nic_b.name), Deadline(20, "the peer's IPv6 link-local address"),
                      interval=0.3)
        poll(lambda: a.guest.net.link_local(nic_a.name), Deadline(20, "the sender's IPv6 link-local address"),
             interval=0.3)
        rx_before = int(b.guest.check_output("cat /sys/class/net/%s/statistics/rx_packets", nic_b.name))
        r = a.guest.run("ping -6 -c 5 -w 15 %s", f"{addr_b}%{nic_a.name}", timeout=30, check=False)
        assert r.rc == 0 and " 0% packet loss" in r.stdout, f"ping over the bridge failed: {r.stdout}{r.stderr}"
        rx_after = int(b.guest.check_output("cat /sys/class/net/%s/statistics/rx_packets", nic_b.name))
        assert rx_after - rx_before >= 5, "the peer's NIC did not receive the echo requests"
    finally:
        for vm, iface, _ in ends:
            vm.domain.detach(iface, live=True)


@claims("NIC-2")
def test_vhost_driver_moves_the_nic_data_path_into_the_hosts_vhost_worker(nic_vm, lab):
    """With driver name='vhost' the guest's packets are moved by QEMU's vhost worker
    (vhost-<QEMU pid>) in the host kernel, which does work while the guest sends; with
    name='qemu' (the control) the same traffic flows and there is no vhost worker."""
    vm = nic_vm
    for driver in ("qemu", "vhost"):
        mac = random_mac()
        iface = network.bridge_interface(mac, lab.bridge().name, driver=driver)
        live = vm.domain.attach(iface, live=True)
        try:
            assert live.find("driver").get("name") == driver, f"live XML driver: {live.find('driver').attrib}"
            nic = vm.guest.net.wait_for(mac)
            vm.guest.run("ip link set %s up", nic.name)
            poll(lambda: vm.guest.net.link_local(nic.name), Deadline(20, f"{nic.name}'s IPv6 link-local address"),
                 interval=0.3)
            holds = vm.qemu.holds("/dev/vhost-net")
            before = vm.qemu.vhost_work()
            sent = vm.guest.net.send_to_link(nic.name, 300)
            after = vm.qemu.vhost_work()
            assert sent >= 300, f"the guest's {nic.name} sent {sent} packets, not the 300 echo requests"
            busy = {t: after[t] - before.get(t, 0) for t in after if after[t] > before.get(t, 0)}
            if driver == "qemu":
                assert not holds and not after, (f"driver name='qemu': QEMU holds /dev/vhost-net: {holds}, "
                                                 f"vhost workers {after}")
            else:
                assert holds, "driver name='vhost': QEMU does not hold /dev/vhost-net"
                assert after, f"driver name='vhost': QEMU {vm.qemu.pid()} has no vhost-{vm.qemu.pid()} worker"
                assert busy, (f"driver name='vhost': no vhost worker ran while the guest sent {sent} packets "
                              f"(CPU ns before {before}, after {after})")
        finally:
            vm.domain.detach(iface, live=True)
        vm.guest.net.wait_gone(mac)


@claims("NIC-5")
def test_openvswitch_virtualport_makes_an_ovs_port(nic_vm, lab):
    vm = nic_vm
    with lab.ovs_bridge() as ovs:
        iface = network.bridge_interface(random_mac(), ovs.name, virtualport="openvswitch")
        tap = tap_of(vm.domain.attach(iface, live=True))
        try:
            assert tap in ovs.ports(), f"ovs-vsctl list-ports {ovs.name}: {ovs.ports()}"
            vm.guest.net.wait_for(iface.find("mac").get("address"))
        finally:
            vm.domain.detach(iface, live=True)
        assert tap not in ovs.ports()


@claims("NIC-8")
def test_vhost_user_nics_carry_traffic(vms, lab):
    """Two guests with vhost-user NICs on one OVS-DPDK bridge ping each other."""
    sockets = lab.vhostuser_socket_dir()
    with lab.ovs_bridge(datapath="netdev") as ovs:
        try:
            ends = []
            for n in range(2):
                sock = f"{sockets}/vhu{n}.sock"
                iface = network.vhostuser_interface(random_mac(), sock)
                # OVS is the client and retries until QEMU listens; QEMU, the server, holds the
                # guest until its client is there: the port first, then the guest.
                ovs.add_vhostuser_port(f"accvhu{n}{lab.run_id[-4:]}", sock)
                vm = vms.boot(VMSpec(f"nics-vhu{n}", shared_memory=True, devices=[iface]))
                nic = vm.guest.net.wait_for(iface.find("mac").get("address"))
                vm.guest.run("ip link set %s up", nic.name)
                ends.append((vm, nic))
            (a, nic_a), (b, nic_b) = ends
            addr_b = poll(lambda: b.guest.net.link_local(nic_b.name), Deadline(20, "the peer's link-local address"))
            r = a.guest.run("ping -6 -c 5 -w 15 %s", f"{addr_b}%{nic_a.name}", timeout=30, check=False)
            assert r.rc == 0 and " 0% packet loss" in r.stdout, f"ping over vhost-user failed: {r.stdout}{r.stderr}"
        finally:
            for vm in list(vms.vms):      # the guests go before their OVS ports
                vms.release(vm)
