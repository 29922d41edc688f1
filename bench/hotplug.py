#!/usr/bin/env python3
"""Hot-plug latency: attach -> visible in the guest, detach -> gone from the
guest, for a virtio-blk disk or a virtio NIC (on the harness's bridge) on a
root port; median and max of N.

    .venv/bin/python bench/hotplug.py -n 5 [--device nic]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import config  # noqa: E402
from lab import xml as X  # noqa: E402
from lab import network  # noqa: E402
from lab.domain import VMSpec, random_mac  # noqa: E402
from lab.run import Lab  # noqa: E402
from lab import timeouts  # noqa: E402
from lab.timeouts import Deadline, poll  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=5)
    p.add_argument("--lab", default=None)
    p.add_argument("--device", choices=("disk", "nic"), default="disk")
    a = p.parse_args()
    run = Lab(config.load(a.lab))
    timeouts.set_factor(run.cfg.timeout_factor)     # one lab host in this process
    plug, unplug = [], []
    try:
        vm = run.new_vm(VMSpec("bench-hotplug", pcie_root_ports=4))
        vm.start()
        for i in range(a.n):
            if a.device == "disk":
                serial = f"acc-bench-{i}"
                dev = X.disk(str(vm.disks.scratch_image(serial, "16M")), target="vdb", serial=serial)
                seen = lambda: vm.guest.block.find(serial)      # noqa: E731
            else:
                mac = random_mac()
                dev = network.bridge_interface(mac, run.bridge().name)
                seen = lambda: vm.guest.net.find(mac)           # noqa: E731
            t = time.monotonic()
            vm.domain.attach(dev)
            poll(seen, Deadline(30, f"the {a.device} in the guest"), interval=0.05)
            plug.append(time.monotonic() - t)
            t = time.monotonic()
            vm.domain.detach(dev)
            poll(lambda: seen() is None, Deadline(30, f"the {a.device} to leave"), interval=0.05)
            unplug.append(time.monotonic() - t)
            print(f"round {i + 1}: attach->visible {plug[-1]:.2f}s detach->gone {unplug[-1]:.2f}s", flush=True)
    finally:
        run.close()
    print(f"\nattach -> visible in guest: median {statistics.median(plug):.2f}s, max {max(plug):.2f}s")
    print(f"detach -> gone from guest: median {statistics.median(unplug):.2f}s, max {max(unplug):.2f}s")


if __name__ == "__main__":
    main()
