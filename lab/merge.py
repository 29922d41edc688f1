"""Merge the outputs of separate runs (one per lab host of a fleet, from different
controllers or nights) into one: the Allure results (each test kept apart per lab host,
never folded into retries of one test), one JUnit file, one claim x host certification.

    python -m lab merge OUT RUN_DIR...      (./harness merge OUT RUN_DIR... adds the HTML report)

A RUN_DIR is what a run wrote (`ACC_REPORTS_DIR`, or `reports/`): `certification.json`,
`junit.xml`, `allure-results/`.  A run that is missing or half-written (no certification,
no JUnit, a result file that does not parse) is named, and nothing is merged.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from . import certification
from .errors import LabError


# Allure files of a fixed name that every run writes alike (the failure categories by kind)
SHARED_FILES = {"categories.json", "executor.json"}


class MergeError(LabError):
    pass


@dataclass
class RunOutput:
    dir: Path
    reports: dict           # host name -> its single-host certification report
    key: dict               # host name -> the name it has in the merge (unique across runs)


def read_run(d: Path) -> tuple[RunOutput | None, list[str]]:
    """The run in `d`, or the reasons it cannot be merged."""
    problems = []
    if not d.is_dir():
        return None, [f"{d}: no such directory"]
    cert = d / "certification.json"
    try:
        rep = json.loads(cert.read_text())
    except FileNotFoundError:
        problems.append(f"{d}: no certification.json (the run did not finish, or wrote elsewhere)")
        rep = None
    except ValueError as e:
        problems.append(f"{cert}: half-written ({e})")
        rep = None
    junit = d / "junit.xml"
    if not junit.is_file():
        problems.append(f"{d}: no junit.xml")
    else:
        try:
            etree.parse(str(junit))
        except etree.XMLSyntaxError as e:
            problems.append(f"{junit}: half-written ({e})")
    res = d / "allure-results"
    if not res.is_dir():
        problems.append(f"{d}: no allure-results/")
    else:
        for f in res.glob("*-result.json"):
            try:
                json.loads(f.read_text())
            except ValueError:
                problems.append(f"{f}: half-written")
    if problems or rep is None:
        return None, problems
    reports = rep["hosts"] if "hosts" in rep else {rep["host"].get("lab.host", d.name): rep}
    return RunOutput(d, reports, {}), []


def _unique_keys(runs: list[RunOutput]) -> None:
    """A host seen in more than one run (two nights of one host) keeps the runs apart."""
    seen: dict[str, int] = {}
    for r in runs:
        for h in r.reports:
            seen[h] = seen.get(h, 0) + 1
    for r in runs:
        for h, rep in r.reports.items():
            r.key[h] = h if seen[h] == 1 else f"{h} @ {rep.get('generated', r.dir.name)}"


def _host_of(result: dict, run: RunOutput) -> str:
    """The lab host a result ran on: its `lab:<host>` tag, else the run's only host."""
    for lab in result.get("labels", []):
        if lab.get("name") == "tag" and str(lab.get("value", "")).startswith("lab:"):
            name = lab["value"][4:]
            if name in run.key:
                return run.key[name]
    return next(iter(run.key.values()))


def merge_allure(runs: list[RunOutput], out: Path) -> dict[str, int]:
    """Copy every run's results; each result's historyId and testCaseId take its lab host,
    so Allure shows one test per host, not one test retried."""
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for i, run in enumerate(runs):
        for f in sorted((run.dir / "allure-results").iterdir()):
            if f.name == "environment.properties" or not f.is_file():
                continue
            target = out / f.name
            if target.exists() and f.name in SHARED_FILES:
                continue                # the same categories for every run of the harness
            if target.exists():         # Allure names its files by UUID: the same run given twice?
                raise MergeError(f"{f}: an Allure file of that name came from another run ({target}): "
                                 f"is the same run named twice?")
            if f.name.endswith("-result.json"):
                r = json.loads(f.read_text())
                host = _host_of(r, run)
                for k in ("historyId", "testCaseId"):
                    if r.get(k):
                        r[k] = hashlib.md5(f"{r[k]}|{host}".encode()).hexdigest()
                params = [p for p in r.get("parameters", []) if p.get("name") != "lab host"]
                r["parameters"] = params + [{"name": "lab host", "value": host}]
                r["labels"] = [lab for lab in r.get("labels", []) if lab.get("name") != "host"] + \
                              [{"name": "host", "value": host}]
                target.write_text(json.dumps(r))
                counts[host] = counts.get(host, 0) + 1
            else:
                shutil.copy2(f, target)
    env = [f"merged.runs={len(runs)}"]
    for run in runs:
        for h, rep in run.reports.items():
            env += [f"{run.key[h]}.{k}={v}".replace("\n", " ") for k, v in rep.get("host", {}).items()]
    (out / "environment.properties").write_text("\n".join(env) + "\n")
    return counts


def merge_junit(runs: list[RunOutput], out: Path) -> int:
    """One <testsuites>: every suite and test case named with its lab host."""
    root = etree.Element("testsuites", name="merged")
    n = 0
    for run in runs:
        tree = etree.parse(str(run.dir / "junit.xml")).getroot()
        suites = [tree] if tree.tag == "testsuite" else list(tree.iter("testsuite"))
        host = next(iter(run.key.values())) if len(run.key) == 1 else ""
        for s in suites:
            s = etree.fromstring(etree.tostring(s))
            for tc in s.iter("testcase"):
                h = host
                for p in tc.iter("property"):
                    if p.get("name") == "lab_host" and p.get("value") in run.key:
                        h = run.key[p.get("value")]
                if h:
                    tc.set("classname", f"{h}.{tc.get('classname', '')}")
                n += 1
            s.set("name", f"{host or 'multi-host'}: {s.get('name', 'pytest')}")
            root.append(s)
    etree.ElementTree(root).write(str(out), xml_declaration=True, encoding="utf-8", pretty_print=True)
    return n


def merge_certification(runs: list[RunOutput], out_dir: Path) -> dict:
    hosts = {run.key[h]: rep for run in runs for h, rep in run.reports.items()}
    matrix = {cid: {h: next((c["verdict"] for c in r["claims"] if c["id"] == cid), "not run")
                    for h, r in hosts.items()} for cid in certification.CLAIMS}
    report = {"generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "lab": "merged from " + ", ".join(str(r.dir) for r in runs),
              "note": "Merged from separate runs: each host's column is that host's own run.",
              "hosts": hosts, "matrix": matrix, "summary": {h: r["summary"] for h, r in hosts.items()}}
    certification.write(report, out_dir)
    return report


def merge(out: Path, dirs: list[Path], log=print) -> dict:
    runs, problems = [], []
    for d in dirs:
        r, why = read_run(d)
        problems += why
        if r is not None:
            runs.append(r)
    if problems:
        raise MergeError("cannot merge: " + "; ".join(problems) + "; fix: rerun those, or leave them out")
    if not runs:
        raise MergeError("nothing to merge: name the runs' report directories")
    _unique_keys(runs)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "allure-results", ignore_errors=True)
    counts = merge_allure(runs, out / "allure-results")
    cases = merge_junit(runs, out / "junit.xml")
    report = merge_certification(runs, out)
    for h, n in counts.items():
        log(f"merged: {h}: {n} Allure results")
    log(f"merged: {cases} JUnit test cases; certification {out / 'certification.md'} with "
        f"{len(report['hosts'])} host column(s)")
    return {"results": counts, "junit_cases": cases, "hosts": list(report["hosts"])}
