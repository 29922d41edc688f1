"""The certification report lists every documented claim with the right verdict."""
from lab import certification as C
from lab.claims import CLAIMS


def test_every_claim_is_listed_and_verdicts_aggregate():
    outcomes = [
        C.TestOutcome("suites/a.py::t1", ("PCIE-1",), "passed"),
        C.TestOutcome("suites/a.py::t2", ("PCIE-2", "PCIE-3"), "passed"),
        C.TestOutcome("suites/a.py::t3", ("PCIE-3",), "failed", "AssertionError: chassis"),
        C.TestOutcome("suites/b.py::t4", ("DISK-3",), "skipped", "lab host local lacks vhost-scsi"),
        C.TestOutcome("suites/c.py::t5", ("USB-3",), "deviation", "platform deviation: second xHCI"),
    ]
    collected = {"PCIE-1", "PCIE-2", "PCIE-3", "DISK-3", "USB-3", "SER-1"}
    r = C.build(outcomes, collected, {"lab.host": "h1"})
    by_id = {c["id"]: c for c in r["claims"]}
    assert len(r["claims"]) == len(CLAIMS) == 60
    assert by_id["PCIE-1"]["verdict"] == "passed"
    assert by_id["PCIE-3"]["verdict"] == "failed", "one failing test fails the claim"
    assert by_id["DISK-3"]["verdict"] == "skipped" and "vhost-scsi" in by_id["DISK-3"]["reasons"][0]
    assert by_id["USB-3"]["verdict"] == "deviation"
    assert by_id["SER-1"]["verdict"] == "not run"
    assert by_id["NIC-1"]["verdict"] == "gap", "a claim no test names is a gap, never dropped"
    assert "PCIe controllers" in r["verdict"]["failing"]
    md = C.markdown(r)
    assert md.count("\n| ") == 61 and "**gap**" in md


def test_suites_name_every_claim():
    """Every claim of the catalogue has at least one test (a gap is a harness defect)."""
    from fixtures.reporting import claims_with_tests
    from lab.config import REPO
    missing = sorted(set(CLAIMS) - claims_with_tests(REPO))
    assert not missing, f"claims without a test: {missing}"


def test_a_lab_problem_leaves_a_claim_unproven_not_failed():
    """Errors from the lab (a helper not answering, a host out of reach), a wait or the harness
    are no finding about the product: the claim is 'error' (not proven), and one real failure
    beside them still fails it."""
    import lab.certification as C
    only_lab = C.claim_verdicts([C.TestOutcome("suites/a.py::t", ("DISK-4",), "error", "LabUnusable: nbdkit")],
                                {"DISK-4"})
    assert only_lab["DISK-4"].verdict == "error"
    mixed = C.claim_verdicts([C.TestOutcome("suites/a.py::t", ("DISK-4",), "error", "LabUnusable"),
                              C.TestOutcome("suites/a.py::u", ("DISK-4",), "failed", "AssertionError")], {"DISK-4"})
    assert mixed["DISK-4"].verdict == "failed"
