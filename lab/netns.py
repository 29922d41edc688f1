"""Network namespaces the harness makes on a lab host, for traffic that must stay
between interfaces the harness was given (two VFs of a listed PF): each is named
acc-<run>-<role>, lives only as long as its test (the run's undo stack) and, after
a crash, is removed by the sweeper when its run is dead and this work dir holds the
run's directory.  Deleting a namespace hands its physical interfaces back to the
lab host's own namespace."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import LabError


class NetnsError(LabError):
    """A network namespace could not be made or used on the lab host."""


class NetNamespace:
    def __init__(self, host, name: str):
        self.host, self.name = host, name

    def create(self) -> "NetNamespace":
        r = self.host.run("ip", "netns", "add", self.name, check=False)
        if not r.ok:
            raise NetnsError(f"cannot make network namespace {self.name} on lab host {self.host.name}: "
                             f"{r.stderr.strip()}")
        self.run("ip", "link", "set", "lo", "up")
        return self

    def run(self, *argv, **kw):
        """A command inside the namespace (on the lab host)."""
        return self.host.run("ip", "netns", "exec", self.name, *argv, **kw)

    def take(self, ifname: str, address: str) -> None:
        """Move `ifname` into the namespace, give it `address` (CIDR) and bring it up."""
        self.host.run("ip", "link", "set", ifname, "netns", self.name)
        self.run("ip", "addr", "add", address, "dev", ifname)
        self.run("ip", "link", "set", ifname, "up")

    def remove(self) -> None:
        self.host.run("ip", "netns", "del", self.name, check=False)


def leftovers(host, prefix: str) -> list[tuple[str, str]]:
    """(name, run id) of the lab host's namespaces named <prefix><run>-<role>."""
    r = host.run("ip", "netns", "list", check=False)
    out = []
    for line in r.stdout.splitlines() if r.ok else []:
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix) and name.count("-") >= 2:
            out.append((name, name[len(prefix):].split("-")[0]))
    return out


@dataclass(frozen=True)
class Flood:
    """What a ping flood of `seconds` saw: echo requests sent and answered, of `size` bytes."""
    sent: int
    received: int
    millis: int
    size: int

    @property
    def mbps(self) -> float:
        """The echo requests' rate on the wire (Ethernet + IP + ICMP headers counted)."""
        return self.received * (self.size + 8 + 20 + 14) * 8 / max(self.millis, 1) / 1000

    def describe(self) -> str:
        return (f"{self.received} of {self.sent} echo requests of {self.size} bytes answered in {self.millis} ms: "
                f"{self.mbps:.1f} Mbit/s")


FLOOD_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received.*?time (\d+)\s*ms", re.S)


def parse_flood(text: str, size: int) -> Flood | None:
    m = FLOOD_RE.search(text)
    return Flood(int(m.group(1)), int(m.group(2)), int(m.group(3)), size) if m else None


def flood(ns: NetNamespace, ifname: str, peer: str, seconds: int, size: int = 1400) -> Flood:
    """`ping -f` from `ifname` in `ns` to `peer` for `seconds`: the sender's transmit rate
    bounds how fast requests go out (a flood sends the next as soon as a reply comes)."""
    r = ns.run("ping", "-f", "-q", "-n", "-s", str(size), "-w", str(seconds), "-I", ifname, peer,
               check=False, timeout=seconds + 30)
    got = parse_flood(r.stdout, size)
    if got is None:
        raise NetnsError(f"ping -f in {ns.name} on lab host {ns.host.name} printed no summary "
                         f"(exit {r.rc}): {(r.stdout + r.stderr).strip()[-300:]}")
    return got
