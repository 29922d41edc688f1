"""Host commands and host files, wherever the lab host is.

Everything the harness does on a lab host besides libvirt calls — probes, sysfs
reads and writes, dmsetup/losetup, LIO configfs, bridges, qemu-img, QEMU's pid
and log — goes through one `Host`: `LocalHost` for this machine, `SshHost` for a
lab host reached over SSH (paramiko; commands shlex-quoted, files over SFTP).
The same harness code runs on both; only the transport differs.

`host.run(*argv)` returns a `Result` (lab/result.py: the one result type of host, guest
and virsh commands); `check=True` raises `HostCommandFailed` naming the host, the
command and its stderr.
"""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import stat
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import paramiko
from .errors import LabError
from .result import ExecTimeout, Result, ssh_exec
from .timeouts import Deadline


class HostCommandFailed(LabError):
    pass


def host_result(host: str, argv, rc: int, stdout: str, stderr: str) -> Result:
    """A lab host command's `Result`: its failure is a lab problem (HostCommandFailed)."""
    return Result(f"lab host {host}", shlex.join(argv), rc, stdout, stderr, HostCommandFailed)


def _budget(timeout: float) -> float:
    """A host command's `timeout` in seconds, scaled by the lab host's pace."""
    return Deadline(timeout, "a lab host command").budget


def _too_slow(host: str, argv, budget: float) -> HostCommandFailed:
    return HostCommandFailed(f"on lab host {host}: '{shlex.join(argv)}' did not finish within {budget:.0f} s")


class LabPath(PurePosixPath):
    """A path on the lab host.  A `pathlib.Path` is a path on this machine (the
    controller): `Host`'s file operations refuse one, so a controller path cannot be
    handed to the lab host by mistake (on a local lab host as on a remote one)."""


class ControllerPathGiven(TypeError):
    pass


def _lab_path(host_name: str, path):
    if isinstance(path, Path):
        raise ControllerPathGiven(f"{path} is a path on this machine (pathlib.Path), handed to lab host {host_name}: "
                                  f"the lab host's files are LabPaths (run.hdir, vm.hdir, cfg.host_work_dir)")
    return path


# Host file operations and the position of their lab host path (after self).
_PATH_ARG = {"read_bytes": 0, "write_text": 0, "exists": 0, "is_dir": 0, "listdir": 0, "readlink": 0,
             "mkdir": 0, "makedirs": 0, "symlink": 1, "unlink": 0, "rmdir": 0, "rmtree": 0, "put": 1}


class Host:
    """The interface; paths are lab host paths (LabPath or str), never pathlib.Paths.
    A `with` block closes it."""
    name: str = "host"
    local: bool = True

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _check_paths(cls)

    def run(self, *argv, check: bool = True, input: str | None = None, timeout: float = 120) -> Result:
        """`argv` on the lab host.  As a guest's `run`: `check` raises on a non-zero exit
        (here a lab problem, HostCommandFailed), and `timeout` is scaled by the lab host's
        pace (lab/timeouts.py); a command that outlives it is a HostCommandFailed too."""
        raise NotImplementedError

    def which(self, prog: str) -> bool:
        return self.run("sh", "-c", 'command -v "$1"', "sh", prog, check=False).ok

    @property
    def on(self) -> str:
        """Where, for a message: "" on this machine, " on <lab host>" elsewhere."""
        return "" if self.local else f" on {self.name}"

    def close(self) -> None:
        pass

    def start(self, *argv, what: str = "") -> "HostProcess":
        """A long-lived process on the lab host, spoken to line by line (see HostProcess)."""
        raise NotImplementedError

    # file operations, overridden where a transport can do better
    def read_bytes(self, path) -> bytes: raise NotImplementedError
    def write_text(self, path, text: str) -> None: raise NotImplementedError
    def exists(self, path) -> bool: raise NotImplementedError
    def is_dir(self, path) -> bool: raise NotImplementedError
    def listdir(self, path) -> list[str]: raise NotImplementedError
    def readlink(self, path) -> str: raise NotImplementedError
    def mkdir(self, path, mode: int = 0o755) -> None: raise NotImplementedError
    def symlink(self, target, link) -> None: raise NotImplementedError
    def unlink(self, path) -> None: raise NotImplementedError
    def rmdir(self, path) -> None: raise NotImplementedError
    def put(self, local: Path, remote, progress=None, readonly: bool = False) -> None:
        """Copy a file of this machine to the lab host, atomically (`progress(done, total)`
        is called as bytes go, where the transport can tell); `readonly`: a file nobody
        writes (a base image), which this machine may link instead of copying."""
        raise NotImplementedError
    def connect_tcp(self, address: str, port: int, timeout: float = 5):
        """A socket-like channel to address:port as the lab host sees it."""
        raise NotImplementedError

    def read_text(self, path) -> str:
        return self.read_bytes(path).decode(errors="replace")

    def makedirs(self, path, mode: int = 0o755) -> None:
        self.run("mkdir", "-p", "-m", oct(mode)[2:], str(path))

    def rmtree(self, path) -> None:
        p = str(path)
        if p.count("/") < 3:          # never rm -r a top-level directory by mistake
            raise ValueError(f"refusing to remove {p} recursively on {self.name}: not a harness directory")
        self.run("rm", "-rf", "--one-file-system", p)


