"""Two lab hosts in one lab config, for real: labs/pair.toml names the local lab
and local-b (a second libvirt endpoint, a private libvirtd).  Two xdist workers
each lease one host and run its tests at the same time; a test that needs the
storage fault backend (which local-b lacks) runs on the local lab; the report
says which host ran what; neither host keeps a domain of the run."""
import json
from collections import defaultdict

import libvirt
import pytest

from lab import config, daemon

pytestmark = pytest.mark.lab
PAIR = config.REPO / "labs" / "pair.toml"
SUBSET = "serial or pcie or test_read_and_write_error_policies_are_separate"


def _domains(uri: str) -> set[str]:
    conn = libvirt.open(uri)
    try:
        return {d.name() for d in conn.listAllDomains() if d.name().startswith("acc-")}
    finally:
        conn.close()


@pytest.fixture
def pair():
    """The pair lab; local-b's private libvirtd is stopped afterwards unless it ran before."""
    labs = config.load_set(PAIR)
    was_running = {h.name for h in labs.hosts if h.daemon == "private" and daemon.running(h)}
    yield labs, was_running
    for h in labs.hosts:
        if h.daemon == "private" and h.name not in was_running:
            daemon.stop(h)
            assert not daemon.running(h)


def test_two_hosts_run_in_parallel_each_worker_on_its_own_host(tmp_path, pytester_like, pair):
    labs, was_running = pair
    before = {h.name: _domains(h.libvirt_uri) if h.daemon == "system" else set() for h in labs.hosts}
    r = pytester_like("suites", "--lab", str(PAIR), "-n", "2", "-k", SUBSET, "--alluredir", str(tmp_path / "allure"),
                      "--junitxml", str(tmp_path / "junit.xml"), timeout=1200,
                      env_extra={"ACC_REPORTS_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]

    results = [json.loads(p.read_text()) for p in (tmp_path / "allure").glob("*-result.json")]
    ran = defaultdict(list)
    for res in results:
        host = {p["name"]: p["value"] for p in res.get("parameters", [])}.get("lab_host", "").strip("'")
        labels = {lab["name"]: lab["value"] for lab in res["labels"]}
        if res["status"] == "passed":
            ran[host].append((res["name"], labels["thread"], res["start"], res["stop"]))
    assert set(ran) == {"local", "local-b"}, f"both hosts ran tests: {dict(ran)}"

    workers = {h: {t[1].split("-")[0] for t in tests} for h, tests in ran.items()}
    assert all(len(w) == 1 for w in workers.values()), f"one worker process per host: {workers}"
    assert workers["local"] != workers["local-b"], f"each worker leased its own host: {workers}"

    span = {h: (min(t[2] for t in tests), max(t[3] for t in tests)) for h, tests in ran.items()}
    assert span["local"][0] < span["local-b"][1] and span["local-b"][0] < span["local"][1], \
        f"the two hosts worked at the same time: {span}"

    ios = [t for h, tests in ran.items() for t in tests if t[0].startswith("test_read_and_write_error_policies_are_separate")]
    assert ios and all(t in ran["local"] for t in ios), "the fault-backend test ran on the host that has one"

    cert = json.loads((tmp_path / "certification.json").read_text())
    assert cert["matrix"]["IOS-8"] == {"local": "passed", "local-b": "not run"}
    assert "lab_host" in (tmp_path / "junit.xml").read_text()
    env = (tmp_path / "allure" / "environment.properties").read_text()
    for h in labs.names:            # every host's facts, read while its libvirt still answered
        assert f"{h}.libvirt.version=" in env and f"{h}.qemu.version=" in env, env

    for h in labs.hosts:
        if h.daemon == "private" and not daemon.running(h):
            continue                  # stopped at the end of the run, so it keeps nothing
        left = _domains(h.libvirt_uri) - before[h.name]
        assert not left, f"lab host {h.name} kept domains of the run: {left}"
    b = labs.host("local-b")
    assert not daemon.running(b) or b.name in was_running, \
        "the run stopped the private libvirtd it started, once idle"


def test_every_host_placement_puts_each_test_on_each_host(tmp_path, pytester_like, pair):
    """--placement every (or `placement = "every"` in the lab config): every test once per
    lab host, so the certification has a verdict for every claim on every host; a host that
    lacks what a test needs skips it, naming itself and the capability."""
    r = pytester_like("suites", "--lab", str(PAIR), "--placement", "every", "--collect-only", "-q", timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    ids = [ln for ln in r.stdout.splitlines() if "::" in ln]
    on_a = {i[:-len("[local]")] for i in ids if i.endswith("[local]")}
    on_b = {i[:-len("[local-b]")] for i in ids if i.endswith("[local-b]")}
    assert len(on_a) > 20 and on_a == on_b, f"not on both hosts: {sorted(on_a ^ on_b)[:5]}"
    r = pytester_like("suites", "--lab", str(PAIR), "--placement", "every", "-k",
                      "test_read_and_write_error_policies_are_separate and local-b", "-rs",
                      "--junitxml", str(tmp_path / "j.xml"), timeout=300, env_extra={"ACC_REPORTS_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-3000:]
    assert "lab host local-b lacks fault-backend" in r.stdout, r.stdout[-2000:]
    cert = json.loads((tmp_path / "certification.json").read_text())
    assert set(cert["matrix"]["IOS-8"]) == {"local", "local-b"}
