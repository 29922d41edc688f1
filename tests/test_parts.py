"""./harness test's parts: a part that crashed or ran no test is named as broken, a part
whose tests failed is a failure, and the time table adds the parts up."""
from lab import parts

JUNIT = ('<testsuites><testsuite name="pytest" tests="{t}" failures="{f}" errors="{e}" skipped="{s}">'
         '</testsuite></testsuites>')


def junit(tmp_path, t, f=0, e=0, s=0):
    p = tmp_path / "junit.xml"
    p.write_text(JUNIT.format(t=t, f=f, e=e, s=s))
    return p


def test_a_part_that_ran_its_tests_is_judged_by_them(tmp_path):
    ok = parts.judge("local", 0, 60, junit(tmp_path, 10, s=2))
    assert not ok.broken and ok.passed == 8
    failed = parts.judge("local", 1, 60, junit(tmp_path, 10, f=1, e=1))
    assert not failed.broken and failed.passed == 8 and failed.failures == 1


def test_a_crashed_part_or_one_without_tests_is_broken(tmp_path):
    assert "internal error" in parts.judge("nslab", 3, 5, junit(tmp_path, 26)).broken   # xdist INTERNALERROR
    assert "no test" in parts.judge("nslab", 5, 5, junit(tmp_path, 0)).broken
    assert "no test" in parts.judge("nslab", 0, 5, junit(tmp_path, 0)).broken
    assert "no JUnit" in parts.judge("nslab", 0, 5, tmp_path / "missing.xml").broken
    assert "set-up or lab host" in parts.judge("nested", 2 + 40, 5, junit(tmp_path, 3)).broken
    assert parts.judge("set-up", 0, 90, None).broken == ""


def test_main_appends_to_the_ledger_and_prints_the_table(tmp_path, capsys):
    ledger = tmp_path / "parts.jsonl"
    assert parts.main(["check", "set-up", "0", "95", "-", str(ledger)]) == 0
    assert parts.main(["check", "local", "1", "600", str(junit(tmp_path, 5, f=1)), str(ledger)]) == 0
    assert parts.main(["check", "nslab", "3", "30", str(junit(tmp_path, 0)), str(ledger)]) == 1
    assert "part nslab exited 3" in capsys.readouterr().err
    parts.main(["table", str(ledger)])
    out = capsys.readouterr().out
    assert "FAILED" in out and "BROKEN" in out and "12:05" in out      # 95 + 600 + 30 s


def test_the_table_gives_the_wall_clock_beside_the_summed_parts():
    from lab.parts import Part, table
    t = table([Part("local", 0, 1200, tests=3), Part("nested", 0, 2400, tests=2)], wall=2460)
    last = t.splitlines()[-1]
    assert "wall clock (parts summed: 60:00)" in last and last.endswith("41:00")
