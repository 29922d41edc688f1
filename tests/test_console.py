"""Console expect logic over a local byte stream (pexpect over any program)."""
import time

import pytest

from lab.guest.console import Console, ConsoleError, GuestPanic
from lab.guest.ssh import CommandFailed
from lab.timeouts import Deadline, WaitTimeout


def shell(tmp_path, script=None):
    argv = ["sh", "-c", script] if script else ["sh", "-i"]
    return Console(argv, tmp_path / "t.log", "test console")


def test_marker_protocol_recovers_output_and_exit_code(tmp_path):
    with shell(tmp_path) as con:
        con.sync_shell(Deadline(10, "shell"))
        r = con.run("echo hello; echo world >&2; exit_code() { return 3; }; exit_code",
                    Deadline(10, "command"), check=False)
        assert r.rc == 3
        assert "hello" in r.stdout and "world" in r.stdout
        assert "ACC_B" not in r.stdout and "printf" not in r.stdout
        with pytest.raises(CommandFailed, match="exited 3"):
            con.run("exit_code", Deadline(10, "command"))
    assert b"hello" in (tmp_path / "t.log").read_bytes(), "the transcript records the session"


def test_interleaved_noise_does_not_break_the_exit_code(tmp_path):
    with shell(tmp_path) as con:
        con.sync_shell(Deadline(10, "shell"))
        assert con.run("echo '[ 12.3] kernel: noise'; (exit 7)", Deadline(10, "command"), check=False).rc == 7


def test_panic_fails_fast(tmp_path):
    con = shell(tmp_path, "echo booting; echo 'Kernel panic - not syncing: VFS: Unable to mount root'; sleep 30")
    t = time.monotonic()
    with pytest.raises(GuestPanic, match="Unable to mount root"):
        con.expect("ACC-READY", Deadline(20, "boot"), "the ready marker")
    assert time.monotonic() - t < 5
    con.close()


def test_timeout_names_what_was_awaited(tmp_path):
    con = shell(tmp_path, "echo partial-output; sleep 30")
    with pytest.raises(WaitTimeout, match="the ready marker.*partial-output"):
        con.expect("ACC-READY", Deadline(1, "boot"), "the ready marker")
    con.close()


def test_eof_is_reported(tmp_path):
    con = shell(tmp_path, "echo bye")
    with pytest.raises(ConsoleError, match="closed while waiting for the ready marker"):
        con.expect("ACC-READY", Deadline(5, "boot"), "the ready marker")
    con.close()
