"""What a lab engineer sees when a test fails or a run is interrupted."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest

from lab import config

pytestmark = pytest.mark.lab
REPO = config.REPO
SAMPLE = "tests/data/sample_suite.py"


def test_failure_attaches_console_xml_qemu_log_and_dmesg(tmp_path, pytester_like):
    r = pytester_like(SAMPLE + "::test_sample", "--alluredir", str(tmp_path),
                      timeout=180, env_extra={"ACC_SAMPLE": "fail"})
    assert r.returncode == 1, r.stdout[-2000:]
    result = next(r for r in (json.loads(p.read_text()) for p in tmp_path.glob("*-result.json"))
                  if r["name"] == "test_sample")
    assert result["status"] == "failed"
    # the evidence is "<vm>: <what>"; other attachments (a finding such as "libvirt's daemon
    # stopped answering") are shown when the evidence is missing
    every = [a["name"] for a in result.get("attachments", [])]
    names = {a["name"].split(": ", 1)[1]: a["source"] for a in result.get("attachments", []) if ": " in a["name"]}
    assert {"console (serial log)", "live domain XML", "QEMU log", "guest dmesg"} <= set(names), every
    dmesg = (tmp_path / names["guest dmesg"]).read_text()
    assert "evidence-marker-in-dmesg" in dmesg, "the dmesg is the failed guest's own"
    assert "Linux version" in (tmp_path / names["console (serial log)"]).read_text()
    assert {"name": "claim", "value": "SER-1"} in result["labels"]
    env = (tmp_path / "environment.properties").read_text()
    for key in ("libvirt.version", "qemu.version", "host.kernel", "host.cpu", "guest.image", "fault.backend"):
        assert key + "=" in env


def ctrl_c_enabled():
    """In the child: SIGINT back to its default.  A shell starts a background job
    with SIGINT ignored, and Python then never raises KeyboardInterrupt, so these
    tests must not depend on how the self-tests were launched."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_sample(test: str, mode: str, marker: str, wait_s: float) -> tuple[subprocess.Popen, str]:
    """Start the sample suite's `test` as a lab engineer would, and read its output
    until the line with `marker` (the point where it is worth interrupting)."""
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "pytest", "-p", "no:cacheprovider", "-s",
                             f"{SAMPLE}::{test}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, ACC_SAMPLE=mode), preexec_fn=ctrl_c_enabled)
    lines = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if marker in line:
            return proc, line
        if not line and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"{test} did not print {marker} within {wait_s:.0f}s:\n" + "".join(lines)[-2000:])


def interrupt(proc: subprocess.Popen, wait_s: float = 60) -> str:
    """Ctrl-C the run and give its output; a run that does not end in time is
    made to dump its threads' stacks (faulthandler, SIGABRT) into the failure."""
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=wait_s)
        return out
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"the run did not end within {wait_s:.0f}s of Ctrl-C; its output and stacks:\n{out[-6000:]}")


def test_ctrl_c_tears_down_and_says_what_it_undid():
    proc, line = start_sample("test_sample", "hang", "SAMPLE-VM-RUNNING", 120)
    name = line.split()[-1]
    out = interrupt(proc)
    conn = libvirt.open(config.load().libvirt_uri)
    try:
        assert name not in [d.name() for d in conn.listAllDomains()], "the VM was undone"
    finally:
        conn.close()
    assert f"destroyed domain {name}" in out and f"undefined domain {name}" in out, out[-2000:]


def test_ctrl_c_heals_a_fault_in_place():
    proc, line = start_sample("test_sample_fault", "fault", "SAMPLE-FAULT-IN-PLACE", 60)
    files = [Path(p) for p in line.split("SAMPLE-FAULT-IN-PLACE", 1)[1].split()]
    assert files and all(f.exists() for f in files), line
    out = interrupt(proc)
    assert not any(f.exists() for f in files), "the fault was left in place"
    assert "nbdkit" not in subprocess.run(["pgrep", "-a", "-f", str(files[0].parent)], capture_output=True,
                                          text=True).stdout, "the fault backend process was left running"
    assert "healed and removed fault backend" in out, out[-2000:]


def test_a_shared_guest_a_test_left_dead_is_replaced_and_reported(tmp_path, pytester_like):
    r = pytester_like("tests/data/shared_guest_suite.py", "-s", "--alluredir", str(tmp_path), "-W",
                      "default::pytest.PytestWarning", timeout=300)
    assert r.returncode == 1, r.stdout[-3000:]
    assert "1 failed, 1 passed" in r.stdout, r.stdout[-3000:]
    first = re.search(r"SHARED-FIRST (\S+) (\S+)", r.stdout).groups()
    second = re.search(r"SHARED-SECOND (\S+) (\S+)", r.stdout).groups()
    assert first[0] != second[0] and first[1] != second[1], "the second test got the dead guest"
    assert "no longer served tests" in r.stdout, "the terminal does not say the shared guest was replaced"
    # the evidence of the dead guest hangs on the set-up of the test that got the new one
    befores = [b for p in tmp_path.glob("*-container.json") for b in json.loads(p.read_text()).get("befores", [])]
    names = [a["name"] for b in befores if b["name"] == "guest" for a in b.get("attachments", [])]
    assert any(n.startswith(f"replaced shared guest {first[0]}: console") for n in names), names
