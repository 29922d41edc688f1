"""Several lab hosts in one lab config: loading, placement by capability, host
slots, and the per-host certification report.  (The end-to-end run on two
libvirt endpoints is tests/test_multihost_run.py.)"""
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab import certification as C
from lab import config
from lab.hostleases import HostBusy, LeaseHolder
from lab.schedule import plan
from lab.timeouts import Deadline

HOST = """
[host]
name = "{name}"
libvirt_uri = "qemu:///system"
work_dir = "/tmp/{name}"
[ssh]
port_base = {port}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_the_pair_lab_names_two_hosts_with_their_own_endpoints():
    labs = config.load_set(config.REPO / "labs" / "pair.toml")
    assert labs.names == ["local", "local-b"]
    a, b = labs.hosts
    assert a.libvirt_uri != b.libvirt_uri and a.work_dir != b.work_dir
    assert b.daemon == "private" and str(b.private_daemon_dir / "sock" / "libvirt-sock") in b.libvirt_uri


def test_a_one_host_config_is_a_lab_set_of_one():
    labs = config.load_set(config.DEFAULT_LAB)
    assert labs.names == ["local"] and labs.hosts[0] == config.load()


def test_inline_and_included_hosts(tmp_path):
    write(tmp_path, "a.toml", HOST.format(name="a", port=22200))
    p = write(tmp_path, "lab.toml", '[[hosts]]\ninclude = "a.toml"\n\n[[hosts]]\n[hosts.host]\nname = "b"\n'
              'libvirt_uri = "qemu+ssh://root@b/system"\nwork_dir = "/tmp/b"\n[hosts.shell]\naddress = "b"\n'
              '[hosts.ssh]\nport_base = 22400\n')
    labs = config.load_set(p)
    assert labs.names == ["a", "b"] and labs.host("b").libvirt_uri == "qemu+ssh://root@b/system"
    with pytest.raises(config.LabConfigError, match="no lab host named 'c'.*fix: use one of a, b"):
        labs.host("c")
    with pytest.raises(config.LabConfigError, match="lists several lab hosts"):
        config.load(p)


@pytest.mark.parametrize("text, key, fix", [
    ('[[hosts]]\ninclude = "nope.toml"\n', "hosts[0].include", "include an existing"),
    ('title = "x"\n[[hosts]]\ninclude = "a.toml"\n', "title", "inside a [[hosts]] entry"),
    ('hosts = []\n', "hosts", "one [[hosts]] table per lab host"),
    ('[[hosts]]\ninclude = "a.toml"\nname = "x"\n', "hosts[0]", "not both"),
    ('[[hosts]]\ninclude = "a.toml"\n[[hosts]]\ninclude = "a.toml"\n', "hosts[1].host.name", "its own name"),
    ('[[hosts]]\ninclude = "a.toml"\n[[hosts]]\ninclude = "a2.toml"\n', "hosts[1].ssh.port_base", "100 apart"),
    ('[[hosts]]\n[hosts.host]\nname = "b"\nlibvirt_uri = "nope"\n', "hosts[0].host.libvirt_uri", "qemu+ssh://"),
])
def test_a_bad_multi_host_config_names_key_and_fix(tmp_path, text, key, fix):
    write(tmp_path, "a.toml", HOST.format(name="a", port=22200))
    write(tmp_path, "a2.toml", HOST.format(name="a2", port=22250).replace("qemu:///system", "qemu+ssh://root@a2/system")
          + '[shell]\naddress = "a2"\n')
    p = write(tmp_path, "lab.toml", text)
    with pytest.raises(config.LabConfigError) as e:
        config.load_set(p)
    msg = str(e.value)
    assert f"key '{key}'" in msg and fix in msg and "\n" not in msg, msg


def test_a_private_daemon_must_be_reached_at_its_own_socket(tmp_path):
    p = write(tmp_path, "a.toml", HOST.format(name="a", port=22200).replace('[ssh]', 'daemon = "private"\n[ssh]'))
    with pytest.raises(config.LabConfigError, match=r"key 'host.libvirt_uri'.*socket=/tmp/a/daemon/sock/libvirt-sock"):
        config.load(p)


# ------------------------------------------------------------------ placement

CAPS = ["vfio", "sriov", "fault-backend", "vhost-net", "usb-device"]


@settings(max_examples=300, deadline=None)
@given(hosts=st.lists(st.sets(st.sampled_from(CAPS)), min_size=1, max_size=4),
       tests=st.lists(st.tuples(st.integers(0, 5), st.sets(st.sampled_from(CAPS), max_size=2)), max_size=40))
def test_a_test_never_lands_on_a_host_that_lacks_its_capability_when_another_has_it(hosts, tests):
    names = [f"h{i}" for i in range(len(hosts))]
    has = dict(zip(names, hosts))
    items = [(f"t{i}", f"m{mod}", frozenset(need)) for i, (mod, need) in enumerate(tests)]
    placed = plan(items, names, has)
    assert placed == plan(items, names, has), "the same inputs place the same way (every xdist worker agrees)"
    for tid, _, need in items:
        p = placed[tid]
        if any(need <= has[h] for h in names):
            assert p.runnable and need <= has[p.host], (tid, need, p)
        else:
            assert not p.runnable and set(p.missing) == set(names)
            assert all(set(p.missing[h]) == need - has[h] for h in names)


def test_a_module_stays_on_one_host_and_modules_are_balanced():
    items = [(f"{m}{i}", m, frozenset()) for m in "abcd" for i in range(3)]
    placed = plan(items, ["x", "y"], {"x": set(), "y": set()})
    by_module = {m: {placed[f"{m}{i}"].host for i in range(3)} for m in "abcd"}
    assert all(len(h) == 1 for h in by_module.values()), by_module
    assert sorted(h.pop() for h in by_module.values()) == ["x", "x", "y", "y"]


# ------------------------------------------------------------------ host slots

def test_host_slots_hold_against_more_workers_and_name_the_holders(tmp_path):
    cfg = config.load(write(tmp_path, "a.toml", HOST.format(name="a", port=22200).replace(
        "/tmp/a", str(tmp_path / "w")).replace("[ssh]", "slots = 2\n[ssh]")))
    # one lease holder per worker, as each worker's run has its own on the lab host
    workers = [LeaseHolder(cfg.host(), cfg.host_work_dir / "leases", f"worker gw{i}") for i in range(3)]
    try:
        one = workers[0].slot(cfg.slots, cfg.path.name, Deadline(1))
        two = workers[1].slot(cfg.slots, cfg.path.name, Deadline(1))
        assert {one.value, two.value} == {0, 1}
        with pytest.raises(HostBusy, match=r"every one of the 2 slot\(s\) of lab host a .* is held by "
                                           r"worker gw0; worker gw1; fix: .*raise \[host\] slots in a.toml"):
            workers[2].slot(cfg.slots, cfg.path.name, Deadline(0.5, scaled=False))
        workers[0].close()                     # the worker ends (or dies): its slot is free
        three = workers[2].slot(cfg.slots, cfg.path.name, Deadline(1))
        assert three.value == 0
    finally:
        for w in workers:
            w.close()


# ------------------------------------------------------------------ per-host report

def test_the_report_has_a_claim_by_host_matrix_and_every_claim_per_host():
    outcomes = [C.TestOutcome("s/a.py::t1[local]", ("PCIE-1",), "passed", host="local"),
                C.TestOutcome("s/b.py::t2[local-b]", ("SER-1",), "passed", host="local-b"),
                C.TestOutcome("s/b.py::t3[local-b]", ("NIC-5",), "skipped", "no lab host can run it", host="local-b")]
    r = C.build_multi(outcomes, {"PCIE-1", "SER-1", "NIC-5"}, {"local": {"lab.host": "local"},
                                                                "local-b": {"lab.host": "local-b"}}, "pair.toml")
    assert r["matrix"]["PCIE-1"] == {"local": "passed", "local-b": "not run"}
    assert r["matrix"]["SER-1"] == {"local": "not run", "local-b": "passed"}
    assert r["matrix"]["NIC-5"]["local-b"] == "skipped"
    assert all(len(h["claims"]) == 60 for h in r["hosts"].values())
    md = C.markdown_multi(r)
    assert "| claim | documented behaviour | local | local-b |" in md
    assert "## Lab host local-b" in md and md.count("| PCIE-1 |") == 3
