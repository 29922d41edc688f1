"""The one SSH exec loop gives up on a server that stops answering: a server that opened
the channel but never answers the exec request (a hung or stopped sshd) is a timeout,
not a thread that waits forever."""
import socket
import threading
import time

import paramiko
import pytest

from lab.result import ExecTimeout, ssh_exec


class Hangs(paramiko.ServerInterface):
    def __init__(self):
        self.release = threading.Event()

    def check_auth_none(self, username):
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username):
        return "none"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        self.release.wait(30)          # the server's transport thread stops here: no answer
        return False


@pytest.fixture
def hung_server():
    a, b = socket.socketpair()
    server = paramiko.Transport(a)
    server.add_server_key(paramiko.RSAKey.generate(1024))
    iface = Hangs()
    threading.Thread(target=server.start_server, kwargs={"server": iface}, daemon=True).start()
    client = paramiko.Transport(b)
    client.start_client(timeout=10)
    client.auth_none("root")
    yield client
    iface.release.set()
    client.close()
    server.close()


def test_an_exec_request_the_server_never_answers_times_out(hung_server):
    t = time.monotonic()
    with pytest.raises(ExecTimeout):
        ssh_exec(hung_server, "true", timeout=2, open_timeout=1)
    assert time.monotonic() - t < 5
