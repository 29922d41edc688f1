#!/usr/bin/env python3
"""Flake hunt: run the acceptance suites N times in a row and print, per run,
passed/failed counts and wall time, then the total failures and the slowest
tests over all runs.  Leftovers after each run are counted too, and how often a
shared guest had to be replaced.

With --load P the script keeps P busy-loop processes running for every run (a
CPU hog as a busy lab host has: another guest, a compression job) and stops them
at the end, also after Ctrl-C; the load average is printed per run.

With --nslab the runs go to the namespace lab host (a remote lab host reached only
over SSH, lab/nslab), started once before the first run and stopped after the last;
leftover domains are counted there.

    .venv/bin/python bench/repeat.py -n 10 [-- extra pytest args, e.g. -n 2]
    .venv/bin/python bench/repeat.py -n 5 --load 2 -- -n 2
    .venv/bin/python bench/repeat.py -n 10 --nslab -- -n 2
"""
import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def leftovers(uri: str = "qemu:///system") -> int:
    doms = subprocess.run(["virsh", "-c", uri, "list", "--all", "--name"], capture_output=True,
                          text=True).stdout.split()
    return len([d for d in doms if d.startswith("acc-")])


@contextlib.contextmanager
def nslab_host(enabled: bool):
    """The namespace lab host for the runs (its lab-config arguments and libvirt URI), or
    this machine's default lab."""
    if not enabled:
        yield [], "qemu:///system"
        return
    sys.path.insert(0, str(REPO))
    from lab import config, nslab
    from lab.nslab.__main__ import DEFAULT_CONFIG, controller_dirs, layout
    cfg = config.load(DEFAULT_CONFIG)
    lay = layout(cfg)
    up = nslab.start(lay, cfg.shell_port, controller_dirs(cfg), log=lambda m: print(m, flush=True))
    print(f"namespace lab host up in {up.up_s:.1f} s", flush=True)
    try:
        yield ["--lab", str(cfg.path)], cfg.libvirt_uri
    finally:
        nslab.stop(lay, log=lambda m: print(m, flush=True))


@contextlib.contextmanager
def cpu_hog(procs: int):
    """`procs` processes spinning at normal priority, each in its own session; gone on exit."""
    # each spins until its parent is gone, so even a killed bench leaves no hog behind
    spin = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", spin], start_new_session=True)
            for _ in range(procs)]
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield hogs
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        signal.signal(signal.SIGTERM, previous)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=10)
    p.add_argument("--load", type=int, default=0, metavar="PROCS",
                   help="keep PROCS busy-loop processes running during the runs (a CPU hog)")
    p.add_argument("--nslab", action="store_true",
                   help="run on the namespace lab host (started once, stopped at the end)")
    p.add_argument("pytest_args", nargs="*")
    a = p.parse_args()
    with cpu_hog(a.load), nslab_host(a.nslab) as (lab_args, uri):
        if a.load:
            print(f"CPU hog: {a.load} busy-loop process(es) on {os.cpu_count()} CPU(s)", flush=True)
        run_all(a, lab_args, uri)


def run_all(a, lab_args=(), uri="qemu:///system"):
    failures, replaced, slow, rows = 0, 0, [], []
    for i in range(a.n):
        t = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "pytest", "suites", "-q", "-p", "no:cacheprovider",
                            "--durations=8", *lab_args, *a.pytest_args], cwd=REPO, capture_output=True, text=True)
        wall = time.monotonic() - t
        tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        nfail = sum(int(x) for x in re.findall(r"(\d+) (?:failed|error)", tail))
        failures += nfail
        nrep = len(set(re.findall(r"shared guest (\S+) \(\S+\) no longer served tests", r.stdout)))
        replaced += nrep
        for m in re.finditer(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)", r.stdout, re.M):
            slow.append((float(m.group(1)), f"{m.group(2)} {m.group(3)}"))
        load = Path("/proc/loadavg").read_text().split()[1]
        rows.append(f"run {i + 1}: {tail}  ({wall:.0f}s wall, load average {load} over 5 min, "
                    f"shared guests replaced {nrep}, leftover domains {leftovers(uri)})")
        print(rows[-1], flush=True)
        if nfail:
            print("\n".join(line for line in r.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))))
            log = REPO / "reports" / f"repeat-run-{i + 1}.log"
            log.parent.mkdir(exist_ok=True)
            log.write_text(r.stdout + r.stderr)
            print(f"  full output: {log}")
    print(f"\n{a.n} runs{' on the namespace lab host' if a.nslab else ''}"
          f"{f' under a {a.load}-process CPU hog' if a.load else ''}, {failures} failures, "
          f"{replaced} shared guest(s) replaced")
    print("slowest operations over all runs:")
    for secs, what in sorted(slow, reverse=True)[:8]:
        print(f"  {secs:6.1f}s  {what}")


if __name__ == "__main__":
    main()
