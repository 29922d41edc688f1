"""The sweeper removes a dead run's leftovers and never anything else
(libvirt's test:///default driver, a real lock directory)."""
import libvirt
import pytest

from tests.fakehost import FakeHost

from lab import xml as X
from lab.arch import profile
from lab.hostexec import LabPath, LocalHost
from lab.hostleases import LeaseHolder, run_lease
from lab.leases import try_lock
from lab.sweep import sweep


def live_run(host_work_dir, run_id, who="controller B"):
    """A live run as any controller makes one: its lease held on the lab host (here: this
    machine) by a holder process."""
    holder = LeaseHolder(LocalHost(), host_work_dir / "leases", f"{who} run {run_id}")
    assert holder.take(run_lease(host_work_dir, run_id)) is not None
    return holder


@pytest.fixture
def conn():
    c = libvirt.open("test:///default")
    yield c
    c.close()


def define(conn, name, run_id=None, files=(), work=None, hostdir=None):
    meta = X.harness_metadata(run_id, 1, "t", files, work_dir=work, hostdir=hostdir if hostdir is not None else work) \
        if run_id else None
    el = X.domain(name, virt_type="test", arch=profile("x86_64"), metadata=meta)
    el.find("os/type").attrib.pop("machine")
    dom = conn.defineXML(X.to_string(el))
    dom.create()
    return dom


def names(conn):
    return {d.name() for d in conn.listAllDomains()}


def test_sweeps_dead_runs_only(conn, tmp_path):
    work = tmp_path / "work"
    leftover_dir = work / "runs" / "dead1" / "acc-dead1-t-1"
    leftover_dir.mkdir(parents=True)
    (leftover_dir / "root.qcow2").write_text("overlay")
    live_lock = live_run(work, "live1")
    (work / "runs" / "live1").mkdir()
    other = tmp_path / "another-work-dir"        # another controller's (or lab config's) work dir
    other_live = live_run(other, "live2", "controller C")
    outside = tmp_path / "not-ours.img"
    outside.write_text("keep")

    define(conn, "acc-dead1-t-1", "dead1", [leftover_dir, outside], work=work)
    define(conn, "acc-live1-t-1", "live1", work=work)
    define(conn, "acc-otherdir-t-1", "live2", work=other)      # a live run of another controller
    define(conn, "acc-dead3-t-1", "dead3", work=other)         # a dead one: swept, whoever made it
    define(conn, "acc-old-t-1", "dead4", work=tmp_path / "old", hostdir="")   # an older harness's tag, elsewhere
    define(conn, "acc-lookalike", None)          # our prefix, no harness tag
    define(conn, "someone-elses-vm", None)
    try:
        undone = sweep(conn, work, log=lambda m: None, host=LocalHost())
        assert "acc-dead1-t-1" not in names(conn) and "acc-dead3-t-1" not in names(conn)
        assert {"acc-live1-t-1", "acc-otherdir-t-1", "acc-old-t-1", "acc-lookalike", "someone-elses-vm",
                "test"} <= names(conn)
        assert not leftover_dir.exists() and not (work / "runs" / "dead1").exists()
        assert outside.exists(), "a file outside the work dir is never removed"
        assert (work / "runs" / "live1").exists()
        assert any("destroyed leftover domain acc-dead1-t-1" in u for u in undone)
        assert sweep(conn, work, log=lambda m: None, host=LocalHost()) == [], "a second sweep finds nothing"
        assert not (work / "leases" / "run-dead1.lock").exists(), "the sweeper removes the dead run's lease"
    finally:
        live_lock.close()
        other_live.close()
        for n in ("acc-live1-t-1", "acc-otherdir-t-1", "acc-old-t-1", "acc-lookalike", "someone-elses-vm"):
            d = conn.lookupByName(n)
            d.destroy()
            d.undefine()


