"""Console login and boot recognition for distribution images, against a fake getty
(a local program with the tty's echo turned off at the password prompt, as login does),
and the pure parts of the image builder (MBR, GRUB's boot sector)."""
import struct
import sys
import textwrap

import pytest

from lab import cloud_image, config
from lab.config import Secret
from lab.guest.console import Console, ConsoleError
from lab.guest.login import (LOGIN_RE, Login, boot_done, host_key_from_console, parse_prepared, per_run_login,
                             prepare_script)
from lab.timeouts import Deadline

PASSWORD = "s3cret-Pw-4-test"

# A getty + login + shell: prompts "testhost login: ", then "Password: " with echo off.
FAKE_GETTY = textwrap.dedent(r'''
    import os, subprocess, sys, termios
    def echo(on):
        a = termios.tcgetattr(0)
        a[3] = a[3] | termios.ECHO if on else a[3] & ~termios.ECHO
        termios.tcsetattr(0, termios.TCSANOW, a)
    want = sys.argv[1]
    print("Debian GNU/Linux 12 testhost ttyS0\r\n\r\nLast login: Sat Nov 28 on ttyS0\r")
    while True:
        sys.stdout.write("\r\ntesthost login: "); sys.stdout.flush()
        user = sys.stdin.readline().strip()
        if not user:
            continue
        sys.stdout.write("Password: "); sys.stdout.flush()
        echo(False); pw = sys.stdin.readline().strip(); echo(True)
        if user == "root" and pw == want:
            os.execvp("sh", ["sh", "-i"])
        print("\r\nLogin incorrect\r")
''')


def getty(tmp_path, password=PASSWORD):
    argv = [sys.executable, "-c", FAKE_GETTY, password]
    con = Console(argv, tmp_path / "console.log", "fake getty")
    con.child.setecho(True)            # a real tty echoes what is typed (not the password)
    return con


def test_sync_shell_logs_in_and_the_password_never_reaches_the_transcript(tmp_path):
    with getty(tmp_path) as con:
        con.sync_shell(Deadline(20, "a console shell"), login=Login("root", Secret(PASSWORD, "test")))
        assert "logged-in-as-" in con.run("echo logged-in-as-$(id -u)", Deadline(10, "a command")).stdout
    text = (tmp_path / "console.log").read_bytes().decode()
    assert "testhost login:" in text and "Password:" in text
    assert PASSWORD not in text


def test_a_refused_login_is_a_clear_error_naming_the_source_not_the_password(tmp_path):
    with getty(tmp_path, password="the-real-one") as con:
        with pytest.raises(ConsoleError, match="refused the login of 'root' with the password from /etc/pw-file") as e:
            con.sync_shell(Deadline(20, "a console shell"), login=Login("root", Secret(PASSWORD, "/etc/pw-file")))
        assert PASSWORD not in str(e.value)
    assert PASSWORD not in (tmp_path / "console.log").read_bytes().decode()


def test_a_login_prompt_without_credentials_says_which_keys_to_set(tmp_path):
    with getty(tmp_path) as con:
        with pytest.raises(ConsoleError, match="access = 'console-password'"):
            con.sync_shell(Deadline(10, "a console shell"))


def test_secrets_show_where_they_came_from_only():
    s = Secret(PASSWORD, "/var/lib/x/pw")
    assert PASSWORD not in repr(s) + str(s) + f"{s}" + repr(Login("root", s))
    assert s.reveal() == PASSWORD


def test_per_run_login_gives_the_seed_a_hash_only():
    login, hashed = per_run_login()
    assert hashed.startswith("$6$") and login.password.reveal() not in hashed
    assert len(login.password.reveal()) >= 20


def test_login_prompt_is_not_last_login():
    assert LOGIN_RE.search("\r\ndebian login: ")
    assert not LOGIN_RE.search("\r\nLast login: Sat Nov 28 13:33:51 UTC 2026 on ttyS0")


CLOUD_INIT_TAIL = (
    "<14>Nov 28 13:33:51 cloud-init: -----END SSH HOST KEY FINGERPRINTS-----\r\n"
    "-----BEGIN SSH HOST KEY KEYS-----\r\n"
    "ecdsa-sha2-nistp256 AAAAE2VjZHNh= \r\n"
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINud3Akr root@debian\r\n"
    "-----END SSH HOST KEY KEYS-----\r\n")


