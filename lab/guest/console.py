"""The guest's serial console over the pty (`virsh console`), driven by pexpect.

Every expect also fails fast on a kernel panic, and the whole session is
written to a transcript file (the evidence attached on failure).  Commands use
a marker protocol so the exit code is recovered even when the echo of the
typed line or kernel messages are interleaved with the output.
"""
from __future__ import annotations

import re
import secrets
from pathlib import Path

import pexpect

from ..result import Result
from ..timeouts import Deadline
from .login import LOGIN_RE, LOGIN_REFUSED_RE, PASSWORD_RE
from .ssh import CommandFailed

PANIC_PATTERNS = [
    r"Kernel panic - not syncing[^\r\n]*",
    r"BUG: kernel NULL pointer dereference[^\r\n]*",
    r"general protection fault[^\r\n]*",
    r"Oops: [^\r\n]*",
]
PANIC_RE = re.compile("|".join(PANIC_PATTERNS))


class GuestPanic(AssertionError):
    pass


class ConsoleError(AssertionError):
    pass


class Console:
    def __init__(self, argv: list[str], transcript: Path, description: str):
        self.argv = argv
        self.transcript = transcript
        self.description = description
        self._log = open(transcript, "ab")
        self.child = pexpect.spawn(argv[0], argv[1:], timeout=None, echo=False)
        self.child.logfile_read = self._log
        self.default_login = None     # the Login sync_shell answers a login prompt with

    @classmethod
    def attach(cls, uri: str, name: str, transcript: Path) -> "Console":
        return cls(["virsh", "-c", uri, "console", name, "--force"], transcript, f"console of {name}")

    @classmethod
    def start_attached(cls, uri: str, name: str, transcript: Path) -> "Console":
        """`virsh start --console`: start the domain and attach from its first byte."""
        return cls(["virsh", "-c", uri, "start", "--console", name], transcript, f"start --console of {name}")

    # -------------------------------------------------------------- expect

    def expect(self, patterns, deadline: Deadline, what: str) -> re.Match:
        """Wait for one of `patterns` (regexes); fail fast on a panic or EOF."""
        if isinstance(patterns, str):
            patterns = [patterns]
        idx = self.child.expect([PANIC_RE, pexpect.EOF, pexpect.TIMEOUT, *patterns],
                                timeout=max(deadline.remaining, 0.01))
        if idx == 0:
            raise GuestPanic(f"{self.description}: guest panicked while waiting for {what}: "
                             f"{self.child.match.group(0).decode(errors='replace')}")
        if idx == 1:
            raise ConsoleError(f"{self.description}: console closed while waiting for {what}; last output: "
                               f"{self.tail()!r}")
        if idx == 2:
            raise deadline.fail(f"{what} on the {self.description}; last output: {self.tail()!r}")
        return self.child.match

    def tail(self, n: int = 400) -> str:
        before = self.child.before or b""
        if not isinstance(before, bytes):
            before = b""
        return before[-n:].decode(errors="replace")

    def wait_connected(self, deadline: Deadline) -> None:
        self.expect(r"Escape character is", deadline, "virsh to connect the console")

    def sync_shell(self, deadline: Deadline, login=None) -> None:
        """Get a shell we can type into: press Enter until one answers, logging in
        first where the console asks for a login (`login`: a lab.guest.login.Login)."""
        login = login or self.default_login
        token = secrets.token_hex(4)
        sync = f"ACC_SYNC_{token}_OK"
        while True:
            if login is not None:      # an image whose console may ask for a login: look before typing
                self.child.sendline("")
                try:
                    idx = self._expect_any([LOGIN_RE.pattern, PASSWORD_RE.pattern], deadline.sub(2, "a prompt"))
                except TimeoutError:
                    idx = None
                if idx == 0:
                    self.login(login, deadline)
                elif idx == 1:
                    continue       # a password prompt we did not ask for: Enter abandons it, never a password
            # The typed line reads "ACC_SYNC_<t>''_OK" (also when echoed at a login prompt); only a shell prints it whole.
            self.child.sendline(f"echo ACC_SYNC_{token}''_OK")
            try:
                idx = self._expect_any([sync, LOGIN_RE.pattern, PASSWORD_RE.pattern], deadline.sub(3, "shell answer"))
                if idx == 0:
                    return
                if login is None:
                    self.login(None, deadline)         # the error that names the keys to set
            except TimeoutError:
                pass
            if deadline.expired:
                raise deadline.fail(f"a shell on the {self.description}; last output: {self.tail()!r}")

    def _expect_any(self, patterns: list[str], deadline: Deadline) -> int:
        """Which of `patterns` came first."""
        m = self.expect(patterns, deadline, " or ".join(patterns))
        got = m.re.pattern.decode() if isinstance(m.re.pattern, bytes) else m.re.pattern
        return patterns.index(got)

    def login(self, login, deadline: Deadline) -> None:
        """Answer the login prompt; the password is typed only when the guest asks for it."""
        if login is None:
            raise ConsoleError(f"{self.description} asks for a login and the lab config gives none; fix: "
                               "[guest] access = 'console-password' with user and password_file/password_env")
        self.child.sendline(login.user)
        self.expect(PASSWORD_RE.pattern, deadline.sub(20, "the password prompt"), f"the password prompt for {login.user}")
        self.child.sendline(login.password.reveal())
        token = secrets.token_hex(4)
        self.child.sendline(f"echo ACC_LOGIN_{token}''_OK")
        idx = self._expect_any([f"ACC_LOGIN_{token}_OK", LOGIN_REFUSED_RE.pattern],
                               deadline.sub(60, f"a shell after logging in as {login.user}"))
        if idx == 1:
            raise ConsoleError(f"{self.description}: the guest refused the login of {login.user!r} with the "
                               f"password from {login.password.source}; fix: put the guest's password there")

    def logout(self, deadline: Deadline) -> None:
        """Leave the shell and see the login prompt come back: a root shell must not stay
        open on the serial console (an `exit` sent just before virsh detaches can be lost)."""
        self.child.sendline("exit")
        self.expect(LOGIN_RE.pattern, deadline, "the login prompt after logging out")

    def run(self, command: str, timeout: "float | Deadline" = 60.0, check: bool = True) -> Result:
        """Run `command` in the console shell, as a guest's `run` over SSH does: `check`
        raises CommandFailed on a non-zero exit; `timeout` is seconds scaled by the lab
        host's pace, or a Deadline shared with the caller.  The output is stdout and
        stderr together (a console has one stream)."""
        deadline = timeout if isinstance(timeout, Deadline) else Deadline(timeout, f"console command {command[:60]!r}")
        n = secrets.token_hex(4)
        # The typed line reads "ACC_B n" / "ACC_E n"; only the output has "ACC_B_n".
        self.child.sendline(f"printf '%s_%s\\n' ACC_B {n}; {command}; printf '%s_%s_rc=%s\\n' ACC_E {n} $?")
        self.expect(f"ACC_B_{n}\r?\n", deadline, f"start of {command!r}")
        m = self.expect(rf"ACC_E_{n}_rc=(\d+)", deadline, f"end of {command!r}")
        out = (self.child.before or b"").decode(errors="replace").replace("\r\n", "\n")
        r = Result("guest console", command, int(m.group(1)), out, "", CommandFailed)
        return r.check() if check else r

    def close(self) -> None:
        try:
            if self.child.isalive() and self.argv[0] == "virsh":
                self.child.sendcontrol("]")      # virsh's escape: detach cleanly
                self.child.expect(pexpect.EOF, timeout=3)
        except (pexpect.ExceptionPexpect, OSError):
            pass
        finally:
            self.child.close(force=True)
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
