"""The command line of a lab host the harness starts itself: `up`, `down`, `status`,
`run [pytest args]` (the nested lab, lab/nested; the namespace lab host, lab/nslab)."""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys

from . import config
from .images import ImageError


def suites_process(cmd, **kw) -> subprocess.Popen:
    """The suites' pytest, able to take the SIGINT it is stopped with: a process started
    with SIGINT ignored (a background job of a shell without job control, some CI
    runners) hands that on, and Python then never raises KeyboardInterrupt, so the
    suites would run on against a dead or stopping lab host."""
    return subprocess.Popen(cmd, preexec_fn=_sigint_deliverable, **kw)


def _sigint_deliverable(_set=signal.signal) -> None:      # bound at import: nothing patches it away
    _set(signal.SIGINT, signal.SIG_DFL)


def wait_suites(child, wait=None) -> int:
    """The suites' exit code; on Ctrl-C or SIGTERM they get SIGINT first, so the harness
    tears its run down before the lab host goes."""
    try:
        return (wait or child.wait)()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        child.wait()
        raise


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv, *, prog: str, doc: str, default_config, name: str, pid_what: str, layout, start, stop,
         running_pid, run, prepare=None) -> int:
    """`start(cfg, lay)` returns the seconds it took; `run(cfg, lay, args)` the suites' exit code;
    `prepare(cfg, lay)` builds and fetches what a start needs, without starting it."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lab", default=str(default_config), help=f"the lab config (default {default_config})")
    p.add_argument("action", choices=["up", "down", "status", "run", "prepare"])
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="for run: more pytest arguments")
    args = p.parse_args(argv)
    try:
        cfg = config.load(args.lab)
        lay = layout(cfg)
        if args.action == "down":
            for line in stop(lay, log) or [f"{name} was not running"]:
                print(line)
            return 0
        if args.action == "status":
            pid = running_pid(lay)
            print(f"{name} {f'runs ({pid_what} {pid})' if pid else 'is not running'}; SSH on 127.0.0.1:{cfg.shell_port}")
            return 0 if pid else 1
        if args.action == "prepare":
            prepare(cfg, lay)
            print(f"{name}: everything a start needs is built and cached")
            return 0
        if args.action == "up":
            print(f"{name} is up in {start(cfg, lay):.1f} s: python -m lab --lab {args.lab} doctor")
            return 0
        return run(cfg, lay, args)
    except (config.LabConfigError, ImageError, TimeoutError) as e:
        log(f"error: {e}")
        return 2
