"""Each lab host's timeout factor paces its own work (lab/timeouts.py): two lab hosts in
one process (a fleet run without xdist) keep theirs, whichever run was made last."""
import dataclasses

import pytest

from lab import config, timeouts
from lab.run import Lab
from lab.timeouts import Deadline


def test_a_paced_block_scales_its_deadlines_and_their_subs_keep_the_pace():
    base = timeouts.factor()
    with timeouts.paced(4):
        d = Deadline(10, "x")
        with timeouts.paced(1.5):
            assert Deadline(10, "y").budget == pytest.approx(15)
        assert Deadline(10, "z").budget == pytest.approx(40), "leaving an inner block restores the outer pace"
    assert d.budget == pytest.approx(40)
    assert d.sub(2, "part").budget == pytest.approx(8), "a sub-deadline keeps its parent's pace outside the block"
    assert timeouts.factor() == base and Deadline(10, "w").budget == pytest.approx(10 * base)
    with pytest.raises(ValueError, match="must be > 0"):
        with timeouts.paced(0):
            pass


@pytest.mark.lab
def test_two_runs_in_one_process_each_keep_their_factor():
    cfg = config.load()
    slow = Lab(dataclasses.replace(cfg, timeout_factor=4.0), log=lambda m: None)
    fast = Lab(dataclasses.replace(cfg, timeout_factor=1.0), log=lambda m: None)     # made last
    try:
        with slow.paced():
            assert Deadline(30, "a wait on the slow host").budget == pytest.approx(120)
        with fast.paced():
            assert Deadline(30, "a wait on the fast host").budget == pytest.approx(30)
        assert slow.boot_deadline("boot").budget == pytest.approx(4 * fast.boot_deadline("boot").budget)
    finally:
        fast.close()
        slow.close()
