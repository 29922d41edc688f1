"""The run is made in stages and undone by them: a stage that fails undoes exactly the
stages before it (lab/undo.py, lab/run.py)."""
import pytest

from lab import config
from lab.errors import LabError
from lab.hostexec import LocalHost
from lab.hostleases import lease_states
from lab.run import Lab
from lab.undo import UndoStack


def test_undo_stack_unwinds_in_reverse_and_past_a_failure():
    done = []
    st = UndoStack()
    st.push("first", lambda: done.append(1))
    st.push(None, lambda: done.append(2))            # silent: only a failure is reported

    def broken():
        raise OSError("device busy")
    st.push("broken", broken)
    st.push("last", lambda: done.append(4))
    undone = st.unwind()
    assert done == [4, 2, 1], "every undo ran, the newest first, past the failing one"
    assert undone == ["last", "FAILED to undo (broken): device busy", "first"]
    assert st.unwind() == [] and len(st) == 0, "an unwound stack is empty"


def test_undo_stack_runs_one_undo_now_and_forgets_it():
    done = []
    st = UndoStack()
    a, b = (lambda: done.append("a")), (lambda: done.append("b"))
    st.push("a", a)
    st.push("b", b)
    st.run_now(a)
    assert done == ["a"] and st.unwind() == ["b"] and done == ["a", "b"]


class PrepareFailed(LabError):
    pass


@pytest.mark.lab
def test_a_run_whose_last_stage_fails_leaves_nothing(monkeypatch):
    """The image or QEMU step fails (here: made to): the lock, the run's directories here
    and on the lab host, its lease and its connections are gone before the error is seen."""
    cfg = config.load()
    seen = {}

    def fail(self):
        seen.update(run_id=self.run_id, dir=self.dir, hdir=self.hdir, host=self.host)
        assert self.dir.is_dir() and self.host.exists(self.hdir), "the earlier stages did their part"
        raise PrepareFailed("the image could not be built")
    monkeypatch.setattr(Lab, "_prepare", fail)
    with pytest.raises(PrepareFailed):
        Lab(cfg, log=lambda m: None)
    assert not seen["dir"].exists(), "the run's directory on this machine was removed"
    assert not (cfg.work_dir / "runs" / f"{seen['run_id']}.lock").exists(), "the run lock was released"
    with LocalHost() as h:
        assert not h.exists(seen["hdir"]), "the run's directory on the lab host was removed"
        states = lease_states(h, cfg.host_work_dir / "leases")
    held = [n for n, s in states.items() if seen["run_id"] in n and s.held]
    assert not held, f"the run's lease is still held: {held}"
