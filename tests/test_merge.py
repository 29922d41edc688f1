"""Merging separate runs (a fleet's one job per lab host): one Allure result per test and
host (never retries of one test), one JUnit file, a claim x host certification; a missing
or half-written run is named and nothing is merged."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab import certification
from lab.merge import MergeError, merge

REPO = Path(__file__).resolve().parents[1]


def fake_run(d: Path, host: str, outcome: str) -> Path:
    import uuid
    """What one single-host run writes: certification, JUnit, Allure results."""
    d.mkdir(parents=True)
    rep = certification.build([certification.TestOutcome("suites/test_disks.py::test_a", ("DISK-4",), outcome, host=host)],
                              {"DISK-4"}, {"lab.host": host, "host.cpu": "HiSilicon Kunpeng 920 (TaiShan v110)"})
    certification.write(rep, d)
    (d / "junit.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="1">'
        '<testcase classname="suites.test_disks" name="test_a"/></testsuite></testsuites>')
    res = d / "allure-results"
    res.mkdir()
    (res / f"{uuid.uuid4()}-result.json").write_text(json.dumps({
        "name": "test_a", "status": outcome, "historyId": "h1", "testCaseId": "t1", "fullName": "suites.test_disks#test_a",
        "labels": [{"name": "tag", "value": f"lab:{host}"}, {"name": "claim", "value": "DISK-4"}],
        "parameters": [{"name": "lab host", "value": f"'{host} (x.toml)'"}]}))
    (res / f"{uuid.uuid4()}-container.json").write_text("{}")
    (res / "environment.properties").write_text(f"lab.host={host}\n")
    (res / "categories.json").write_text('[{"name": "lab problem"}]')      # every run writes it alike
    return d


def test_three_hosts_merge_into_one_report_with_three_columns(tmp_path):
    runs = [fake_run(tmp_path / n, n, o) for n, o in (("kp1", "passed"), ("kp2", "failed"), ("x86-1", "passed"))]
    said = []
    got = merge(tmp_path / "merged", runs, log=said.append)
    assert got["results"] == {"kp1": 1, "kp2": 1, "x86-1": 1} and got["junit_cases"] == 3
    results = [json.loads(f.read_text()) for f in (tmp_path / "merged" / "allure-results").glob("*-result.json")]
    assert len({r["historyId"] for r in results}) == 3, "one test on three hosts folded into retries"
    assert {p["value"] for r in results for p in r["parameters"] if p["name"] == "lab host"} == {"kp1", "kp2", "x86-1"}
    cert = json.loads((tmp_path / "merged" / "certification.json").read_text())
    assert cert["matrix"]["DISK-4"] == {"kp1": "passed", "kp2": "failed", "x86-1": "passed"}
    md = (tmp_path / "merged" / "certification.md").read_text()
    assert "| claim | documented behaviour | kp1 | kp2 | x86-1 |" in md and "Kunpeng 920" in md
    junit = (tmp_path / "merged" / "junit.xml").read_text()
    assert 'classname="kp2.suites.test_disks"' in junit


def test_one_host_on_two_nights_stays_two_columns(tmp_path):
    a, b = fake_run(tmp_path / "mon", "kp1", "passed"), fake_run(tmp_path / "tue", "kp1", "failed")
    rep = json.loads((b / "certification.json").read_text())
    rep["generated"] = "2026-12-06T01:00:00+0000"
    (b / "certification.json").write_text(json.dumps(rep))
    got = merge(tmp_path / "merged", [a, b], log=lambda s: None)
    assert len(got["hosts"]) == 2 and all(h.startswith("kp1 @ ") for h in got["hosts"])


def test_a_missing_or_half_written_run_is_named_and_nothing_is_merged(tmp_path):
    good = fake_run(tmp_path / "kp1", "kp1", "passed")
    half = fake_run(tmp_path / "kp2", "kp2", "passed")
    (half / "certification.json").write_text('{"host": {"lab.ho')
    with pytest.raises(MergeError) as e:
        merge(tmp_path / "merged", [good, half, tmp_path / "kp3"], log=lambda s: None)
    msg = str(e.value)
    assert "kp2/certification.json: half-written" in msg and "kp3: no such directory" in msg
    assert not (tmp_path / "merged").exists()


def test_the_command_line(tmp_path):
    runs = [fake_run(tmp_path / n, n, "passed") for n in ("kp1", "kp2")]
    r = subprocess.run([sys.executable, "-m", "lab", "merge", str(tmp_path / "m"), *map(str, runs)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "certification" in r.stdout and (tmp_path / "m" / "certification.md").is_file()
    r = subprocess.run([sys.executable, "-m", "lab", "merge", str(tmp_path / "m2"), str(tmp_path / "none")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "none: no such directory" in r.stderr
