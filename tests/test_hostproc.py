"""Process probes on the lab host, from recorded /proc output."""
from lab.hostproc import AIO_RING_MAGIC, parse_aio_tails

# od -An -tu4 -N20 of two rings' headers (id nr head tail magic), and one mapping that is no ring
OD = f"""0 1024 17 17 {AIO_RING_MAGIC}
 1 128 0 5 {AIO_RING_MAGIC}
 0 0 0 0 0
"""


def test_each_aio_rings_completion_counter_is_read_from_its_header():
    assert parse_aio_tails(OD) == [17, 5]


def test_a_process_without_aio_rings_has_none():
    assert parse_aio_tails("") == []


# _STATES's output from a lab host: libvirtd busy (R), a QEMU of the run spinning, one gone
STATES_TEXT = "812\tR\t1000\n4242\tS\t500\n--\n812\tR\t1098\n4242\tR\t600\n-- 100\n"


def test_process_states_and_cpu_are_read_from_two_samples():
    from lab.hostproc import parse_states
    st = parse_states(STATES_TEXT, {812: "libvirtd", 4242: "QEMU of acc-x-ios-1", 77: "QEMU of acc-x-ios-2"}, 1.0)
    by = {s.pid: s for s in st}
    assert (by[812].state, round(by[812].cpu, 2)) == ("R", 0.98)
    assert (by[4242].state, round(by[4242].cpu, 2)) == ("R", 1.0)
    assert by[77].state == "" and "gone" in by[77].describe()
    assert "state R (running), 98% of a CPU" in by[812].describe()


def test_a_daemon_that_runs_and_answers_nobody_is_a_finding_a_stopped_one_the_labs():
    from lab.errors import LabError, kind
    from lab.hostproc import ProcState
    from lab.session import LibvirtdStoppedAnswering, judge_unanswered
    qemu = ProcState(4242, "QEMU of acc-x-ios-1", "R", 1.0)
    busy = judge_unanswered([ProcState(812, "libvirtd", "R", 0.98), qemu], set(), "lab1", "keepalive timeout")
    assert isinstance(busy, LibvirtdStoppedAnswering) and kind(busy) == "product defect"
    assert "QEMU of acc-x-ios-1 (pid 4242) state R" in str(busy) and "lab1" in str(busy)
    stopped = judge_unanswered([ProcState(812, "libvirtd", "T", 0.0), qemu], set(), "lab1", "keepalive timeout")
    assert isinstance(stopped, LabError) and "stopped or gone" in str(stopped)
    gone = judge_unanswered([qemu], set(), "lab1", "keepalive timeout")
    assert isinstance(gone, LabError)
    # two daemons on one host (a private one beside the system's): the one the pid file names is judged
    two = [ProcState(812, "libvirtd", "T", 0.0), ProcState(900, "libvirtd", "S", 0.01), qemu]
    assert isinstance(judge_unanswered(two, {812}, "lab1", "m"), LabError)
    assert isinstance(judge_unanswered(two, {900}, "lab1", "m"), LibvirtdStoppedAnswering)


def test_a_teardown_asks_a_silent_daemon_long_once_then_briefly():
    """Teardown asks per VM whether libvirt's daemon answers again: after one long ask found
    no answer, the next asks within a minute take 2 s at most, not 20 s each."""
    import time

    from lab.session import LabUnreachable, Session
    s = Session("test:///default")
    try:
        s.closed_reason, s.unanswered = "keepalive timeout", True

        def silent(timeout_s):
            raise LabUnreachable("no answer")
        s._open = silent
        t0 = time.monotonic()
        assert s.answers(3) is False
        first = time.monotonic() - t0
        t1 = time.monotonic()
        assert s.answers(20) is False
        second = time.monotonic() - t1
        assert first >= 2.9 and second < 3.0, (first, second)
    finally:
        s.close()


def test_a_qemu_process_is_known_by_its_guest_name():
    from lab.hostproc import qemu_guest
    assert qemu_guest(["qemu-system-x86_64", "-name", "guest=acc-1-ios-2,debug-threads=on", "-S"]) == "acc-1-ios-2"
    assert qemu_guest(["qemu-system-x86_64", "-name", "other"]) is None
    assert qemu_guest(["qemu-system-x86_64", "-name"]) is None and qemu_guest(["sleep", "9"]) is None
