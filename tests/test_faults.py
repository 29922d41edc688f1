"""Fault backends: dm tables from the real sector count, the state machine,
and healing on every exit path."""
import os

import pytest

from lab import faults
from lab.hostexec import LabPath, LocalHost
from tests.fakehost import FakeHost


def dm_host(sectors="131072"):
    return FakeHost(lambda argv, input: (0, sectors if argv[0] == "blockdev" else ""))


def test_dm_tables_cover_the_whole_device():
    t = faults.dm_tables(131072, "/dev/loop3")
    assert t == {"linear": "0 131072 linear /dev/loop3 0", "all": "0 131072 error"}
    with pytest.raises(ValueError):
        faults.dm_tables(0, "/dev/loop3")


def test_dm_delay_tables_fail_one_direction_and_slow_writes():
    """dm-delay sends reads and writes to different devices: one of them the run's all-error
    device fails that direction alone; its write delay slows every write, healthy or not."""
    t = faults.dm_tables(8, "/dev/loop3", "/dev/mapper/e")
    assert t["linear"] == "0 8 linear /dev/loop3 0" and t["all"] == "0 8 error"
    assert t["read"] == "0 8 delay /dev/mapper/e 0 0 /dev/loop3 0 0"
    assert t["write"] == "0 8 delay /dev/loop3 0 0 /dev/mapper/e 0 0"
    slow = faults.dm_tables(8, "/dev/loop3", "/dev/mapper/e", write_delay_ms=600)
    assert slow["linear"] == "0 8 delay /dev/loop3 0 0 /dev/loop3 0 600"
    assert slow["all"] == "0 8 delay /dev/mapper/e 0 0 /dev/mapper/e 0 600"
    assert slow["write"] == "0 8 delay /dev/loop3 0 0 /dev/mapper/e 0 600"
    with pytest.raises(ValueError):
        faults.dm_tables(8, "/dev/loop3", write_delay_ms=600)


def test_dm_backend_with_a_write_delay_makes_and_removes_its_error_device(tmp_path, monkeypatch):
    monkeypatch.setattr(faults.loopdev, "attach", lambda host, p: "/dev/loop9")
    monkeypatch.setattr(faults.loopdev, "detach", lambda host, d: None)
    run = dm_host("8")
    with faults.DmErrorBackend(run, tmp_path, "r1", write_delay_ms=600) as b:
        b.fail("write")
    creates = [(argv[2], inp) for argv, inp in run.calls if argv[:2] == ["dmsetup", "create"]]
    slow = "0 8 delay /dev/loop9 0 0 /dev/loop9 0 600\n"
    assert creates == [(b.err_name, "0 8 error\n"), (b.dm_name, slow)]
    loads = [inp for argv, inp in run.calls if argv[:2] == ["dmsetup", "load"]]
    assert loads == [f"0 8 delay /dev/loop9 0 0 /dev/mapper/{b.err_name} 0 600\n", slow]
    removes = [argv[2] for argv, _ in run.calls if argv[:2] == ["dmsetup", "remove"]]
    assert removes == [b.dm_name, b.err_name], "the device goes first: it maps onto the error device"
    assert b.err_name.startswith("acc-r1-"), "the sweeper knows it by the run's prefix"


def test_dm_backend_swaps_tables_and_always_heals(tmp_path, monkeypatch):
    monkeypatch.setattr(faults.loopdev, "attach", lambda host, p: "/dev/loop9")
    monkeypatch.setattr(faults.loopdev, "detach", lambda host, d: None)
    run = dm_host()
    b = faults.DmErrorBackend(run, tmp_path, "r1")
    with pytest.raises(RuntimeError, match="boom"):       # the test's own error, not the backend's
        with b:
            assert b.healthy()
            b.fail()
            assert b.state == "failing"
            raise RuntimeError("boom")
    loads = [inp for argv, inp in run.calls if argv[:2] == ["dmsetup", "load"]]
    assert loads == ["0 131072 error\n", "0 131072 linear /dev/loop9 0\n"], "failed, then healed on the way out"
    assert any(argv[:2] == ["dmsetup", "remove"] for argv, _ in run.calls)
    assert b.state == "removed" and not b.backing.exists()
    # every load happens between a suspend and a resume
    seq = [argv[1] for argv, _ in run.calls if argv[0] == "dmsetup" and argv[1] in ("suspend", "load", "resume")]
    assert seq == ["suspend", "load", "resume"] * 2


def test_dm_backend_without_its_error_device_refuses_one_direction_faults(tmp_path):
    b = faults.DmErrorBackend(dm_host(), tmp_path, "r1")
    b.tables = faults.dm_tables(8, "/dev/loop0")
    with pytest.raises(faults.FaultError, match="write delay"):
        b.fail("read")


def test_nbdkit_backend_fails_and_heals_for_real(tmp_path):
    """nbdkit itself (installed by the lab set-up): the error files switch its errors."""
    exists = os.path.exists
    with faults.NbdkitBackend(LocalHost(), LabPath(tmp_path), size_mib=1) as b:
        assert exists(b.socket) and b.healthy()
        b.fail("read")
        assert exists(b.files["read"]) and not exists(b.files["write"])
        b.heal()
        assert not any(exists(f) for f in b.files.values())
        b.fail("all")
    assert b.state == "removed" and not exists(b.socket)
    assert not any(exists(f) for f in b.files.values()), "leaving the block healed the fault"
    assert not os.path.exists(f"/proc/{b.pid}"), "nbdkit was stopped"


def test_unknown_kind_and_backend():
    with pytest.raises(faults.FaultError, match="no fault backend"):
        faults.make_backend("none", LocalHost(), None, "r")
    b = faults.NbdkitBackend.__new__(faults.NbdkitBackend)
    with pytest.raises(ValueError):
        b._check_kind("sideways")


def test_device_mapper_is_asked_of_the_kernel(tmp_path):
    from lab.hostfacts import kernel_has_device_mapper
    misc = tmp_path / "misc"
    misc.write_text(" 58 rfkill\n232 kvm\n")
    assert not kernel_has_device_mapper(misc), "a stray /dev/mapper/control must not make a dm-error host"
    misc.write_text(" 58 rfkill\n236 device-mapper\n")
    assert kernel_has_device_mapper(misc)


def test_nbdkit_that_never_serves_is_stopped(tmp_path, monkeypatch):
    """A set-up that fails after nbdkit started (here: a deadline too short for it to
    serve) leaves no nbdkit behind."""
    import shutil
    if not shutil.which("nbdkit"):
        pytest.skip("nbdkit is not installed")
    b = faults.NbdkitBackend(LocalHost(), LabPath(tmp_path), size_mib=1)
    monkeypatch.setattr(faults, "Deadline", lambda *a, **k: faults.Deadline(0.01, "nbdkit (cut short)"))
    with pytest.raises(Exception):
        b.setup()
    assert b.pid and not os.path.exists(f"/proc/{b.pid}"), "a failed set-up left nbdkit running"
