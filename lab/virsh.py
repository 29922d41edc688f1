"""`virsh` itself, for the claims that are about virsh's commands and output.
Everything else goes through the libvirt API."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass

from .timeouts import Deadline


@dataclass
class VirshResult:
    args: list
    rc: int
    stdout: str
    stderr: str

    def check(self) -> "VirshResult":
        if self.rc != 0:
            raise AssertionError(f"virsh {' '.join(self.args)} exited {self.rc}: {self.stderr.strip()}")
        return self


def virsh(uri: str, *args, timeout: float = 60) -> VirshResult:
    d = Deadline(timeout, f"virsh {' '.join(args)}")
    try:
        r = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=d.budget)
    except subprocess.TimeoutExpired:
        raise d.fail() from None
    return VirshResult(list(args), r.returncode, r.stdout, r.stderr)


def table(text: str) -> list[list[str]]:
    """Rows of a virsh table (the lines after the dashed rule), split on runs of 2+ spaces."""
    import re
    rows, seen_rule = [], False
    for line in text.splitlines():
        if set(line.strip()) == {"-"}:
            seen_rule = True
            continue
        if seen_rule and line.strip():
            rows.append(re.split(r"\s{2,}", line.strip()))
    return rows
