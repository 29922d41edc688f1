"""PCI controller topology as libvirt describes it, and the guide's numbering
rules as checks that return the list of violations (empty = the rules hold)."""
from __future__ import annotations

from dataclasses import dataclass

from lxml import etree


@dataclass(frozen=True)
class PciAddress:
    domain: int
    bus: int
    slot: int
    function: int
    multifunction: bool = False

    @property
    def bdf(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    @classmethod
    def from_el(cls, a: etree._Element | None) -> "PciAddress | None":
        if a is None or a.get("type") != "pci":
            return None
        return cls(int(a.get("domain", "0"), 16), int(a.get("bus"), 16), int(a.get("slot"), 16),
                   int(a.get("function", "0"), 16), a.get("multifunction") == "on")


@dataclass(frozen=True)
class PciController:
    index: int
    model: str
    model_name: str | None
    chassis: int | None
    port: int | None
    address: PciAddress | None


def controllers(domain_xml: etree._Element) -> list[PciController]:
    out = []
    for c in domain_xml.findall("devices/controller[@type='pci']"):
        mn = c.find("model")
        tgt = c.find("target")
        out.append(PciController(
            index=int(c.get("index")), model=c.get("model"),
            model_name=mn.get("name") if mn is not None else None,
            chassis=int(tgt.get("chassis")) if tgt is not None and tgt.get("chassis") else None,
            port=int(tgt.get("port"), 16) if tgt is not None and tgt.get("port") else None,
            address=PciAddress.from_el(c.find("address"))))
    return sorted(out, key=lambda c: c.index)


def root_ports(domain_xml) -> list[PciController]:
    return [c for c in controllers(domain_xml) if c.model == "pcie-root-port"]


def device_addresses(domain_xml, tag: str) -> list[PciAddress]:
    return [PciAddress.from_el(d.find("address")) for d in domain_xml.findall(f"devices/{tag}")
            if d.find("address") is not None and d.find("address").get("type") == "pci"]


def used_buses(domain_xml) -> set[int]:
    """Buses that already carry an endpoint or a bridge."""
    buses = set()
    for d in domain_xml.find("devices"):
        a = PciAddress.from_el(d.find("address"))
        if a is not None:
            buses.add(a.bus)
    return buses


def fill_in_problems(domain_xml) -> list[str]:
    """PCIE-1: every controller but pcie-root carries model name and address,
    root ports also their target chassis and port."""
    problems = []
    for c in controllers(domain_xml):
        if c.model == "pcie-root":
            continue
        if not c.model_name:
            problems.append(f"controller {c.index} ({c.model}) has no <model name>")
        if c.address is None:
            problems.append(f"controller {c.index} ({c.model}) has no PCI address")
        if c.model == "pcie-root-port" and (c.chassis is None or c.port is None):
            problems.append(f"root port {c.index} has no target chassis/port")
    return problems


def numbering_problems(domain_xml) -> list[str]:
    """PCIE-2: chassis and port ascending; chassis skips the bridge's index
    while ports stay consecutive; functions 0-7 with multifunction on function
    0; a full slot moves on to the next slot."""
    problems = []
    ports = root_ports(domain_xml)
    bridges = {c.index for c in controllers(domain_xml) if c.model == "pcie-to-pci-bridge"}
    for prev, cur in zip(ports, ports[1:]):
        if not (cur.chassis > prev.chassis):
            problems.append(f"chassis not ascending: port {prev.index} chassis {prev.chassis}, port {cur.index} chassis {cur.chassis}")
        if cur.port != prev.port + 1:
            problems.append(f"port numbers not consecutive: {prev.port:#x} then {cur.port:#x}")
        skipped = set(range(prev.chassis + 1, cur.chassis))
        if skipped and not skipped <= bridges:
            problems.append(f"chassis skips {sorted(skipped)} between ports {prev.index} and {cur.index}, "
                            f"which are not bridge indexes {sorted(bridges)}")
    for b in bridges:
        if any(p.chassis == b for p in ports):
            problems.append(f"a root port uses chassis {b}, the bridge's index")
    on_root = [p for p in ports if p.address and p.address.bus == 0]
    by_slot: dict[int, list[PciController]] = {}
    for p in on_root:
        by_slot.setdefault(p.address.slot, []).append(p)
    slots = sorted(by_slot)
    for i, slot in enumerate(slots):
        funcs = sorted(p.address.function for p in by_slot[slot])
        if funcs != list(range(len(funcs))):
            problems.append(f"slot {slot:#x} functions {funcs} are not 0..{len(funcs) - 1}")
        f0 = [p for p in by_slot[slot] if p.address.function == 0]
        if len(funcs) > 1 and not (f0 and f0[0].address.multifunction):
            problems.append(f"slot {slot:#x} has {len(funcs)} functions but function 0 lacks multifunction='on'")
        if i + 1 < len(slots) and len(funcs) != 8:
            problems.append(f"slot {slot:#x} holds {len(funcs)} root ports but the next slot {slots[i + 1]:#x} is used")
    order = sorted(on_root, key=lambda p: p.index)
    keys = [(p.address.slot, p.address.function) for p in order]
    if keys != sorted(keys):
        problems.append(f"root port addresses do not ascend with their index: {keys}")
    return problems
