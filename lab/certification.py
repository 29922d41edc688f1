"""The certification report: per lab host, every documented claim with its
verdict (passed / failed / deviation / skipped with the reason / not run / gap),
the host's facts, and a verdict line per feature.  Written as JSON for
machines and Markdown for people."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .claims import CLAIMS

ORDER = ["failed", "error", "deviation", "passed", "skipped", "not run", "gap"]


@dataclass
class TestOutcome:
    nodeid: str
    claims: tuple
    outcome: str            # passed | failed | error | skipped | deviation
    reason: str = ""
    host: str = ""
    duration: float = 0.0
    how: str = ""           # how a passed test proved its claims, where a lab host has several ways


@dataclass
class ClaimVerdict:
    id: str
    feature: str
    story: str
    verdict: str
    tests: list = field(default_factory=list)
    reasons: list = field(default_factory=list)
    how: list = field(default_factory=list)


def claim_verdicts(outcomes: list[TestOutcome], collected_claims: set[str]) -> dict[str, ClaimVerdict]:
    out = {}
    for cid, c in CLAIMS.items():
        mine = [o for o in outcomes if cid in o.claims]
        v = ClaimVerdict(cid, c.feature, c.story, "gap" if cid not in collected_claims else "not run")
        if mine:
            kinds = {o.outcome for o in mine}
            if "failed" in kinds:
                v.verdict = "failed"
            elif "error" in kinds:          # the lab, a wait or the harness failed: not proven either way
                v.verdict = "error"
            elif "passed" in kinds and "deviation" not in kinds:
                v.verdict = "passed"
            elif "deviation" in kinds:
                v.verdict = "deviation"
            else:
                v.verdict = "skipped"
            v.tests = [f"{o.nodeid} [{o.outcome}]" for o in mine]
            v.reasons = sorted({o.reason for o in mine if o.reason and o.outcome != "passed"})
            v.how = sorted({o.how for o in mine if o.how and o.outcome == "passed"})
        out[cid] = v
    return out


def build(outcomes: list[TestOutcome], collected_claims: set[str], facts: dict) -> dict:
    verdicts = claim_verdicts(outcomes, collected_claims)
    features: dict[str, dict] = {}
    for v in verdicts.values():
        f = features.setdefault(v.feature, {})
        f[v.verdict] = f.get(v.verdict, 0) + 1
    supported = [f for f, counts in features.items() if set(counts) == {"passed"}]
    broken = [f for f, counts in features.items() if counts.get("failed")]
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": facts,
        "summary": {k: sum(1 for v in verdicts.values() if v.verdict == k) for k in ORDER},
        "verdict": {"supported": supported, "failing": broken,
                    "partly proven": [f for f in features if f not in supported and f not in broken]},
        "features": features,
        "claims": [v.__dict__ for v in verdicts.values()],
    }


def markdown(report: dict) -> str:
    h = report["host"]
    lines = [f"# Certification report: {h.get('lab.host', '?')}", "",
             f"Generated {report['generated']}.", "", "## Host", ""]
    lines += [f"- {k}: {v}" for k, v in h.items()]
    s = report["summary"]
    lines += ["", "## Verdict", "",
              f"{s['passed']} of {len(report['claims'])} documented claims proven on this host; "
              f"{s['failed']} failed (a product defect), {s['error']} not proven (a lab problem, a timeout or a "
              f"harness error stopped the test), {s['deviation']} deviate from the guide, "
              f"{s['skipped']} skipped, {s['not run']} not run, {s['gap']} without a test.", ""]
    v = report["verdict"]
    lines += [f"- Supported (every claim proven): {', '.join(v['supported']) or 'none'}",
              f"- Failing: {', '.join(v['failing']) or 'none'}",
              f"- Partly proven: {', '.join(v['partly proven']) or 'none'}", "",
              "## Claims", "", "| claim | feature | documented behaviour | verdict | why / tests |", "|---|---|---|---|---|"]
    for c in report["claims"]:
        why = "; ".join(c["reasons"]) or ", ".join(t.split("::")[-1] for t in c["tests"])
        if c.get("how"):
            why += "; proven with " + "; ".join(c["how"])
        lines.append(f"| {c['id']} | {c['feature']} | {c['story']} | **{c['verdict']}** | {why.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def build_multi(outcomes: list[TestOutcome], collected_claims: set[str], facts_by_host: dict[str, dict],
                lab: str = "") -> dict:
    """Several lab hosts: one report per host (each test counts for the host it ran
    on) and a claim x host matrix.  A claim placed on another host is 'not run' here."""
    hosts = {h: build([o for o in outcomes if o.host == h], collected_claims, f) for h, f in facts_by_host.items()}
    matrix = {cid: {h: next(c["verdict"] for c in r["claims"] if c["id"] == cid) for h, r in hosts.items()}
              for cid in CLAIMS}
    return {"generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lab": lab, "hosts": hosts, "matrix": matrix,
            "summary": {h: r["summary"] for h, r in hosts.items()}}


def markdown_multi(report: dict) -> str:
    names = list(report["hosts"])
    lines = [f"# Certification report: {', '.join(names)}", "",
             f"Generated {report['generated']} from lab config {report['lab']}. " + report.get(
                 "note", "Each test ran on one lab host (placed by capability); 'not run' means it ran on "
                         "another host."), "",
             "## Claims by lab host", "", "| claim | documented behaviour | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for cid, row in report["matrix"].items():
        lines.append(f"| {cid} | {CLAIMS[cid].story} | " + " | ".join(f"**{row[h]}**" if row[h] in ("passed", "failed")
                                                                      else row[h] for h in names) + " |")
    for h in names:
        lines += ["", markdown(report["hosts"][h]).replace("\n## ", "\n### ").replace("# Certification report: ",
                                                                                       "## Lab host ", 1)]
    return "\n".join(lines) + "\n"


def write(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j = out_dir / "certification.json"
    m = out_dir / "certification.md"
    j.write_text(json.dumps(report, indent=1))
    m.write_text(markdown_multi(report) if "hosts" in report else markdown(report))
    return j, m