def test_host_key_comes_from_cloud_inits_block_on_the_console():
    assert host_key_from_console("noise\r\n" + CLOUD_INIT_TAIL) == "AAAAC3NzaC1lZDI1NTE5AAAAINud3Akr"
    assert host_key_from_console(CLOUD_INIT_TAIL[:150]) is None, "a half-printed block pins nothing"
    assert boot_done(CLOUD_INIT_TAIL, "nocloud")
    assert not boot_done("\r\ndebian login: ", "nocloud"), "a login prompt comes before cloud-init is done"
    assert boot_done("\r\ndebian login: ", "console-password")
    assert not boot_done(CLOUD_INIT_TAIL, "cmdline")


def test_prepare_script_output_is_parsed_and_the_script_names_the_mac():
    s = prepare_script("ssh-ed25519 AAAA acc-harness", "52:54:00:aa:bb:cc")
    assert "52:54:00:aa:bb:cc" in s and "ssh-ed25519 AAAA acc-harness" in s
    got = parse_prepared("echo typed\r\nACC_IF=enp1s0\r\nACC_HOSTKEY=AAAAC3Nz\r\nACC_BOOT_ID=1-2-3\r\n")
    assert got == {"IF": "enp1s0", "HOSTKEY": "AAAAC3Nz", "BOOT_ID": "1-2-3"}


def test_mbr_is_what_sfdisk_writes_for_one_bootable_linux_partition():
    m = cloud_image.mbr(0xdc8ef0f8, 2048, 4192256)
    assert len(m) == 512 and m[510:] == b"\x55\xaa"
    assert struct.unpack_from("<I", m, 440)[0] == 0xdc8ef0f8          # PARTUUID dc8ef0f8-01
    status, ptype, start, size = m[446], m[450], *struct.unpack_from("<II", m, 454)
    assert (status, ptype, start, size) == (0x80, 0x83, 2048, 4192256)
    assert m[462:510] == bytes(48), "one partition only"


def test_grub_embedding_keeps_the_partition_table_and_points_at_core(tmp_path):
    disk = tmp_path / "disk.raw"
    mbr = cloud_image.mbr(0x12345678, 2048, 100)
    disk.write_bytes(mbr.ljust(2048 * 512 + 100 * 512, b"\0"))
    boot = (bytes(range(256)) * 2)[:510] + b"\x55\xaa"
    core = b"D" * 512 + b"K" * 3000                 # diskboot + the rest (7 sectors in all)
    cloud_image.embed_grub(disk, boot, core)
    d = disk.read_bytes()
    assert d[0x1b8:0x1fe] == mbr[0x1b8:0x1fe] and d[510:512] == b"\x55\xaa"
    assert struct.unpack_from("<Q", d, 0x5c)[0] == 1 and d[0x64] == 0xff
    assert d[512:512 + 500] == b"D" * 500
    assert struct.unpack_from("<QHH", d, 512 + 500) == (2, 6, 0x820)
    assert d[1024:1024 + 3000] == b"K" * 3000
    with pytest.raises(cloud_image.ImageError, match="do not fit"):
        cloud_image.embed_grub(disk, boot, b"x" * (2048 * 512))


def _cfg(tmp_path, guest: str):
    p = tmp_path / "lab.toml"
    p.write_text('[host]\nname = "t"\nlibvirt_uri = "qemu:///system"\n[guest]\n' + guest)
    return p


@pytest.mark.parametrize("guest, error", [
    ('image = "debian12-cloud"\naccess = "console-password"\npassword_env = "X"\n',
     "guest.access' is 'console-password', but the built-in image debian12-cloud takes 'nocloud'"),
    ('image = "debian12-password"\naccess = "console-password"\n',
     "guest.password_file' and guest.password_env: access = 'console-password' needs exactly one"),
    ('image = "debian12-password"\naccess = "console-password"\npassword_file = "/a"\npassword_env = "B"\n',
     "needs exactly one"),
    ('image = "debian12-cloud"\naccess = "nocloud"\npassword_env = "B"\n',
     "guest.password_env' is set with access = 'nocloud'"),
    ('image = "ubuntu"\n', "must be 'default', one of debian12-cloud, debian12-password, an absolute path to a qcow2 image on this machine, or lab-host:/path"),
    ('image = "debian12-password"\naccess = "console-password"\npassword_file = "rel/pw"\n', "must be an absolute path"),
])
def test_guest_login_keys_are_checked_with_the_fix(tmp_path, guest, error):
    with pytest.raises(config.LabConfigError, match=error.replace("(", r"\(").replace(")", r"\)")):
        config.load(_cfg(tmp_path, guest))