def _check_paths(cls) -> None:
    """Every file operation `cls` defines refuses a controller path (see LabPath)."""
    import functools
    for meth, pos in _PATH_ARG.items():
        fn = cls.__dict__.get(meth)
        if fn is None:
            continue

        def checked(self, *args, _fn=fn, _pos=pos, **kwargs):
            if len(args) > _pos:
                _lab_path(self.name, args[_pos])
            return _fn(self, *args, **kwargs)
        setattr(cls, meth, functools.wraps(fn)(checked))


_check_paths(Host)


class HostProcess:
    """A long-lived process on the lab host, spoken to line by line.  Its stdin stays open
    while this object lives; at close(), and when this controller dies however it dies
    (SIGKILL too), the pipe or the SSH channel closes and the process reads end-of-file.
    A process that must end with its controller (a lease holder) ends there."""

    def __init__(self, host_name: str, what: str, write, shut, lines):
        import queue
        self.host_name, self.what = host_name, what
        self._write, self._shut = write, shut
        self._q: "queue.Queue[str | None]" = queue.Queue()
        self.ended = False

        def read():
            try:
                for line in lines:
                    self._q.put(line.rstrip("\n"))
            except (OSError, ValueError, EOFError, paramiko.SSHException):
                pass
            self._q.put(None)
        threading.Thread(target=read, daemon=True, name=f"{what} on {host_name}").start()

    def ask(self, line: str, timeout: float = 30) -> str:
        """Send one line, return the process's one-line answer."""
        import queue
        if self.ended:
            raise HostProcessEnded(f"{self.what} on lab host {self.host_name} has ended")
        try:
            self._write(line + "\n")
            got = self._q.get(timeout=timeout)
        except queue.Empty:
            raise HostProcessEnded(f"{self.what} on lab host {self.host_name} did not answer {line.split()[0]!r} "
                                   f"within {timeout:.0f} s") from None
        except (OSError, ValueError, paramiko.SSHException) as e:
            got, self.ended = None, True
            raise HostProcessEnded(f"{self.what} on lab host {self.host_name} cannot be reached: {e}") from None
        if got is None:
            self.ended = True
            raise HostProcessEnded(f"{self.what} on lab host {self.host_name} has ended")
        return got

    def close(self) -> None:
        self.ended = True
        try:
            self._shut()
        except (OSError, paramiko.SSHException):
            pass


class HostProcessEnded(LabError):
    """A long-lived helper on the lab host ended or stopped answering (its connection dropped)."""


