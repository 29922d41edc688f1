#!/usr/bin/env python3
"""One-stop lab benchmark, in a stable `key value` format so numbers can be
compared from run to run (diff two outputs):

  boot.*     start -> SSH ready of fresh guests (bench/boot.py), median and max of N
  image.*    the same for each guest image the harness knows (its own, the Debian cloud image,
             the password-only variant; aarch64: its own and the UEFI-booted password image),
             side by side (the local lab only)
  hotplug.*  attach -> visible / detach -> gone in the guest, disk and NIC (bench/hotplug.py)
  tests.*    harness overhead per test (setup + teardown, boots included) of the full run
  run.*      the acceptance suites' wall time with -n 0 and -n W, and the xdist speed-up

    ./harness bench                       # the local lab, N=5, W=2
    ./harness bench --lab labs/pair.toml  # two lab hosts: each xdist worker leases one
    .venv/bin/python bench/all.py --quick # boot and hot-plug only
"""
import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def out(key: str, value) -> None:
    print(f"{key:44} {value:.2f}" if isinstance(value, float) else f"{key:44} {value}", flush=True)


def script(args: list[str]) -> str:
    r = subprocess.run([PY, *args], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def grab(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    if not m:
        raise SystemExit(f"bench output lacks /{pattern}/:\n{text[-2000:]}")
    return float(m.group(1))


def first_host(lab: str | None) -> str | None:
    """The one-host config boot/hot-plug measure on (the first host of a multi-host lab)."""
    sys.path.insert(0, str(REPO))
    from lab import config
    return str(config.load_set(lab).hosts[0].path)


def suites(lab: str | None, workers: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, ACC_REPORTS_DIR=tmp)
        args = [PY, "-m", "pytest", "suites", "-q", "-p", "no:cacheprovider", "--durations=0",
                "--durations-min=0", "-n", str(workers), *extra] + (["--lab", lab] if lab else [])
        t = time.monotonic()
        r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env)
        wall = time.monotonic() - t
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:]
    phases: dict[str, dict[str, float]] = {}
    for m in re.finditer(r"^([\d.]+)s (setup|call|teardown)\s+(\S+)", r.stdout, re.M):
        phases.setdefault(m.group(3), {})[m.group(2)] = float(m.group(1))
    ran = {t: p for t, p in phases.items() if "call" in p}
    over = [p.get("setup", 0) + p.get("teardown", 0) for p in ran.values()]
    calls = [p["call"] for p in ran.values()]
    failed = sum(int(x) for x in re.findall(r"(\d+) (?:failed|error)", tail))
    return {"wall": wall, "summary": tail, "failed": failed, "tests": len(ran),
            "over_mean": statistics.mean(over) if over else 0.0, "call_median": statistics.median(calls) if calls else 0.0}


# The guest images the harness knows, each through its local lab config.
IMAGE_LABS = {"default": "labs/local.toml", "debian12-cloud": "labs/local-cloud-image.toml",
              "debian12-password": "labs/local-password-image.toml",
              # aarch64 (Kunpeng-class) under TCG: the harness's own guest (direct kernel boot) and
              # the distribution image booted by UEFI (AAVMF, GRUB EFI); half the boots, they are slow
              "default-aarch64": "labs/local-aarch64.toml",
              "debian12-password-aarch64-efi": "labs/local-aarch64-image.toml"}


def images(n: int) -> None:
    """Boot-to-SSH of every known image, side by side (the first boot of a run included)."""
    for name, lab in IMAGE_LABS.items():
        b = script(["bench/boot.py", "-n", str(max(1, n // 2) if "aarch64" in name else n), "--lab", lab])
        out(f"image.{name}.start_to_ssh.median_s", grab(r"start -> SSH ready: median ([\d.]+)s", b))
        out(f"image.{name}.start_to_ssh.max_s", grab(r"start -> SSH ready: median [\d.]+s, max ([\d.]+)s", b))
        out(f"image.{name}.start_to_boot_done.median_s", grab(r"start -> console says boot done: median ([\d.]+)s", b))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=5, help="boots and hot-plug rounds (default 5)")
    p.add_argument("-w", "--workers", type=int, default=2, help="xdist workers for the parallel run (default 2)")
    p.add_argument("--lab", default=None, help="lab config (default labs/local.toml)")
    p.add_argument("--quick", action="store_true", help="boot and hot-plug only, no full runs")
    p.add_argument("--images", action="store_true", help="only boot-to-SSH of each known guest image")
    a = p.parse_args()
    one = first_host(a.lab)
    out("bench.date", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    out("bench.lab", a.lab or "labs/local.toml")
    out("bench.host", f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus")

    b = script(["bench/boot.py", "-n", str(a.n), "--lab", one])
    out("boot.start_to_ssh.median_s", grab(r"start -> SSH ready: median ([\d.]+)s", b))
    out("boot.start_to_ssh.max_s", grab(r"start -> SSH ready: median [\d.]+s, max ([\d.]+)s", b))
    out("boot.start_to_console_marker.median_s", grab(r"start -> console says boot done: median ([\d.]+)s", b))
    out("boot.harness_overhead_per_vm.median_s", grab(r"harness overhead per VM .*: median ([\d.]+)s", b))
    out("boot.run_setup_s", grab(r"run setup .*: ([\d.]+)s", b))
    if a.lab is None or a.images:
        images(max(2, min(a.n, 3)))
    if a.images:
        return
    for dev in ("disk", "nic"):
        h = script(["bench/hotplug.py", "-n", str(a.n), "--device", dev, "--lab", one])
        out(f"hotplug.{dev}.attach_to_visible.median_s", grab(r"attach -> visible in guest: median ([\d.]+)s", h))
        out(f"hotplug.{dev}.attach_to_visible.max_s", grab(r"attach -> visible in guest: median [\d.]+s, max ([\d.]+)s", h))
        out(f"hotplug.{dev}.detach_to_gone.median_s", grab(r"detach -> gone from guest: median ([\d.]+)s", h))
        out(f"hotplug.{dev}.detach_to_gone.max_s", grab(r"detach -> gone from guest: median [\d.]+s, max ([\d.]+)s", h))
    if a.quick:
        return
    serial = suites(a.lab, 0, [])
    parallel = suites(a.lab, a.workers, [])
    out("tests.ran", serial["tests"])
    out("tests.harness_overhead_per_test.mean_s", serial["over_mean"])
    out("tests.call.median_s", serial["call_median"])
    out("run.n0.wall_s", serial["wall"])
    out("run.n0.summary", serial["summary"])
    out(f"run.n{a.workers}.wall_s", parallel["wall"])
    out(f"run.n{a.workers}.summary", parallel["summary"])
    out("run.xdist_speedup", serial["wall"] / parallel["wall"])
    if serial["failed"] or parallel["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
