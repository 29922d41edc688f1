#!/usr/bin/env python3
"""Seed defects into openEuler's QEMU and check the IOS suite catches each one.

Builds the lab's QEMU source once in a scratch directory (not the lab's cache), then
for each defect: patch the source, rebuild incrementally, run suites/test_ios.py on a
temporary lab config whose [qemu] emulator is that binary, restore the source.  Prints
`seeded.<defect> caught|MISSED <failed tests>`; exits 1 if a defect went unnoticed.

    .venv/bin/python bench/seeded_qemu.py                 # every defect (about 12 minutes)
    .venv/bin/python bench/seeded_qemu.py timeout_ignored
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import config, qemu_build  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BB = "block/block-backend.c"
# Tests no defect below touches: if one of them fails, the lab is broken, not the feature.
CONTROLS = {"test_stop_policy_suspends_the_vm_and_resume_completes_the_io",
            "test_qemu_command_line_form_keeps_the_settings"}
# defect -> (file, text, replacement, tests that must fail)
DEFECTS = {
    "retry_reports_at_once": (BB, "return (blk->retry_timer && !blk_error_retry_timeout(blk)) ?",
                              "return (0 && blk->retry_timer && !blk_error_retry_timeout(blk)) ?",
                              {"short_fault", "longer_than", "defaults", "excludes", "separately", "through"}),
    "timeout_ignored": (BB, "if (!blk->retry_timeout) {", "if (1 || !blk->retry_timeout) {", {"longer_than"}),
    "interval_ignored": (BB, "    blk->retry_interval = interval;", "    blk->retry_interval = 1000;",
                         {"excludes"}),
    # An interval of 0 retries in a busy loop and floods libvirtd with BLOCK_IO_ERROR events
    # until it answers nobody: the tests must end with that finding (keepalive, then the
    # daemon's and QEMU's state), and teardown must kill the QEMU through the lab host.
    "interval_zero": (BB, "    blk->retry_interval = interval;", "    blk->retry_interval = 0;",
                      {"short_fault", "defaults"}),
    "interval_shortened": (BB, "    blk->retry_interval = interval;", "    blk->retry_interval = interval * 6 / 10;",
                           {"excludes", "defaults"}),
    "rerror_follows_werror": (BB, "return is_read ? blk->on_read_error : blk->on_write_error;",
                              "return blk->on_write_error;", {"separately", "error_policies_are_separate"}),
}


def sh(argv, cwd, log):
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed: {(r.stdout + r.stderr)[-2000:]}")
    log.write(r.stdout + r.stderr)


def failed_tests(junit: Path) -> set[str]:
    out = set()
    for case in ET.parse(junit).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            out.add(case.get("name"))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("defects", nargs="*", default=list(DEFECTS))
    p.add_argument("--lab", default=str(REPO / "labs" / "local-openeuler-qemu.toml"))
    a = p.parse_args()
    cfg = config.load(a.lab)
    work = Path(tempfile.mkdtemp(prefix="seeded-qemu-", dir=cfg.work_dir))
    os.chmod(work, 0o755)                    # libvirt's QEMU user runs the seeded binary
    missed = 0
    try:
        log = open(work / "build.log", "w")
        src = qemu_build._unpack(Path(cfg.qemu_source), work)
        qemu_build._check_tree(src, Path(cfg.qemu_source))
        qemu_build._adjust(src)
        build = work / "build"
        build.mkdir()
        print("# configuring and building the seed tree (about 3 minutes)", flush=True)
        sh(["bash", str(src / "configure"), f"--prefix={work / 'inst'}", *qemu_build.CONFIGURE_ARGS], build, log)
        sh(["ninja", qemu_build.BINARY], build, log)
        emulator = build / qemu_build.BINARY
        lab_text = Path(a.lab).read_text()
        lab_text = re.sub(r'(?m)^source(_sha256)? = .*\n', "", lab_text)
        lab_text = lab_text.replace("[qemu]\n", f'[qemu]\nemulator = "{emulator}"\n')
        lab_text = re.sub(r'(?m)^name = .*$', 'name = "seeded-qemu"', lab_text)
        lab = work / "seeded.toml"
        lab.write_text(lab_text)
        for name in a.defects:
            f, old, new, must = DEFECTS[name]
            path = src / f
            orig = path.read_text()
            if old not in orig:
                raise SystemExit(f"defect {name}: {f} has no {old!r} (the source changed; update bench/seeded_qemu.py)")
            path.write_text(orig.replace(old, new))
            try:
                sh(["ninja", qemu_build.BINARY], build, log)
                junit = work / f"{name}.xml"
                r = subprocess.run([sys.executable, "-m", "pytest", "suites/test_ios.py", "--lab", str(lab), "-q",
                                    "-p", "no:cacheprovider", "--junitxml", str(junit)], cwd=REPO,
                                   env={**os.environ, "ACC_REPORTS_DIR": str(work / "reports")},
                                   capture_output=True, text=True)
                (REPO / "reports").mkdir(exist_ok=True)
                (REPO / "reports" / f"seeded-{name}.log").write_text(r.stdout + r.stderr)
                print(f"# {name}: {(r.stdout.strip().splitlines() or ['no output'])[-1]}", flush=True)
                failed = failed_tests(junit)
                caught = {m for m in must if any(m in t for t in failed)}
                verdict = "caught" if caught == must else "MISSED"
                if failed & CONTROLS or "internal" in failed or " passed" not in r.stdout:
                    verdict = f"LAB-BROKEN (a control failed or nothing ran; reports/seeded-{name}.log)"
                missed += verdict != "caught"
                print(f"seeded.{name:28} {verdict} by {', '.join(sorted(failed)) or 'nothing'}"
                      + ("" if caught == must else f" (expected also {', '.join(sorted(must - caught))})"), flush=True)
            finally:
                path.write_text(orig)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