class LocalHost(Host):
    local = True

    def __init__(self, name: str = "localhost"):
        self.name = name

    def run(self, *argv, check=True, input=None, timeout=120) -> Result:
        argv = tuple(str(a) for a in argv)
        budget = _budget(timeout)
        try:
            r = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=budget)
            res = host_result(self.name, argv, r.returncode, r.stdout, r.stderr)
        except subprocess.TimeoutExpired:
            raise _too_slow(self.name, argv, budget) from None
        except FileNotFoundError as e:
            res = host_result(self.name, argv, 127, "", f"{e.strerror}: {argv[0]}")
        return res.check() if check else res

    def which(self, prog):
        return shutil.which(prog) is not None

    def start(self, *argv, what=""):
        argv = tuple(str(a) for a in argv)
        # its own session: a Ctrl-C to the controller's process group does not end it; the
        # closed pipe does, once the controller is done (or dead)
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, bufsize=1, start_new_session=True)

        def write(line):
            p.stdin.write(line)
            p.stdin.flush()

        def shut():
            try:
                p.stdin.close()
            finally:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        return HostProcess(self.name, what or argv[0], write, shut, p.stdout)

    def read_bytes(self, path):
        return Path(path).read_bytes()

    def write_text(self, path, text):
        Path(path).write_text(text)

    def exists(self, path):
        return os.path.lexists(path)

    def is_dir(self, path):
        return Path(path).is_dir()

    def listdir(self, path):
        return sorted(os.listdir(path))

    def readlink(self, path):
        return os.readlink(path)

    def mkdir(self, path, mode=0o755):
        os.mkdir(path, mode)

    def makedirs(self, path, mode=0o755):
        Path(path).mkdir(parents=True, exist_ok=True, mode=mode)

    def symlink(self, target, link):
        os.symlink(target, link)

    def unlink(self, path):               # as SshHost's `rm -f`: a missing file is no error
        Path(path).unlink(missing_ok=True)

    def rmdir(self, path):
        os.rmdir(path)

    def rmtree(self, path):               # as `rm -rf`: a file goes too
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            Path(path).unlink(missing_ok=True)

    def put(self, local, remote, progress=None, readonly=False):
        if Path(local) == Path(remote):
            return
        if not readonly:
            shutil.copy2(local, remote)
            return
        Path(remote).unlink(missing_ok=True)
        try:
            os.link(local, remote)            # the same file, no copy (never written)
        except OSError:
            shutil.copy2(local, remote)

    def connect_tcp(self, address, port, timeout=5):
        return socket.create_connection((address, port), timeout=timeout)


@dataclass(frozen=True)
class SshTarget:
    hostname: str
    port: int
    user: str
    key_file: str
    known_hosts: str
    proxy_command: str      # "" : a direct connection


def resolve_ssh(address: str, port: int | None, user: str | None, key_file: str, known_hosts: str,
                config_path: str | None = None) -> SshTarget:
    """Where `[shell] address` really is, as OpenSSH would see it: the user's ssh config
    (~/.ssh/config, or `config_path`) gives HostName, Port, User, IdentityFile,
    UserKnownHostsFile, ProxyJump or ProxyCommand for a Host alias; what the lab config
    sets itself wins.  A ProxyJump goes through OpenSSH's own `ssh -W`, so the jump host's
    settings, agent and keys are OpenSSH's."""
    path = os.path.expanduser(config_path or "~/.ssh/config")
    cfg = {}
    if os.path.isfile(path):
        try:
            cfg = paramiko.SSHConfig.from_path(path).lookup(address)
        except (OSError, paramiko.SSHException, ValueError) as e:
            raise HostCommandFailed(f"the OpenSSH config {path} cannot be read for {address}: {e}") from None
    hostname = cfg.get("hostname", address)
    port = port if port is not None else int(cfg.get("port", 22))
    user = user if user is not None else cfg.get("user", "root")
    if not key_file and cfg.get("identityfile"):
        key_file = os.path.expanduser(cfg["identityfile"][0])
    if not known_hosts and cfg.get("userknownhostsfile"):
        known_hosts = os.path.expanduser(cfg["userknownhostsfile"].split()[0])
    proxy = cfg.get("proxycommand", "")
    if proxy.lower() == "none":
        proxy = ""
    jump = cfg.get("proxyjump", "")
    if jump and jump.lower() != "none" and not proxy:
        f = ["-F", path] if config_path else []
        proxy = shlex.join(["ssh", *f, "-W", f"{hostname}:{port}", *(["-J", jump.split(",", 1)[1]] if "," in jump else []),
                            jump.split(",", 1)[0]])
    return SshTarget(hostname, port, user, key_file, known_hosts, proxy)


