#!/usr/bin/env python3
"""Hot-plug latency: attach -> visible in the guest, detach -> gone from the
guest, for a virtio-blk disk on a root port; median and max of N.

    .venv/bin/python bench/hotplug.py -n 5
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import config  # noqa: E402
from lab import xml as X  # noqa: E402
from lab.domain import VMSpec  # noqa: E402
from lab.run import Run  # noqa: E402
from lab.timeouts import Deadline, poll  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=5)
    p.add_argument("--lab", default=None)
    a = p.parse_args()
    run = Run(config.load(a.lab))
    plug, unplug = [], []
    try:
        vm = run.new_vm(VMSpec("bench-hotplug", pcie_root_ports=4))
        vm.start()
        for i in range(a.n):
            serial = f"acc-bench-{i}"
            disk = X.disk(str(vm.scratch_image(serial, "16M")), target="vdb", serial=serial)
            t = time.monotonic()
            vm.attach(disk)
            poll(lambda: vm.guest.block.find(serial), Deadline(30, "the disk in the guest"), interval=0.05)
            plug.append(time.monotonic() - t)
            t = time.monotonic()
            vm.detach(disk)
            poll(lambda: vm.guest.block.find(serial) is None, Deadline(30, "the disk to leave"), interval=0.05)
            unplug.append(time.monotonic() - t)
            print(f"round {i + 1}: attach->visible {plug[-1]:.2f}s detach->gone {unplug[-1]:.2f}s", flush=True)
    finally:
        run.close()
    print(f"\nattach -> visible in guest: median {statistics.median(plug):.2f}s, max {max(plug):.2f}s")
    print(f"detach -> gone from guest: median {statistics.median(unplug):.2f}s, max {max(unplug):.2f}s")


if __name__ == "__main__":
    main()
