#!/usr/bin/env python3
"""The nested lab's costs: L1 image (cached or built), L1 start -> SSH and
libvirtd answering, then N L2 boots on L1 (start -> SSH through L1), L1 stop.
`key value` lines like bench/all.py.

    .venv/bin/python bench/nested.py [-n 3] [--lab labs/nested.toml]
"""
import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import config  # noqa: E402
from lab.nested import l1  # noqa: E402
from lab.nested.__main__ import DEFAULT_CONFIG, layout  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=3, help="L2 boots (default 3)")
    p.add_argument("--lab", default=str(DEFAULT_CONFIG))
    a = p.parse_args()
    cfg = config.load(a.lab)
    lay = layout(cfg)
    out = {"bench.date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bench.lab": a.lab}
    t0 = time.monotonic()
    try:
        m = l1.start(lay, cfg.shell_port, log=lambda s: print(s, file=sys.stderr))
        out["nested.l1.up_total_s"] = f"{time.monotonic() - t0:.2f}"       # image check/build + boot
        out["nested.l1.boot_to_ssh_and_libvirtd_s"] = f"{m.boot_s:.2f}"
        r = subprocess.run([sys.executable, str(ROOT / "bench/boot.py"), "-n", str(a.n), "--lab", a.lab],
                           capture_output=True, text=True)
        sys.stderr.write(r.stdout + r.stderr)
        got = re.search(r"start -> SSH ready: median ([\d.]+)s, max ([\d.]+)s", r.stdout)
        if got:
            out["nested.l2.start_to_ssh.median_s"], out["nested.l2.start_to_ssh.max_s"] = got.groups()
        over = re.search(r"harness overhead per VM .*: median ([\d.]+)s", r.stdout)
        if over:
            out["nested.l2.harness_overhead_per_vm.median_s"] = over.group(1)
    finally:
        t = time.monotonic()
        l1.stop(lay, log=lambda s: print(s, file=sys.stderr))
        out["nested.l1.stop_s"] = f"{time.monotonic() - t:.2f}"
    for k, v in out.items():
        print(f"{k:44} {v}")


if __name__ == "__main__":
    main()
