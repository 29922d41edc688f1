"""The parts of `./harness test` (local, namespace lab host, openEuler QEMU, images,
nested): what each part's JUnit file says it ran, whether the part counts as having
run at all, and the time table printed at the end.

    python -m lab.parts check NAME RC SECONDS JUNIT LEDGER   # one part: append to LEDGER, exit 1 if it
                                                              # crashed or ran no test (the reason printed);
                                                              # JUNIT '-': a step without tests (set-up)
    python -m lab.parts background NAME RC SECONDS LEDGER     # a step that ran beside the parts
    python -m lab.parts table LEDGER                          # the per-part table
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from lxml import etree

# pytest's exit codes: 0 all passed, 1 some failed; anything else means the part itself broke
PYTEST_RC = {2: "was interrupted", 3: "hit an internal error (a crashed worker or plugin)",
             4: "was called wrongly (usage error)", 5: "collected no test"}


@dataclass
class Part:
    name: str
    rc: int
    seconds: int
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    broken: str = ""        # why the part counts as not run ("" when it ran)
    background: bool = False   # ran beside the others (not added to the total)

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped


def junit_counts(path: Path) -> dict[str, int] | None:
    """tests/failures/errors/skipped over every test suite of a JUnit file (None: missing or unreadable)."""
    try:
        root = etree.parse(str(path)).getroot()
    except (OSError, etree.XMLSyntaxError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    return {k: sum(int(s.get(k, "0")) for s in suites) for k in ("tests", "failures", "errors", "skipped")}


def judge(name: str, rc: int, seconds: int, junit: Path | None) -> Part:
    """`junit` None: a step that runs no tests (the set-up), judged by its exit code alone."""
    if junit is None:
        return Part(name, rc, seconds, broken="" if rc == 0 else f"exited {rc}")
    counts = junit_counts(junit)
    part = Part(name, rc, seconds, **(counts or {}))
    if rc in PYTEST_RC:
        part.broken = f"exited {rc}: it {PYTEST_RC[rc]}"
    elif rc not in (0, 1):
        part.broken = f"exited {rc} before or after its tests (set-up or lab host start failed)"
    elif counts is None:
        part.broken = f"wrote no JUnit file ({junit}): its tests never ran"
    elif part.tests == 0:
        part.broken = f"ran no test ({junit} lists none)"
    return part


def load(ledger: Path) -> list[Part]:
    if not ledger.exists():
        return []
    return [Part(**json.loads(line)) for line in ledger.read_text().splitlines() if line.strip()]


def table(parts: list[Part], wall: int | None = None) -> str:
    """`wall`: the run's wall-clock seconds; parts ran beside each other, so it is less
    than the sum of their times."""
    rows = [("part", "result", "passed", "failed", "errors", "skipped", "time")]
    for p in parts:
        result = "BROKEN" if p.broken else ("ok" if p.rc == 0 else "FAILED")
        if p.background:
            rows.append((f"({p.name}, in the background)", "ok" if p.rc == 0 else f"exit {p.rc}", "", "", "", "",
                         f"{p.seconds // 60}:{p.seconds % 60:02d}"))
            continue
        rows.append((p.name, result, str(p.passed), str(p.failures), str(p.errors), str(p.skipped),
                     f"{p.seconds // 60}:{p.seconds % 60:02d}"))
    total = sum(p.seconds for p in parts if not p.background)
    if wall is None:
        rows.append(("total", "", "", "", "", "", f"{total // 60}:{total % 60:02d}"))
    else:
        rows.append((f"wall clock (parts summed: {total // 60}:{total % 60:02d})", "", "", "", "", "",
                     f"{wall // 60}:{wall % 60:02d}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    broken = [f"{p.name}: {p.broken}" for p in parts if p.broken]
    return "\n".join(lines + broken)


def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[0] == "check":
        name, rc, seconds, ledger = argv[1], int(argv[2]), int(argv[3]), Path(argv[5])
        junit = None if argv[4] == "-" else Path(argv[4])
        part = judge(name, rc, seconds, junit)
        with open(ledger, "a") as f:
            f.write(json.dumps(asdict(part)) + "\n")
        if part.broken:
            print(f"[harness] part {name} {part.broken}", file=sys.stderr)
            return 1
        return 0
    if len(argv) == 5 and argv[0] == "background":
        name, rc, seconds, ledger = argv[1], int(argv[2]), int(argv[3]), Path(argv[4])
        with open(ledger, "a") as f:
            f.write(json.dumps(asdict(Part(name, rc, seconds, background=True))) + "\n")
        return 0
    if len(argv) in (2, 3) and argv[0] == "table":
        print(table(load(Path(argv[1])), int(argv[2]) if len(argv) == 3 else None))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
