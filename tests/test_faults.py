"""Fault backends: dm tables from the real sector count, the state machine,
and healing on every exit path."""
import subprocess

import pytest

from lab import faults


class FakeRunner:
    def __init__(self, sectors="131072"):
        self.calls, self.sectors = [], sectors

    def __call__(self, argv, input=None, **kw):
        self.calls.append((argv, input))
        out = self.sectors if argv[0] == "blockdev" else ""
        return subprocess.CompletedProcess(argv, 0, out, "")


def test_dm_tables_cover_the_whole_device():
    t = faults.dm_tables(131072, "/dev/loop3")
    assert t == {"linear": "0 131072 linear /dev/loop3 0", "error": "0 131072 error"}
    with pytest.raises(ValueError):
        faults.dm_tables(0, "/dev/loop3")


def test_dm_backend_swaps_tables_and_always_heals(tmp_path, monkeypatch):
    monkeypatch.setattr(faults.loopdev, "attach", lambda p, **k: "/dev/loop9")
    monkeypatch.setattr(faults.loopdev, "detach", lambda d, **k: None)
    run = FakeRunner()
    b = faults.DmErrorBackend(tmp_path, "r1", runner=run)
    with pytest.raises(RuntimeError, match="boom"):
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


def test_dm_backend_refuses_one_direction_faults(tmp_path):
    b = faults.DmErrorBackend(tmp_path, "r1", runner=FakeRunner())
    b.tables = faults.dm_tables(8, "/dev/loop0")
    with pytest.raises(faults.FaultError, match="nbdkit"):
        b.fail("read")


def test_nbdkit_backend_fails_and_heals_for_real(tmp_path):
    """nbdkit itself (installed by the lab set-up): the error files switch its errors."""
    with faults.NbdkitBackend(tmp_path, size_mib=1) as b:
        assert b.socket.exists() and b.healthy()
        b.fail("read")
        assert b.files["read"].exists() and not b.files["write"].exists()
        b.heal()
        assert not any(f.exists() for f in b.files.values())
        b.fail("all")
    assert b.state == "removed" and not b.socket.exists()
    assert not any(f.exists() for f in b.files.values()), "leaving the block healed the fault"
    assert b.proc.poll() is not None, "nbdkit was stopped"


def test_unknown_kind_and_backend():
    with pytest.raises(faults.FaultError, match="no fault backend"):
        faults.make_backend("none", None, "r")
    b = faults.NbdkitBackend.__new__(faults.NbdkitBackend)
    with pytest.raises(ValueError):
        b._check_kind("sideways")


def test_device_mapper_is_asked_of_the_kernel(tmp_path):
    from lab.host import kernel_has_device_mapper
    misc = tmp_path / "misc"
    misc.write_text(" 58 rfkill\n232 kvm\n")
    assert not kernel_has_device_mapper(misc), "a stray /dev/mapper/control must not make a dm-error host"
    misc.write_text(" 58 rfkill\n236 device-mapper\n")
    assert kernel_has_device_mapper(misc)
