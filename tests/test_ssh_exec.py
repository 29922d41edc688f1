"""The one SSH exec loop gives up on a server that stops answering: a server that opened
the channel but never answers the exec request (a hung or stopped sshd) is a timeout,
not a thread that waits forever."""
import contextlib
import socket
import threading
import time

import paramiko
import pytest

from lab.result import ExecTimeout, ssh_exec


class Server(paramiko.ServerInterface):
    """An in-process SSH server that lets anyone in and opens any channel."""

    def check_auth_none(self, username):
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username):
        return "none"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED


@contextlib.contextmanager
def served(iface):
    """A client transport logged in to an in-process server speaking `iface`."""
    a, b = socket.socketpair()
    server = paramiko.Transport(a)
    server.add_server_key(paramiko.RSAKey.generate(1024))
    threading.Thread(target=server.start_server, kwargs={"server": iface}, daemon=True).start()
    client = paramiko.Transport(b)
    client.start_client(timeout=10)
    client.auth_none("root")
    try:
        yield client
    finally:
        client.close()
        server.close()


class Hangs(Server):
    def __init__(self):
        self.release = threading.Event()

    def check_channel_exec_request(self, channel, command):
        self.release.wait(30)          # the server's transport thread stops here: no answer
        return False


@pytest.fixture
def hung_server():
    iface = Hangs()
    with served(iface) as client:
        yield client
        iface.release.set()


def test_an_exec_request_the_server_never_answers_times_out(hung_server):
    t = time.monotonic()
    with pytest.raises(ExecTimeout):
        ssh_exec(hung_server, "true", timeout=2, open_timeout=1)
    assert time.monotonic() - t < 5


class ExitsFirst(Server):
    """Sends the exit status before the command's last output, as OpenSSH does when the
    command's process ends before sshd has read all of its output from the pipe;
    `eof=False`: a background child keeps the output open, so no EOF ever comes."""

    def __init__(self, eof=True):
        self.eof = eof

    def check_channel_exec_request(self, channel, command):
        def run():
            channel.sendall(b'[{"ifname":"enp1s0",')
            channel.send_exit_status(0)
            time.sleep(0.3)
            channel.sendall(b'"vfinfo_list":[]}]\n')
            channel.sendall_stderr(b"late warning\n")
            if self.eof:
                channel.shutdown_write()
                channel.close()
        threading.Thread(target=run, daemon=True).start()
        return True


def test_output_after_the_exit_status_is_read_to_the_end():
    """The CI failure of stop 36: `ip -j link show` over SSH came back cut after 262
    characters, because the loop stopped at the exit status."""
    with served(ExitsFirst()) as client:
        rc, out, err = ssh_exec(client, "ip -j link show enp1s0", timeout=10)
    assert rc == 0
    assert out == b'[{"ifname":"enp1s0","vfinfo_list":[]}]\n'
    assert err == b"late warning\n"


def test_a_command_whose_output_stays_open_still_returns():
    t = time.monotonic()
    with served(ExitsFirst(eof=False)) as client:
        rc, out, _ = ssh_exec(client, "start-a-daemon", timeout=30)
    assert rc == 0 and out.endswith(b"}]\n")
    assert time.monotonic() - t < 15


class RefusesFirst(Server):
    """Answers the first `refusals` exec requests with a failure (as dropbear once did with
    another channel open), then runs the command."""

    def __init__(self, refusals: int):
        self.refusals = refusals

    def check_channel_exec_request(self, channel, command):
        if self.refusals:
            self.refusals -= 1
            return False

        def run():          # no close: it could overtake the answer to the exec request
            channel.sendall(b"ran\n")
            channel.send_exit_status(0)
            channel.shutdown_write()
        threading.Thread(target=run, daemon=True).start()
        return True


def test_one_refused_exec_request_is_asked_again_a_second_is_the_error():
    with served(RefusesFirst(1)) as client:
        assert ssh_exec(client, "true", timeout=10) == (0, b"ran\n", b"")
    with served(RefusesFirst(2)) as client, pytest.raises(paramiko.SSHException):
        ssh_exec(client, "true", timeout=10)