def test_dm_leftovers_only_of_dead_runs_of_this_work_dir(tmp_path):
    from lab.sweep import dm_leftovers
    runs = tmp_path / "runs"
    (runs / "dead1").mkdir(parents=True)
    alive = {"live1"}
    sysdev = tmp_path / "sys/dev/block"
    for majmin, back in (("7:1", runs / "dead1/faults/x.img"), ("7:2", runs / "live1/faults/y.img"),
                         ("7:3", tmp_path / "elsewhere/z.img")):
        (sysdev / majmin / "loop").mkdir(parents=True)
        (sysdev / majmin / "loop/backing_file").write_text(f"{back}\n")
    tables = {"acc-dead1-aa-err": "0 100 error", "acc-dead1-aa": "0 100 linear 7:1 0",
              "acc-dead1-dd": "0 100 delay 7:1 0 0 253:0 0 0", "acc-live1-bb": "0 100 linear 7:2 0",
              "acc-live1-bb-err": "0 100 error", "acc-dead2-cc": "0 100 linear 7:3 0", "acc-dead2-ee": "0 100 error",
              "vg0-root": "0 100 linear 8:1 0"}

    def answer(argv, input):
        if argv[1] == "ls":
            return 0, "".join(f"{n}\t(253:{i})\n" for i, n in enumerate(tables))
        return 0, tables[argv[2]] + "\n"

    class RecordedHost(FakeHost):       # the lab host's /proc/misc and /sys/dev/block, recorded
        def _local(self, path):
            path = str(path)
            return str(sysdev) + path[len("/sys/dev/block"):] if path.startswith("/sys/dev/block") else path

        def read_text(self, path):
            return " 58 rfkill\n236 device-mapper\n" if str(path) == "/proc/misc" else super().read_text(self._local(path))

        def exists(self, path):
            return super().exists(self._local(path))

    # dead1's devices whatever their table (killed mid-fault, or its all-error device), the
    # error device last; not a live run's, not one of a run whose directory is elsewhere
    assert dm_leftovers(RecordedHost(answer), LabPath(runs), lambda rid: rid not in alive) == \
        [("acc-dead1-aa", "dead1"), ("acc-dead1-dd", "dead1"), ("acc-dead1-aa-err", "dead1")]


def test_a_dead_runs_orphaned_nbdkit_is_killed_and_a_live_runs_is_left(conn, tmp_path):
    """nbdkit runs detached from the harness on the lab host: a dead run's nbdkit is
    ended by the sweeper."""
    import shutil
    import subprocess
    import time
    if not shutil.which("nbdkit"):
        pytest.skip("nbdkit is not installed")
    work = tmp_path
    runs = work / "runs"
    live = live_run(work, "live1")
    procs = {}
    for rid in ("dead1", "live1"):
        (runs / rid).mkdir(parents=True)
        procs[rid] = subprocess.Popen(["nbdkit", "--foreground", "--unix", str(runs / rid / "nbd.sock"), "memory", "1M"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not all((runs / rid / "nbd.sock").exists() for rid in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        undone = sweep(conn, work, log=lambda m: None, host=LocalHost())
        assert procs["dead1"].wait(10) is not None
        assert procs["live1"].poll() is None, "a live run's nbdkit is never touched"
        assert any(f"killed leftover nbdkit {procs['dead1'].pid} of dead run dead1" in u for u in undone), undone
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
        live.close()


def test_a_dead_runs_network_namespaces_are_removed_and_a_live_runs_kept(conn, tmp_path):
    work = tmp_path / "work"
    (work / "runs" / "dead1").mkdir(parents=True)
    (work / "runs" / "live1").mkdir()
    live = live_run(work, "live1")
    listing = "acc-dead1-vfa\nacc-live1-vfa\nacc-elsewhere-vfa\nblue\n"

    def answer(argv, inp):
        if argv[:3] == ["ip", "netns", "list"]:
            return 0, listing
        return (0, "[]") if "-j" in argv else (0, "")

    class Host(FakeHost):
        def read_text(self, path):
            return "" if str(path) == "/proc/misc" else super().read_text(path)

    host = Host(answer, which=False)
    try:
        undone = sweep(conn, work, log=lambda m: None, host=host, host_work_dir=work)
    finally:
        live.close()
    deleted = [argv[3] for argv, _ in host.calls if argv[:3] == ["ip", "netns", "del"]]
    assert deleted == ["acc-dead1-vfa"], f"only the dead run's namespace of this work dir: {deleted}"
    assert any("network namespace acc-dead1-vfa of dead run dead1" in u for u in undone), undone
