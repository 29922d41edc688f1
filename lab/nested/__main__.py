"""The nested lab: `python -m lab.nested up|down|status|run [pytest args]`.

  prepare  build the L1 image and fetch QEMU 10 if needed (cached), start nothing
  up       build the L1 image and QEMU 10 if needed, start L1 (a crashed run's L1 is stopped first)
  down     stop L1 and remove what it wrote
  status   is L1 running
  run      up, the hardware suites against labs/nested.toml, down (also on failure, Ctrl-C, SIGTERM);
           `run --claims IDS` picks other claims, `--lab labs/nested-openeuler-qemu.toml` openEuler's QEMU

Where the nested lab lives (keys, images, QEMU 10) and which port reaches L1's
SSH come from the lab config (labs/nested.toml: [shell] key_file and port), so
the config the harness drives and the L1 that is started cannot disagree.
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
from . import l1

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "labs" / "nested.toml"
# The hardware claims, the suites the nested run selects (USB-9 skips there: it needs a second host).
HARDWARE_CLAIMS = "DISK-3,NIC-2,NIC-5,NIC-8,PCI,SRIOV,USB-6,USB-7,USB-8,USB-9,USB-10,IOS-8,IOS-9"


def layout(cfg: config.LabConfig) -> l1.Layout:
    if not cfg.shell_key_file or cfg.shell_address != "127.0.0.1":
        raise config.LabConfigError(f"{cfg.path}: the nested lab needs [shell] address = '127.0.0.1' and key_file "
                                    f"= '<nested lab dir>/l1_key' (L1 is reached through a forward on this machine)")
    return l1.Layout(Path(cfg.shell_key_file).parent)


def main(argv=None) -> int:
    return labctl.main(argv, prog="python -m lab.nested", doc=__doc__, default_config=DEFAULT_CONFIG, name="L1",
                       pid_what="QEMU pid", layout=layout, stop=l1.stop, running_pid=l1.running_pid, run=run,
                       start=lambda cfg, lay: l1.start(lay, cfg.shell_port, log).boot_s,
                       prepare=lambda cfg, lay: l1.prepare(lay, log))


L1_DIED = 3
# L1 is an emulated host: nested KVM on TCG's SVM has crashed L1's kernel (with two
# vCPUs).  A run whose L1 died is run again, once, on a fresh L1; the dead L1's console
# is kept beside the reports, and the first attempt's results stay in the Allure results
# (Allure shows them as that test's earlier try).
ATTEMPTS = 2


def watch(child: subprocess.Popen, lay: l1.Layout, keep_console: Path) -> int:
    """Wait for the suites; if L1 itself dies meanwhile, say why (its console's
    panic), keep its console, and stop the suites instead of letting every test
    wait for a dead host."""
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
            keep_console.parent.mkdir(parents=True, exist_ok=True)
            keep_console.write_text(text)
            log(f"[nested] L1's console: {keep_console}")
            child.send_signal(signal.SIGINT)
            child.wait()
            return L1_DIED


def run(cfg, lay, args, start=l1.start, stop=l1.stop, suites=None) -> int:
    """L1 up, the hardware suites, L1 down: whatever happens in between.  If L1
    dies under the suites, once more on a fresh L1."""
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    t0 = time.monotonic()
    reports = Path(os.environ.get("ACC_REPORTS_DIR") or REPO / "reports" / "nested")
    env = dict(os.environ, ACC_REPORTS_DIR=str(reports))
    # the hardware claims, unless the command line picks its own (`run --claims IOS-2,...`)
    picked = any(a == "--claims" or a.startswith("--claims=") for a in args.pytest_args)
    cmd = [sys.executable, "-m", "pytest", "suites", "--lab", str(cfg.path),
           *([] if picked else ["--claims", HARDWARE_CLAIMS]), *args.pytest_args]
    suites = suites or (lambda: labctl.suites_process(cmd, cwd=REPO, env=env))
    rc = 1
    if cfg.qemu_source:         # a lab QEMU (openEuler's) is built here first, then copied to L1
        from .. import qemu_build
        b = qemu_build.for_lab(cfg, build=True, log=log)
        log(f"[nested] {b.describe()}: copied to L1 when the suites start")
    try:
        for attempt in range(1, ATTEMPTS + 1):
            m = start(lay, cfg.shell_port, log)
            log(f"[nested] {' '.join(cmd[1:])}" + (f" (attempt {attempt} of {ATTEMPTS})" if attempt > 1 else ""))
            t1 = time.monotonic()
            child = suites()
            rc = labctl.wait_suites(child, lambda: watch(child, lay, reports / f"l1-console-attempt{attempt}.log"))
            log(f"[nested] L1 boot {m.boot_s:.1f} s; suites {time.monotonic() - t1:.1f} s; "
                f"total {time.monotonic() - t0:.1f} s")
            if rc != L1_DIED:
                break
            stop(lay, log)
            if attempt < ATTEMPTS:
                log("[nested] the lab host died, not a claim: the hardware suites run again on a fresh L1")
    finally:
        stop(lay, log)
    return rc


if __name__ == "__main__":
    sys.exit(main())
