"""Which lab host runs which test, when a lab config names several.

Pure data in, pure data out (unit-tested in tests/): for each test, the
capabilities it needs; for each host, what it has.  A test goes to a host that
has every capability it needs; it is never put on a host that lacks one when
another host has them all.  Only when no host can run it does it go to a host
where it will skip, with the reason naming every host.  Among the hosts that
can run a test, the tests of one module stay together (they share a booted
guest) and modules are balanced by test count.  The result depends only on
the inputs in collection order, so every xdist worker computes the same plan.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    host: str
    runnable: bool          # False: no host has what it needs; it skips there
    missing: dict           # host -> [capability names it lacks] (only when not runnable)


class Planner:
    """Places tests one at a time, in collection order (what pytest_generate_tests sees)."""

    def __init__(self, hosts: list[str], has: dict[str, set[str]]):
        self.hosts, self.has = list(hosts), has
        self.load = {h: 0 for h in self.hosts}
        self.module_host: dict[str, str] = {}

    def place(self, module: str, needed: frozenset) -> Placement:
        eligible = [h for h in self.hosts if needed <= self.has[h]]
        if not eligible:          # skips wherever it goes: keep it with its module, costs nothing
            h = self.module_host.get(module) or self.hosts[0]
            return Placement(h, False, {x: sorted(needed - self.has[x]) for x in self.hosts})
        h = self.module_host.get(module)
        if h not in eligible:
            h = min(eligible, key=self.load.__getitem__)
            self.module_host.setdefault(module, h)
        self.load[h] += 1
        return Placement(h, True, {})


def plan(tests: list[tuple[str, str, frozenset]], hosts: list[str],
         has: dict[str, set[str]]) -> dict[str, Placement]:
    """tests: (test id, module, capabilities needed) in collection order.
    hosts: host names in config order.  has: host -> capabilities it has."""
    p = Planner(hosts, has)
    return {tid: p.place(module, needed) for tid, module, needed in tests}
