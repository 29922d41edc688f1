"""One command result for host, guest and virsh commands, and one SSH exec loop.

`Result` has pytest-testinfra's shape (`rc`, `stdout`, `stderr`, `ok`, `check()`);
`check()` raises the error kind of where the command ran: a lab host's failure is a
lab problem (`HostCommandFailed`), a guest's or virsh's is the product's
(`AssertionError` kinds).  `ssh_exec` is the one paramiko loop behind a lab host's and
a guest's `run`."""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import paramiko


@dataclass
class Result:
    where: str                  # "lab host X", "guest", "virsh": who ran it, for the message
    command: str                # the command as run (shell words)
    rc: int
    stdout: str
    stderr: str
    error: type = field(default=AssertionError, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self) -> "Result":
        if self.rc != 0:
            tail = (self.stderr.strip() or self.stdout.strip())[-600:]
            raise self.error(f"{self.where} command {self.command!r} exited {self.rc}: {tail}")
        return self


class ExecTimeout(Exception):
    """The command did not finish in time; `.out` holds its output so far."""

    def __init__(self, out: bytes):
        super().__init__("command did not finish in time")
        self.out = out


# after the exit status, how long output may still come before the channel's EOF: OpenSSH
# sends "exit-status" when the command's process ends, which can be before it has read the
# last of the command's output from the pipe; a command that leaves a background child
# holding its stdout never gets an EOF, so this wait is bounded.
EOF_AFTER_EXIT = 5.0


def ssh_exec(transport: paramiko.Transport, command: str, stdin: bytes | None = None, timeout: float = 120.0,
             open_timeout: float = 10.0) -> tuple[int, bytes, bytes]:
    """Run `command` in a new session channel: (exit status, stdout, stderr)."""
    end = time.monotonic() + timeout
    chan = _exec_channel(transport, command, end, open_timeout)
    try:
        if stdin is not None:
            chan.sendall(stdin)
        chan.shutdown_write()
        out, err = _collect(chan, end)
        return chan.recv_exit_status(), out, err
    finally:
        chan.close()


def _exec_channel(transport: paramiko.Transport, command: str, end: float, open_timeout: float):
    """A session channel with `command` started in it.  A server that refuses to start
    the command (it answered the exec request with a failure, seen once from dropbear with
    another channel open) ran nothing, so asking once more is safe; a second refusal is
    the error."""
    try:
        return _start(transport, command, end, open_timeout)
    except paramiko.SSHException:
        if not transport.is_active():
            raise
    return _start(transport, command, end, open_timeout)


def _start(transport: paramiko.Transport, command: str, end: float, open_timeout: float):
    chan = transport.open_session(timeout=max(0.1, min(open_timeout, end - time.monotonic())))
    chan.settimeout(0.5)
    # paramiko waits for the answer to the exec request without a time limit: a server
    # that stops answering between the channel's opening and the request (a hung or
    # stopped sshd) would hold this thread forever.  Closing the channel ends that wait.
    gave_up = threading.Event()

    def give_up():
        gave_up.set()
        try:
            chan.close()
        except (EOFError, OSError, paramiko.SSHException):
            pass        # the connection is gone already: the exec request waits no more either

    unanswered = threading.Timer(max(0.1, min(open_timeout, end - time.monotonic())), give_up)
    unanswered.daemon = True
    unanswered.start()
    try:
        chan.exec_command(command)
        return chan
    except paramiko.SSHException:
        chan.close()
        if gave_up.is_set():
            raise ExecTimeout(b"") from None     # the server never answered the exec request
        raise
    finally:
        unanswered.cancel()


def _collect(chan: paramiko.Channel, end: float) -> tuple[bytes, bytes]:
    """Read stdout and stderr until the server's EOF (or its close) after the exit status."""
    out, err = bytearray(), bytearray()
    exited_at = None
    while True:
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        if chan.exit_status_ready():
            exited_at = exited_at or time.monotonic()
            drained = not chan.recv_ready() and not chan.recv_stderr_ready()
            if drained and (chan.eof_received or chan.closed
                            or time.monotonic() > min(end, exited_at + EOF_AFTER_EXIT)):
                return bytes(out), bytes(err)
        if time.monotonic() > end:
            raise ExecTimeout(bytes(out))
        try:
            chunk = chan.recv(65536)     # waits up to the channel's 0.5 s for stdout or EOF
        except socket.timeout:
            continue
        out += chunk
        if not chunk:                    # EOF before the exit status: wait for it, not spin
            chan.status_event.wait(0.5)
