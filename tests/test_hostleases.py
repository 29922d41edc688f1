"""Leases on the lab host (lab/hostleases.py), with real holder processes on this machine
as the lab host: a run is alive exactly while its controller lives, whatever kills it."""
import os
import signal
import socket
import subprocess
import sys
import textwrap

import libvirt
import pytest

from lab.hostexec import LabPath, LocalHost
from lab.hostleases import DeviceBusy, LeaseHolder, lease_states, run_lease
from lab.sweep import sweep
from lab.timeouts import Deadline, poll

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def controller(work, run_id):
    """Another controller's process holding a run lease on the lab host, as a Run does."""
    code = textwrap.dedent(f"""
        import sys, time
        from lab.hostexec import LocalHost
        from lab.hostleases import LeaseHolder, controller_identity, run_lease
        h = LeaseHolder(LocalHost(), {str(work / 'leases')!r}, controller_identity("/elsewhere", {run_id!r}))
        assert h.take(run_lease({str(work)!r}, {run_id!r})) is not None
        print("holding", flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "holding"
    return p


def test_a_run_lease_is_held_while_its_controller_lives_and_freed_by_sigkill(tmp_path):
    p = controller(tmp_path, "r1")
    try:
        st = lease_states(LocalHost(), tmp_path / "leases")["run-r1.lock"]
        assert st.held and "controller " in st.owner and "run r1" in st.owner and f"pid {p.pid}" in st.owner
    finally:
        p.kill()
        p.wait()
    poll(lambda: not lease_states(LocalHost(), tmp_path / "leases")["run-r1.lock"].held,
         Deadline(10, "the killed controller's lease to be free", scaled=False), interval=0.1)


def test_a_killed_controllers_run_is_swept_by_another_and_a_live_ones_is_not(tmp_path):
    work = tmp_path / "hostwork"
    for rid in ("dead1", "live1"):
        (work / "runs" / rid).mkdir(parents=True)
        (work / "runs" / rid / "overlay.qcow2").write_text("x")
    dead, live = controller(work, "dead1"), controller(work, "live1")
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    conn = libvirt.open("test:///default")
    try:
        logged = []
        undone = sweep(conn, tmp_path / "controller-a", log=logged.append, host=LocalHost(),
                       host_work_dir=LabPath(str(work)))
    finally:
        conn.close()
        live.kill()
        live.wait()
    assert not (work / "runs" / "dead1").exists() and (work / "runs" / "live1" / "overlay.qcow2").exists()
    line = next(u for u in logged if "dead1" in u and "run directory" in u)
    assert f"pid {dead.pid}" in line and "work_dir /elsewhere" in line, line
    assert not any("live1" in u for u in undone), undone
    assert not (work / "leases" / "run-dead1.lock").exists()


def test_a_sweeper_never_takes_its_own_run_for_dead(tmp_path):
    h = LeaseHolder(LocalHost(), tmp_path / "leases", "me")
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    try:
        assert h.take(run_lease(tmp_path, "mine")) is not None
        conn = libvirt.open("test:///default")
        try:
            assert sweep(conn, tmp_path, log=lambda m: None, host=LocalHost(), leases=h) == []
        finally:
            conn.close()
        assert (tmp_path / "runs" / "mine").exists() and h.holds(run_lease(tmp_path, "mine"))
    finally:
        h.close()


def test_ports_are_leased_on_the_lab_host_across_controllers_and_a_listening_one_is_skipped(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        base = busy.getsockname()[1]
        a = LeaseHolder(LocalHost(), tmp_path / "leases", "controller A")
        b = LeaseHolder(LocalHost(), tmp_path / "leases", "controller B")
        try:
            pa, pb = a.port(base, span=50), b.port(base, span=50)
            assert base not in (pa.value, pb.value), "a port something listens on is never handed out"
            assert pa.value != pb.value
        finally:
            a.close()
            b.close()


def test_a_busy_device_names_its_holder_and_is_free_once_it_closes(tmp_path):
    a = LeaseHolder(LocalHost(), tmp_path / "leases", "controller A run 1")
    b = LeaseHolder(LocalHost(), tmp_path / "leases", "controller B run 2")
    try:
        a.device("usb", "0781:5567@1-3")
        with pytest.raises(DeviceBusy, match=r"usb 0781:5567@1-3 on lab host localhost \(waited 0s\) is held by "
                                             r"controller A run 1; fix: run again"):
            b.device("usb", "0781:5567@1-3", Deadline(0.3, "free", scaled=False))
        a.close()
        assert b.device("usb", "0781:5567@1-3").value == "0781:5567@1-3"
    finally:
        a.close()
        b.close()


def test_a_removed_lease_file_goes_with_its_lease_and_the_next_taker_holds_it_alone(tmp_path):
    """The sweeper removes a dead run's lease file while it holds it (a taker checks that the
    file it locked is still the one at the path, so a removed file is never held twice)."""
    a = LeaseHolder(LocalHost(), tmp_path / "leases", "A")
    b = LeaseHolder(LocalHost(), tmp_path / "leases", "B")
    try:
        assert a.take("x.lock") is not None
        a.release(tmp_path / "leases" / "x.lock", remove=True)
        assert not (tmp_path / "leases" / "x.lock").exists()
        assert b.take("x.lock") is not None and a.take("x.lock") is None
        assert "B" in a.last_busy
    finally:
        a.close()
        b.close()
