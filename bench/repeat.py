#!/usr/bin/env python3
"""Flake hunt: run the acceptance suites N times in a row and print, per run,
passed/failed counts and wall time, then the total failures and the slowest
tests over all runs.  Leftovers after each run are counted too.

    .venv/bin/python bench/repeat.py -n 10 [-- extra pytest args, e.g. -n 2]
"""
import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def leftovers() -> int:
    doms = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True,
                          text=True).stdout.split()
    return len([d for d in doms if d.startswith("acc-")])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=10)
    p.add_argument("pytest_args", nargs="*")
    a = p.parse_args()
    failures, slow, rows = 0, [], []
    for i in range(a.n):
        t = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "pytest", "suites", "-q", "-p", "no:cacheprovider",
                            "--durations=8", *a.pytest_args], cwd=REPO, capture_output=True, text=True)
        wall = time.monotonic() - t
        tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        nfail = sum(int(x) for x in re.findall(r"(\d+) (?:failed|error)", tail))
        failures += nfail
        for m in re.finditer(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)", r.stdout, re.M):
            slow.append((float(m.group(1)), f"{m.group(2)} {m.group(3)}"))
        rows.append(f"run {i + 1}: {tail}  ({wall:.0f}s wall, leftover domains {leftovers()})")
        print(rows[-1], flush=True)
        if nfail:
            print("\n".join(line for line in r.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))))
            log = REPO / "reports" / f"repeat-run-{i + 1}.log"
            log.parent.mkdir(exist_ok=True)
            log.write_text(r.stdout + r.stderr)
            print(f"  full output: {log}")
    print(f"\n{a.n} runs, {failures} failures")
    print("slowest operations over all runs:")
    for secs, what in sorted(slow, reverse=True)[:8]:
        print(f"  {secs:6.1f}s  {what}")


if __name__ == "__main__":
    main()
