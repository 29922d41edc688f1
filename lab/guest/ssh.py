"""Guest shell over SSH (paramiko): `run(cmd, *args)` with shlex-quoted args,
a per-command timeout and a result object (pytest-testinfra's shape)."""
from __future__ import annotations

import io
import shlex
import time
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..result import ExecTimeout, Result, ssh_exec
from ..timeouts import Deadline

GUEST_PATH = "export PATH=/usr/sbin:/usr/bin:/sbin:/bin; "


class CommandFailed(AssertionError):
    pass


class HostKeyMismatch(AssertionError):
    """The SSH server is not the guest we booted."""


@dataclass(frozen=True)
class RunKey:
    """A fresh ed25519 key for one run; never a password."""
    pkey: paramiko.Ed25519Key
    public_blob: str        # base64 of the public key, as in authorized_keys

    @property
    def public_line(self) -> str:
        return f"ssh-ed25519 {self.public_blob} acc-harness"

    @classmethod
    def generate(cls) -> "RunKey":
        priv = Ed25519PrivateKey.generate()
        pem = priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption()).decode()
        pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
        pub = priv.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        return cls(pkey=pkey, public_blob=pub.split()[1])

    def save(self, path) -> None:
        self.pkey.write_private_key_file(str(path))


def quote_command(cmd: str, args) -> str:
    return cmd % tuple(shlex.quote(str(a)) for a in args) if args else cmd


class SSH:
    def __init__(self, host: str, port: int, key: RunKey, user: str = "root", host_key: str | None = None,
                 via=None):
        """`via`: the lab host executor whose network reaches host:port (None: this machine's)."""
        self.host, self.port, self.key, self.user, self.via = host, port, key, user, via
        self.host_key = host_key     # base64 of the guest's host key; None: learn it on first connect
        self._client: paramiko.SSHClient | None = None

    def connect(self, deadline: Deadline, alive=lambda: None) -> None:
        """Connect, retrying until the deadline; `alive()` raises to fail fast
        (guest panicked, domain died)."""
        last = "no attempt"
        while True:
            alive()
            c = paramiko.SSHClient()
            c.set_missing_host_key_policy(paramiko.AutoAddPolicy())   # checked against the pinned key below
            try:
                sock = self.via.connect_tcp(self.host, self.port, timeout=min(5, max(deadline.remaining, 0.5))) \
                    if self.via is not None else None
                c.connect(self.host, self.port, username=self.user, pkey=self.key.pkey, sock=sock,
                          timeout=min(5, max(deadline.remaining, 0.5)),
                          banner_timeout=min(5, max(deadline.remaining, 0.5)),
                          auth_timeout=5, allow_agent=False, look_for_keys=False)
                c.get_transport().set_keepalive(5)
                got = c.get_transport().get_remote_server_key().get_base64()
                if self.host_key and got != self.host_key:
                    c.close()
                    raise HostKeyMismatch(f"{self.host}:{self.port} presented host key {got[:24]}..., "
                                          f"not the guest's own {self.host_key[:24]}... (from its console)")
                self.host_key = got
                self._client = c
                return
            except (paramiko.SSHException, OSError, EOFError) as e:
                last = f"{type(e).__name__}: {e}"
                c.close()
            if deadline.expired:
                raise deadline.fail(f"SSH to {self.host}:{self.port}, last error {last}")
            time.sleep(0.2)

    @property
    def connected(self) -> bool:
        return bool(self._client and self._client.get_transport() and self._client.get_transport().is_active())

    def run(self, cmd: str, *args, timeout: float = 60.0, check: bool = True, stdin: bytes | None = None) -> Result:
        command = quote_command(cmd, args)
        if not self.connected:
            raise ConnectionError(f"SSH to {self.host}:{self.port} is not connected")
        deadline = Deadline(timeout, f"guest command {command!r}")
        try:
            rc, out, err = ssh_exec(self._client.get_transport(), GUEST_PATH + command, stdin, deadline.budget)
        except ExecTimeout as e:
            raise deadline.fail(f"output so far: {e.out[-300:].decode(errors='replace')!r}") from None
        r = Result("guest", command, rc, out.decode(errors="replace"), err.decode(errors="replace"), CommandFailed)
        return r.check() if check else r

    def close(self) -> None:
        if self._client:
            self._client.close()
            self._client = None
