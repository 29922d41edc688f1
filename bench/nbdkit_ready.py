"""How long the nbdkit fault backend takes to answer its first NBD handshake on a lab host,
and how often it does not within its deadline: `python bench/nbdkit_ready.py [-n N]
[--lab labs/nslab.toml] [--load K]` (the lab host must be up; --load K runs K busy loops on
this machine meanwhile, as a busy CI host would).  Prints one line per start and a summary."""
from __future__ import annotations

import argparse
import multiprocessing
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab import config, faults  # noqa: E402
from lab.hostexec import LabPath  # noqa: E402


def spin(stop) -> None:
    while not stop.is_set():
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--lab", default=None)
    ap.add_argument("--load", type=int, default=0)
    a = ap.parse_args()
    cfg = config.load(Path(a.lab) if a.lab else None)
    host = cfg.host()
    stop = multiprocessing.Event()
    loads = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(a.load)]
    for p in loads:
        p.start()
    d = LabPath(str(cfg.host_work_dir)) / "bench" / f"nbdkit-{secrets.token_hex(3)}"
    host.makedirs(d)
    times, failures = [], []
    try:
        for i in range(a.n):
            b = faults.NbdkitBackend(host, d)
            t = time.monotonic()
            try:
                b.setup()
                times.append(time.monotonic() - t)
                print(f"start {i + 1}: ready in {times[-1]:.2f} s", flush=True)
            except Exception as e:      # noqa: BLE001 - counted and shown
                failures.append(f"{type(e).__name__}: {e}")
                print(f"start {i + 1}: FAILED after {time.monotonic() - t:.1f} s: {failures[-1][:900]}", flush=True)
            finally:
                b.remove()
    finally:
        stop.set()
        host.rmtree(d)
        host.close()
    if times:
        print(f"{len(times)}/{a.n} ready: median {statistics.median(times):.2f} s, max {max(times):.2f} s; "
              f"{len(failures)} not ready in time (load {a.load})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
