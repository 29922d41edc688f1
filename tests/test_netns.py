"""Network namespaces on a lab host (lab/netns.py): what `ip netns list` and
`ping -f -q` print, recorded from iproute2 6.1 and iputils 20221126."""
from lab import netns
from tests.fakehost import FakeHost

PING_F = """PING 169.254.77.2 (169.254.77.2) from 169.254.77.1 vfa0: 1400(1428) bytes of data.

--- 169.254.77.2 ping statistics ---
6237 packets transmitted, 6236 received, 0.0160359% packet loss, time 3001ms
rtt min/avg/max/mdev = 0.191/0.327/3.921/0.120 ms, pipe 2, ipg/ewma 0.481/0.301 ms
"""


def test_a_flood_summary_gives_the_senders_rate_on_the_wire():
    f = netns.parse_flood(PING_F, 1400)
    assert (f.sent, f.received, f.millis) == (6237, 6236, 3001)
    assert round(f.mbps, 1) == round(6236 * 1442 * 8 / 3001 / 1000, 1) == 24.0
    assert "6236 of 6237 echo requests" in f.describe()
    assert netns.parse_flood("ping: sendmsg: Network is unreachable\n", 1400) is None


def test_only_the_harness_namespaces_are_leftover_candidates():
    listing = "acc-0123abcd-vfa (id: 3)\nacc-0123abcd-vfb\nblue (id: 0)\nacc-odd\n"
    host = FakeHost(lambda argv, inp: (0, listing) if argv[:3] == ["ip", "netns", "list"] else (0, ""))
    assert netns.leftovers(host, "acc-") == [("acc-0123abcd-vfa", "0123abcd"), ("acc-0123abcd-vfb", "0123abcd")]
    none = FakeHost(lambda argv, inp: (1, "", "Object \"netns\" is unknown"))
    assert netns.leftovers(none, "acc-") == []


def test_a_namespace_is_made_used_and_removed_through_the_host():
    host = FakeHost()
    ns = netns.NetNamespace(host, "acc-r1-vfa").create()
    ns.take("eth9", "169.254.77.1/24")
    ns.remove()
    cmds = [" ".join(argv) for argv, _ in host.calls]
    assert cmds == ["ip netns add acc-r1-vfa", "ip netns exec acc-r1-vfa ip link set lo up",
                    "ip link set eth9 netns acc-r1-vfa", "ip netns exec acc-r1-vfa ip addr add 169.254.77.1/24 dev eth9",
                    "ip netns exec acc-r1-vfa ip link set eth9 up", "ip netns del acc-r1-vfa"]