def test_password_is_read_when_needed_and_a_missing_one_names_the_key(tmp_path, monkeypatch):
    pw = tmp_path / "pw"
    cfg = config.load(_cfg(tmp_path, f'image = "debian12-password"\naccess = "console-password"\n'
                                      f'password_file = "{pw}"\n'))
    with pytest.raises(config.LabConfigError, match="guest.password_file' names .*cannot be read"):
        cfg.guest_password()
    pw.write_text(PASSWORD + "\n")
    assert cfg.guest_password().reveal() == PASSWORD
    cfg = config.load(_cfg(tmp_path, 'image = "debian12-password"\naccess = "console-password"\n'
                                     'password_env = "ACC_TEST_PW"\n'))
    monkeypatch.delenv("ACC_TEST_PW", raising=False)
    with pytest.raises(config.LabConfigError, match="ACC_TEST_PW, which is unset"):
        cfg.guest_password()
    monkeypatch.setenv("ACC_TEST_PW", PASSWORD)
    assert cfg.guest_password().source == "$ACC_TEST_PW"


def test_a_probe_program_missing_in_the_guest_is_named():
    from lab.guest import Guest, GuestToolMissing
    from lab.guest.ssh import Result

    class FakeSSH:
        def __init__(self, rc, err):
            self.rc, self.err = rc, err

        def run(self, cmd, *args, timeout=60, check=False):
            return Result("guest", cmd, self.rc, "", self.err)

    with pytest.raises(GuestToolMissing, match="no 'lspci'"):
        Guest(FakeSSH(127, "sh: 1: lspci: not found\n")).check_output("lspci -D -vv")
    with pytest.raises(GuestToolMissing, match="no 'ethtool'"):
        Guest(FakeSSH(127, "bash: line 1: ethtool: command not found\n")).check_output("ethtool -l eth0")
    with pytest.raises(AssertionError, match="exited 127"):       # 127 from elsewhere stays a failure
        Guest(FakeSSH(127, "something else\n")).check_output("./x")


def test_boot_deadline_fits_the_image_after_its_first_boot():
    from pathlib import Path

    from types import SimpleNamespace

    from lab.images import GuestImage
    from lab.run import Lab
    run = Lab.__new__(Lab)
    run.cfg = SimpleNamespace(timeout_factor=1.0)
    run.image, run.boot_seconds = GuestImage(root=Path("/x/disk.qcow2"), access="nocloud"), []
    first = run.boot_deadline("vm to boot")
    assert 299 < first.budget <= 300 and "first boot" in first.what, "firmware images get the generous first budget"
    run.boot_seconds.append(50.0)
    later = run.boot_deadline("vm to boot")
    assert 179 < later.budget <= 180 and "50 s" in later.what, "3 x the measured boot + 30 s"
    run.image = GuestImage(root=Path("/x/root.qcow2"), kernel=Path("/x/kernel"))
    run.boot_seconds = [4.0]
    assert 59 < run.boot_deadline("vm").budget <= 60, "never under the default first-boot budget"
    run.cfg = SimpleNamespace(timeout_factor=2.0)
    run.boot_seconds = []
    assert 119 < run.boot_deadline("vm").budget <= 120, "the lab's timeout factor scales the first budget"


def test_secrets_scan_names_the_files_and_never_the_password(tmp_path, capsys):
    from lab import cli
    reports = tmp_path / "reports"
    (reports / "allure-results").mkdir(parents=True)
    (reports / "allure-results" / "a-attachment.txt").write_text("console: debian login: root\nPassword: \n")
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    lab = _cfg(tmp_path, f'image = "debian12-password"\naccess = "console-password"\npassword_file = "{pw}"\n')
    assert cli.main(["--lab", str(lab), "secrets-scan", str(reports)]) == 0
    (reports / "pytest.log").write_text(f"typed {PASSWORD} somewhere\n")
    assert cli.main(["--lab", str(lab), "secrets-scan", str(reports)]) == 1
    out = capsys.readouterr().out
    assert "pytest.log" in out and "a-attachment.txt" not in out.split("written in")[1]
    assert PASSWORD not in out
