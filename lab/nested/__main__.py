"""The nested lab: `python -m lab.nested up|down|status|run [pytest args]`.

  up       build the L1 image and QEMU 10 if needed, start L1 (a crashed run's L1 is stopped first)
  down     stop L1 and remove what it wrote
  status   is L1 running
  run      up, the hardware suites against labs/nested.toml, down (also on failure, Ctrl-C, SIGTERM)

Where the nested lab lives (keys, images, QEMU 10) and which port reaches L1's
SSH come from the lab config (labs/nested.toml: [shell] key_file and port), so
the config the harness drives and the L1 that is started cannot disagree.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import config
from ..images import ImageError
from . import l1

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "labs" / "nested.toml"
# The claims QEMU can emulate on L1 (USB-9 needs a second host; NIC-8 needs OVS-DPDK): the hardware suites.
HARDWARE_CLAIMS = "DISK-3,NIC-2,NIC-5,NIC-8,PCI,SRIOV,USB-6,USB-7,USB-8,USB-9,IOS-8,IOS-9"


def layout(cfg: config.LabConfig) -> l1.Layout:
    if not cfg.shell_key_file or cfg.shell_address != "127.0.0.1":
        raise config.LabConfigError(f"{cfg.path}: the nested lab needs [shell] address = '127.0.0.1' and key_file "
                                    f"= '<nested lab dir>/l1_key' (L1 is reached through a forward on this machine)")
    return l1.Layout(Path(cfg.shell_key_file).parent)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.nested", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lab", default=str(DEFAULT_CONFIG), help="the nested lab's config (default labs/nested.toml)")
    p.add_argument("action", choices=["up", "down", "status", "run"])
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="for run: more pytest arguments")
    args = p.parse_args(argv)
    try:
        cfg = config.load(args.lab)
        lay = layout(cfg)
        if args.action == "down":
            for line in l1.stop(lay, log) or ["L1 was not running"]:
                print(line)
            return 0
        if args.action == "status":
            pid = l1.running_pid(lay)
            print(f"L1 {'runs (QEMU pid %d)' % pid if pid else 'is not running'}; SSH on 127.0.0.1:{cfg.shell_port}")
            return 0 if pid else 1
        if args.action == "up":
            m = l1.start(lay, cfg.shell_port, log)
            print(f"L1 is up in {m.boot_s:.1f} s: python -m lab --lab {args.lab} doctor")
            return 0
        return run(cfg, lay, args)
    except (config.LabConfigError, ImageError, TimeoutError) as e:
        log(f"error: {e}")
        return 2


def watch(child: subprocess.Popen, lay: l1.Layout) -> int:
    """Wait for the suites; if L1 itself dies meanwhile, say why (its console's
    panic) and stop the suites instead of letting every test wait for a dead host."""
    while True:
        try:
            return child.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        if l1.running_pid(lay) is None:
            text = lay.console.read_text(errors="replace") if lay.console.exists() else ""
            why = [ln for ln in text.splitlines() if "panic" in ln.lower() or "BUG" in ln][:3]
            log(f"[nested] L1 died during the run: {' | '.join(why) or 'no panic on its console'}; "
                f"stopping the suites")
            child.send_signal(signal.SIGINT)
            child.wait()
            return 3


def run(cfg, lay, args) -> int:
    """L1 up, the hardware suites, L1 down: whatever happens in between."""
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    t0 = time.monotonic()
    rc = 1
    try:
        m = l1.start(lay, cfg.shell_port, log)
        env = dict(os.environ)
        env.setdefault("ACC_REPORTS_DIR", str(REPO / "reports" / "nested"))
        cmd = [sys.executable, "-m", "pytest", "suites", "--lab", str(cfg.path), "--claims", HARDWARE_CLAIMS,
               *args.pytest_args]
        log(f"[nested] {' '.join(cmd[1:])}")
        t1 = time.monotonic()
        child = subprocess.Popen(cmd, cwd=REPO, env=env)
        try:
            rc = watch(child, lay)
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)       # the harness tears its run down first
            child.wait()
            raise
        log(f"[nested] L1 boot {m.boot_s:.1f} s; suites {time.monotonic() - t1:.1f} s; "
            f"total {time.monotonic() - t0:.1f} s")
    finally:
        l1.stop(lay, log)
    return rc


if __name__ == "__main__":
    sys.exit(main())
