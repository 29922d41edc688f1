"""The namespace lab host: `python -m lab.nslab up|down|status|run [pytest args]`.

  up       start it (a crashed run's lab host is stopped first)
  down     stop it
  status   does it run
  run      up, the whole local catalogue (suites/) against labs/nslab.toml, down
           (also on failure, Ctrl-C, SIGTERM)

Where the lab host keeps its files (keys, OpenSSH, its disk) and which port reaches
its SSH come from the lab config ([shell] key_file and port), so the config the
harness drives and the lab host that is started cannot disagree.
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
from . import HOST_WORK_DIR, Layout, running_pid, start, stop

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "labs" / "nslab.toml"


def layout(cfg: config.LabConfig) -> Layout:
    if not cfg.shell_key_file or cfg.shell_address != "127.0.0.1" or str(cfg.host_work_dir) != HOST_WORK_DIR:
        raise config.LabConfigError(
            f"{cfg.path}: the namespace lab host needs [shell] address = '127.0.0.1', key_file = "
            f"'<lab dir>/lab_key' and work_dir = '{HOST_WORK_DIR}' (it is reached through a forward on this "
            f"machine, and its disk is bound over /srv)")
    return Layout(Path(cfg.shell_key_file).parent)


def controller_dirs(cfg: config.LabConfig) -> list[str]:
    """What the lab host must not see: the harness's work dirs on this machine, the repository."""
    local = config.load(REPO / "labs" / "local.toml")
    return [str(local.work_dir), str(cfg.work_dir), str(REPO)]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cfg: config.LabConfig, lay: Layout, pytest_args: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    t0 = time.monotonic()
    reports = Path(os.environ.get("ACC_REPORTS_DIR") or REPO / "reports" / "nslab")
    env = dict(os.environ, ACC_REPORTS_DIR=str(reports))
    cmd = [sys.executable, "-m", "pytest", "suites", "--lab", str(cfg.path), *pytest_args]
    try:
        m = start(lay, cfg.shell_port, controller_dirs(cfg), log)
        log(f"[nslab] {' '.join(cmd[1:])}")
        t1 = time.monotonic()
        child = subprocess.Popen(cmd, cwd=REPO, env=env)
        try:
            rc = child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)        # the harness tears its run down first
            child.wait()
            raise
        log(f"[nslab] lab host up in {m.up_s:.1f} s; suites {time.monotonic() - t1:.1f} s; "
            f"total {time.monotonic() - t0:.1f} s")
        return rc
    finally:
        stop(lay, log)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.nslab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lab", default=str(DEFAULT_CONFIG), help="the namespace lab host's config (default labs/nslab.toml)")
    p.add_argument("action", choices=["up", "down", "status", "run"])
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="for run: more pytest arguments")
    args = p.parse_args(argv)
    try:
        cfg = config.load(args.lab)
        lay = layout(cfg)
        if args.action == "down":
            for line in stop(lay, log) or ["the namespace lab host was not running"]:
                print(line)
            return 0
        if args.action == "status":
            pid = running_pid(lay)
            print(f"the namespace lab host {'runs (unshare pid %d)' % pid if pid else 'is not running'}; "
                  f"SSH on 127.0.0.1:{cfg.shell_port}")
            return 0 if pid else 1
        if args.action == "up":
            m = start(lay, cfg.shell_port, controller_dirs(cfg), log)
            print(f"the namespace lab host is up in {m.up_s:.1f} s: python -m lab --lab {args.lab} doctor")
            return 0
        return run(cfg, lay, args.pytest_args)
    except (config.LabConfigError, ImageError, TimeoutError) as e:
        log(f"error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
