"""Two controllers, one lab host (`./harness two-controllers`).

Controller A is this checkout with labs/nslab.toml; controller B is a separate clone with
its own venv and its own work dir (as a colleague's laptop would be), with the same lab
host and the same [ssh] port range.  Both run suites against the namespace lab host at the
same time and pass; neither's sweeper touches the other's run.  Then B is killed with
SIGKILL in the middle of a test, and A's next start sweeps exactly B's dead run: its
domains, run directory and lease on the lab host; B's own next start sweeps what B kept
on its own machine.

The lab host must be up (the harness part starts it).  The figures go to
reports/two-controllers/summary.txt.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import config
from lab.hostleases import lease_states
from lab.timeouts import Deadline, poll

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "two-controllers"
BOTH_CLAIMS = os.environ.get("ACC_TWO_CONTROLLERS_SET", "SER-1,NIC-6,IOS-8")
KILLED_CLAIMS = "DISK-4,SER-1"
SUMMARY: list[str] = []


def say(line: str) -> None:
    SUMMARY.append(line)
    print(f"[two-controllers] {line}", file=sys.stderr, flush=True)


def env(lab: Path, reports: Path) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ACC_")}
    e.update(ACC_LAB=str(lab), ACC_REPORTS_DIR=str(reports), ACC_NO_HTML="1")
    return e


@pytest.fixture(scope="module")
def controllers():
    OUT.mkdir(parents=True, exist_ok=True)
    a_lab = ROOT / "labs" / "nslab.toml"
    a = config.load(a_lab)
    b_root = OUT / "b" / "main"
    t = time.monotonic()
    if (b_root / ".git").exists():         # kept between runs with its venv; brought to this commit
        subprocess.run(["git", "-C", str(b_root), "fetch", "-q", str(ROOT), "HEAD"], check=True)
        subprocess.run(["git", "-C", str(b_root), "reset", "-q", "--hard", "FETCH_HEAD"], check=True)
    else:
        shutil.rmtree(b_root, ignore_errors=True)
        subprocess.run(["git", "clone", "-q", str(ROOT), str(b_root)], check=True)
    shared = b_root.parent / "shared"
    if not shared.exists():
        shared.symlink_to((ROOT.parent / "shared").resolve())
    text = a_lab.read_text().replace('name = "nslab"', 'name = "nslab-b"', 1)
    text, n = re.subn(r'(?m)^work_dir = "/var/lib/acc-lab/nslab/runner"$',
                      'work_dir = "/var/lib/acc-lab/nslab/runner-b"', text)
    assert n == 1, "labs/nslab.toml's controller work_dir line changed; update this test"
    b_lab = OUT / "b.toml"
    b_lab.write_text("# controller B: labs/nslab.toml with its own name and work dir\n" + text)
    b = config.load(b_lab)
    assert b.work_dir != a.work_dir and b.host_work_dir == a.host_work_dir and b.ssh_port_base == a.ssh_port_base
    r = subprocess.run([str(b_root / "harness"), "setup"], env=env(b_lab, OUT / "b-setup"), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, f"controller B's set-up failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    say(f"controller B: a clone with its own venv and work dir {b.work_dir}, ready in {time.monotonic() - t:.0f} s")
    host = a.host()
    try:
        yield {"A": (ROOT, a_lab, a), "B": (b_root, b_lab, b)}, host
    finally:
        host.close()
        (OUT / "summary.txt").write_text("\n".join(SUMMARY) + "\n")


def start(ctl, who: str, claims: str, tag: str) -> tuple[subprocess.Popen, Path]:
    root, lab, _ = ctl[who]
    log = OUT / f"{tag}-{who}.log"
    with log.open("w") as out:          # the child keeps its own copy
        p = subprocess.Popen([str(root / "harness"), "acceptance", "--claims", claims],
                             cwd=root, env=env(lab, OUT / f"{tag}-{who}"), stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    return p, log


def live_runs(host, cfg) -> dict[str, str]:
    """run id -> owner, for every run whose lease on the lab host is held."""
    return {n[4:-5]: st.owner for n, st in lease_states(host, cfg.host_work_dir / "leases").items()
            if n.startswith("run-") and st.held}


def of(ctl, who, runs: dict[str, str]) -> set[str]:
    wd = str(ctl[who][2].work_dir)
    return {rid for rid, owner in runs.items() if f"work_dir {wd} " in owner}


def sweep_lines(log: Path) -> list[str]:
    return [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("sweep: ")]


def test_two_controllers_run_at_once_and_neither_touches_the_other(controllers):
    ctl, host = controllers
    a_cfg = ctl["A"][2]
    for w in "AB":          # whatever earlier runs left (on the lab host and in each work dir): not this test's
        root = ctl[w][0]
        subprocess.run([str(root / ".venv" / "bin" / "python"), "-m", "lab", "--lab", str(ctl[w][1]), "sweep"],
                       cwd=root, check=True, capture_output=True, timeout=300)
    t = time.monotonic()
    procs = {w: start(ctl, w, BOTH_CLAIMS, "both") for w in "AB"}
    seen: dict[str, set[str]] = {"A": set(), "B": set()}
    together = 0.0
    while any(p.poll() is None for p, _ in procs.values()):
        runs = live_runs(host, a_cfg)
        for w in "AB":
            seen[w] |= of(ctl, w, runs)
        if of(ctl, "A", runs) and of(ctl, "B", runs):
            together += 0.5
        time.sleep(0.5)
        assert time.monotonic() - t < 1500, "the two controllers' runs did not end within 25 min"
    wall = time.monotonic() - t
    for w, (p, log) in procs.items():
        assert p.returncode == 0, f"controller {w} failed ({p.returncode}); its output: {log}\n" + \
            "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    assert seen["A"] and seen["B"], f"a controller's run never held a lease on the lab host: {seen}"
    assert together > 0, "the two runs never overlapped: nothing was shown"
    alive = seen["A"] | seen["B"]
    for w, (_, log) in procs.items():
        touched = [ln for ln in sweep_lines(log) if any(rid in ln for rid in alive)]
        assert not touched, f"controller {w}'s sweeper removed something of a live run: {touched}"
        assert sweep_lines(log) == [], f"controller {w}'s sweeper found leftovers after a clean sweep: {sweep_lines(log)}"
    say(f"both controllers passed {BOTH_CLAIMS} at once in {wall:.0f} s (runs of both alive together for "
        f"~{together:.0f} s; runs A {sorted(seen['A'])}, B {sorted(seen['B'])}); neither's sweeper removed anything")


def test_a_controller_killed_with_sigkill_is_swept_by_the_other_exactly(controllers):
    ctl, host = controllers
    a_cfg, b_cfg = ctl["A"][2], ctl["B"][2]
    p, b_log = start(ctl, "B", KILLED_CLAIMS, "killed")

    def b_running():
        assert p.poll() is None, f"controller B ended before it could be killed: {b_log}"
        runs = of(ctl, "B", live_runs(host, b_cfg))
        doms = host.run("virsh", "-c", "qemu:///system", "list", "--name").stdout.split()
        return next(((rid, d) for rid in runs for d in doms if d.startswith(f"acc-{rid}-")), None)
    rid, dom = poll(b_running, Deadline(600, "controller B's run to have a running guest on the lab host",
                                        scaled=False), interval=0.5)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    t = time.monotonic()
    poll(lambda: rid not in live_runs(host, b_cfg),
         Deadline(60, f"the lease of B's killed run {rid} to go free", scaled=False), interval=0.2)
    freed = time.monotonic() - t
    left_doms = [d for d in host.run("virsh", "-c", "qemu:///system", "list", "--all", "--name").stdout.split()
                 if d.startswith(f"acc-{rid}-")]
    run_dir = b_cfg.host_work_dir / "runs" / rid
    assert left_doms and host.exists(run_dir), "the SIGKILL left nothing to sweep: the test shows nothing"
    say(f"SIGKILL of controller B while its guest {dom} ran (run {rid}): its lease on the lab host was free "
        f"after {freed:.1f} s; it left domain(s) {left_doms} and {run_dir}")

    t = time.monotonic()
    a, a_log = start(ctl, "A", "SER-1", "after-kill")
    assert a.wait(900) == 0, f"controller A's next run failed: {a_log}"
    lines = sweep_lines(a_log)
    say(f"controller A's next run passed in {time.monotonic() - t:.0f} s; its sweeper logged:")
    for ln in lines:
        say(f"    {ln}")
    assert lines and all(rid in ln for ln in lines), f"A's sweeper removed something not of B's dead run: {lines}"
    # ("undefined" whether or not it still ran: the killed test may have had it shut off, to restart it)
    assert any(f"undefined leftover domain {dom} of dead run {rid}" in ln and f"work_dir {b_cfg.work_dir} " in ln
               for ln in lines), lines
    assert any(f"removed leftover run directory {run_dir}" in ln for ln in lines), lines
    left = [d for d in host.run("virsh", "-c", "qemu:///system", "list", "--all", "--name").stdout.split()
            if d.startswith(f"acc-{rid}-")]
    assert not left and not host.exists(run_dir), f"B's leftovers on the lab host: {left}, {run_dir}"
    assert not host.exists(b_cfg.host_work_dir / "leases" / f"run-{rid}.lock")
    assert host.run("sh", "-c", f"ip -o link show | grep -c 'acc-harness run={rid}' || true").stdout.strip() == "0"

    # what B kept on its own machine goes at B's next start (a sweep of its work dir)
    b_local = b_cfg.work_dir / "runs" / rid
    assert b_local.exists(), "B kept nothing on its own machine: the check below shows nothing"
    root_b = ctl["B"][0]
    r = subprocess.run([str(root_b / ".venv" / "bin" / "python"), "-m", "lab", "--lab", str(ctl["B"][1]), "sweep"],
                       cwd=root_b, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and not b_local.exists(), r.stdout + r.stderr
    say(f"controller B's next start removed its own {b_local}")