class SshHost(Host):
    """A lab host over SSH: one paramiko connection (reconnected when it drops),
    commands as shlex-joined strings, files over SFTP."""
    local = False

    def __init__(self, name: str, address: str, port: int | None = 22, user: str | None = "root", key_file: str = "",
                 known_hosts: str = "", connect_timeout: float = 15, ssh_config: str | None = None):
        """`port`/`user` None: from the user's OpenSSH config for `address` (else 22/root)."""
        r = resolve_ssh(address, port, user, key_file, known_hosts, ssh_config)
        self.name, self.address, self.port, self.user = name, r.hostname, r.port, r.user
        self.alias = address
        self.key_file, self.known_hosts, self.connect_timeout = r.key_file, r.known_hosts, connect_timeout
        self.proxy_command = r.proxy_command
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()

    def __repr__(self):
        return f"SshHost({self.user}@{self.address}:{self.port})"

    def client(self) -> paramiko.SSHClient:
        with self._lock:
            t = self._client.get_transport() if self._client else None
            if t is None or not t.is_active():
                c = paramiko.SSHClient()
                # The lab host's key must be known: a given known_hosts file, else the user's.
                try:
                    if self.known_hosts:
                        c.load_host_keys(self.known_hosts)
                    else:
                        c.load_system_host_keys()
                except OSError as e:
                    raise HostCommandFailed(f"lab host {self.name}: cannot read known_hosts "
                                            f"{self.known_hosts or '~/.ssh/known_hosts'}: {e}") from None
                c.set_missing_host_key_policy(paramiko.RejectPolicy())
                via = f" via {self.proxy_command!r}" if self.proxy_command else ""
                try:
                    # as OpenSSH: the agent and the default keys when no key file is named
                    sock = paramiko.ProxyCommand(self.proxy_command) if self.proxy_command else None
                    c.connect(self.address, self.port, self.user, key_filename=self.key_file or None,
                              timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                              auth_timeout=self.connect_timeout, allow_agent=not self.key_file,
                              look_for_keys=not self.key_file, sock=sock)
                except (OSError, paramiko.SSHException) as e:
                    raise HostCommandFailed(f"cannot reach lab host {self.name} over SSH at "
                                            f"{self.user}@{self.address}:{self.port}{via}: {e}") from None
                c.get_transport().set_keepalive(10)
                self._client, self._sftp = c, None
            return self._client

    def sftp(self) -> paramiko.SFTPClient:
        with self._lock:
            self.client()
            if self._sftp is None:
                self._sftp = self._client.open_sftp()
            return self._sftp

    def close(self) -> None:
        with self._lock:
            if self._client:
                self._client.close()
            self._client = self._sftp = None

    def start(self, *argv, what=""):
        """On a connection of its own: closing or reconnecting this host's connection (or a
        copy made in between) leaves the process alone; it ends with its own channel."""
        import copy
        own = copy.copy(self)
        own._client = own._sftp = None
        own._lock = threading.RLock()
        argv = tuple(str(a) for a in argv)
        chan = own.client().get_transport().open_session(timeout=self.connect_timeout)
        chan.exec_command(shlex.join(argv))
        lines = chan.makefile("r")

        def shut():
            try:
                chan.shutdown_write()
                chan.close()
            finally:
                own.close()
        return HostProcess(self.name, what or argv[0], lambda line: chan.sendall(line.encode()), shut, lines)

    def run(self, *argv, check=True, input=None, timeout=120) -> Result:
        argv = tuple(str(a) for a in argv)
        budget = _budget(timeout)
        try:
            rc, out, err = ssh_exec(self.client().get_transport(), shlex.join(argv),
                                    input.encode() if input is not None else None, budget, self.connect_timeout)
        except ExecTimeout:
            raise _too_slow(self.name, argv, budget) from None
        res = host_result(self.name, argv, rc, out.decode(errors="replace"), err.decode(errors="replace"))
        return res.check() if check else res

    def read_bytes(self, path):
        try:
            with self.sftp().open(str(path), "rb") as f:
                return f.read()
        except IOError as e:
            if getattr(e, "errno", None) == 2:
                raise FileNotFoundError(2, "No such file or directory", str(path)) from None
            raise

    def write_text(self, path, text):
        # sysfs/configfs want one write(2) of the whole value: dd does that, SFTP may not
        r = self.run("dd", f"of={path}", "status=none", input=text, check=False)
        if not r.ok:
            raise OSError(f"writing {text.strip()!r} to {path} on lab host {self.name} failed: {r.stderr.strip()}")

    def exists(self, path):
        try:
            self.sftp().lstat(str(path))
            return True
        except IOError:
            return False

    def is_dir(self, path):
        try:
            return stat.S_ISDIR(self.sftp().stat(str(path)).st_mode)
        except IOError:
            return False

    def listdir(self, path):
        try:
            return sorted(self.sftp().listdir(str(path)))
        except IOError as e:
            raise FileNotFoundError(2, "No such file or directory", str(path)) from e

    def readlink(self, path):
        r = self.run("readlink", str(path), check=False)
        if not r.ok:
            raise OSError(f"{path} on {self.name} is not a link")
        return r.stdout.strip()

    def mkdir(self, path, mode=0o755):
        self.run("mkdir", "-m", oct(mode)[2:], str(path))

    def symlink(self, target, link):
        self.run("ln", "-s", str(target), str(link))

    def unlink(self, path):
        self.run("rm", "-f", str(path))

    def rmdir(self, path):
        self.run("rmdir", str(path))

    def put(self, local, remote, progress=None, readonly=False):
        # A temporary name of this copy's own: two runs (or xdist workers) copying the same
        # image at once must not move each other's half-written file (the CI failure
        # "mv -f ...root.qcow2.part ...root.qcow2 exited 1").
        tmp = f"{remote}.part-{os.getpid()}-{threading.get_ident()}-{os.urandom(3).hex()}"
        try:
            self.sftp().put(str(local), tmp, callback=progress)
            self.sftp().chmod(tmp, os.stat(local).st_mode & 0o777)
            self.run("mv", "-f", tmp, str(remote))
        except BaseException:
            try:
                self.run("rm", "-f", tmp, check=False, timeout=30)      # no half copy left behind
            except Exception:       # the connection that failed the copy may be gone too
                pass
            raise

    def connect_tcp(self, address, port, timeout=5):
        try:
            return self.client().get_transport().open_channel("direct-tcpip", (address, port), ("127.0.0.1", 0),
                                                              timeout=timeout)
        except paramiko.ChannelException as e:
            raise ConnectionRefusedError(f"{address}:{port} on lab host {self.name}: {e}") from None


