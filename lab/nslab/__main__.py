"""The namespace lab host: `python -m lab.nslab up|down|status|run [pytest args]`.

  prepare  unpack OpenSSH and make the keys (cached), start nothing
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

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import config, labctl
from ..labctl import log
from ..nested import l1
from . import HOST_WORK_DIR, Layout, ensure_openssh, running_pid, start, stop

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
        child = labctl.suites_process(cmd, cwd=REPO, env=env)
        rc = labctl.wait_suites(child)
        log(f"[nslab] lab host up in {m.up_s:.1f} s; suites {time.monotonic() - t1:.1f} s; "
            f"total {time.monotonic() - t0:.1f} s")
        return rc
    finally:
        stop(lay, log)


def main(argv=None) -> int:
    return labctl.main(argv, prog="python -m lab.nslab", doc=__doc__, default_config=DEFAULT_CONFIG,
                       name="the namespace lab host", pid_what="unshare pid", layout=layout, stop=stop,
                       running_pid=running_pid, run=lambda cfg, lay, args: run(cfg, lay, args.pytest_args),
                       start=lambda cfg, lay: start(lay, cfg.shell_port, controller_dirs(cfg), log).up_s,
                       prepare=lambda cfg, lay: (l1.ensure_keys(lay), ensure_openssh(lay, log)))


if __name__ == "__main__":
    sys.exit(main())
