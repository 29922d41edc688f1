"""`virsh` itself, for the claims that are about virsh's commands and output.
Everything else goes through the libvirt API."""
from __future__ import annotations

import shlex
import subprocess

from .result import Result
from .timeouts import Deadline


def virsh(uri: str, *args, timeout: float = 60) -> Result:
    """`virsh -c uri args...`; its failure (`check()`) is an AssertionError: virsh's output is the claim."""
    d = Deadline(timeout, f"virsh {' '.join(args)}")
    try:
        r = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=d.budget)
    except subprocess.TimeoutExpired:
        raise d.fail() from None
    return Result("virsh", shlex.join(args), r.returncode, r.stdout, r.stderr)


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