class HostPath:
    """The slice of pathlib.Path the sysfs/configfs code uses, on a lab host's file
    system (`HostPath(host, "/sys")`), whichever transport the host has.  Self-tests
    may hand the same code a plain Path to a recorded tree."""

    def __init__(self, host: Host, path):
        self.host, self._p = host, PurePosixPath(str(path))

    def __truediv__(self, other) -> "HostPath":
        return HostPath(self.host, self._p / str(other))

    def __str__(self):
        return str(self._p)

    def __repr__(self):
        return f"HostPath({self.host.name}:{self._p})"

    def __eq__(self, other):
        return isinstance(other, HostPath) and other.host is self.host and other._p == self._p

    def __hash__(self):
        return hash(self._p)

    def __lt__(self, other):
        return self._p < other._p

    @property
    def name(self) -> str:
        return self._p.name

    @property
    def parent(self) -> "HostPath":
        return HostPath(self.host, self._p.parent)

    def _stat(self, follow=True):
        if isinstance(self.host, SshHost):
            sftp = self.host.sftp()
            try:
                return sftp.stat(str(self._p)) if follow else sftp.lstat(str(self._p))
            except IOError:
                return None
        try:
            return os.stat(self._p) if follow else os.lstat(self._p)
        except OSError:
            return None

    def exists(self) -> bool:
        return self._stat() is not None

    def is_dir(self) -> bool:
        st = self._stat()
        return st is not None and stat.S_ISDIR(st.st_mode)

    def is_symlink(self) -> bool:
        st = self._stat(follow=False)
        return st is not None and stat.S_ISLNK(st.st_mode)

    def iterdir(self):
        return [self / n for n in self.host.listdir(self._p)]

    def glob(self, pattern: str):
        import fnmatch
        if "/" in pattern:
            raise ValueError(f"HostPath.glob takes one path component, not {pattern!r}")
        try:
            names = self.host.listdir(self._p)
        except FileNotFoundError:
            return []
        return [self / n for n in names if fnmatch.fnmatch(n, pattern)]

    def read_text(self) -> str:
        return self.host.read_text(self._p)

    def write_text(self, text: str) -> None:
        self.host.write_text(self._p, text)

    def readlink(self) -> "HostPath":
        return HostPath(self.host, self.host.readlink(self._p))

    def resolve(self) -> "HostPath":
        return HostPath(self.host, self.host.run("readlink", "-f", str(self._p)).stdout.strip())

    def mkdir(self, mode: int = 0o755, parents: bool = False, exist_ok: bool = False) -> None:
        if exist_ok and self.is_dir():
            return
        (self.host.makedirs if parents else self.host.mkdir)(self._p)

    def symlink_to(self, target) -> None:
        self.host.symlink(str(target), self._p)

    def unlink(self, missing_ok: bool = False) -> None:
        self.host.unlink(self._p)

    def rmdir(self) -> None:
        self.host.rmdir(self._p)


def sys_root(host: Host) -> "HostPath":
    """/sys of the lab host, read and written through the host object, local or remote."""
    return HostPath(host, "/sys")
