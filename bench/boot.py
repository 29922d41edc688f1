#!/usr/bin/env python3
"""Boot N fresh guests one after another; print the median and max time from
`start` to SSH ready, split into start -> the console's end of boot (the
harness's marker, cloud-init's host keys or a login prompt, by the image) ->
SSH, and the per-VM harness overhead (define + overlay, and teardown).

    ./harness bench            (N=5; and each known image side by side)
    .venv/bin/python bench/boot.py -n 10 --lab labs/local-cloud-image.toml
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import config, timeouts  # noqa: E402
from lab.domain import VMSpec  # noqa: E402
from lab.guest.login import boot_done  # noqa: E402
from lab.run import Lab  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=5)
    p.add_argument("--lab", default=None)
    a = p.parse_args()
    t0 = time.monotonic()
    run = Lab(config.load(a.lab))
    timeouts.set_factor(run.cfg.timeout_factor)     # one lab host in this process
    setup = time.monotonic() - t0
    rows = []
    try:
        for i in range(a.n):
            t = time.monotonic()
            vm = run.new_vm(VMSpec("bench"))
            t_def = time.monotonic()
            vm.domain.handle.create()
            vm._after_start()
            t_start = time.monotonic()
            marker = None
            deadline = run.boot_deadline(f"{vm.name} to boot")
            while marker is None and not deadline.expired:
                if boot_done(vm.serial_text(), run.image.access):
                    marker = time.monotonic()
                time.sleep(0.02)
            vm.wait_ready(deadline)
            run.boot_seconds.append(time.monotonic() - t_def)
            t_ssh = time.monotonic()
            vm.guest.run("true")
            run.release(vm)
            t_end = time.monotonic()
            rows.append({"define": t_def - t, "start": t_start - t_def,
                         "marker": (marker or t_ssh) - t_def, "ssh": t_ssh - t_def, "teardown": t_end - t_ssh})
            print(f"boot {i + 1}: start->marker {rows[-1]['marker']:.2f}s start->ssh {rows[-1]['ssh']:.2f}s "
                  f"(define {rows[-1]['define']:.2f}s, teardown {rows[-1]['teardown']:.2f}s)", flush=True)
    finally:
        run.close()
    ssh = [r["ssh"] for r in rows]
    print(f"\nimage: {run.cfg.image} ({run.image.access})")
    print(f"run setup (connect, sweep, key, image check): {setup:.2f}s")
    print(f"start -> SSH ready: median {statistics.median(ssh):.2f}s, max {max(ssh):.2f}s over {len(ssh)} boots")
    print(f"start -> console says boot done: median {statistics.median(r['marker'] for r in rows):.2f}s")
    over = [r["define"] + r["teardown"] for r in rows]
    print(f"harness overhead per VM (define+overlay, teardown): median {statistics.median(over):.2f}s")


if __name__ == "__main__":
    main()
