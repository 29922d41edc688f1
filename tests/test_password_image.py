"""The password-only distribution image for real: a guest with no cloud-init and a root password
is reached through a console login, a wrong password is refused with its source named, and the
password is in none of the files the run writes (console transcripts, the serial log, the
defined XML, the run's log lines).  One boot for all of it."""
import secrets

import pytest

from lab import config
from lab.config import Secret
from lab.domain import VMSpec
from lab.guest.console import ConsoleError
from lab.guest.login import Login
from lab.run import Lab
from lab.timeouts import Deadline

pytestmark = pytest.mark.lab
LAB = config.REPO / "labs" / "local-password-image.toml"


def test_console_login_reaches_ssh_a_wrong_password_is_refused_and_the_password_is_written_nowhere():
    cfg = config.load(LAB)
    lines = []
    run = Lab(cfg, log=lines.append)          # builds the image when it is not cached (about 2 minutes)
    password = cfg.guest_password().reveal()
    try:
        vm = run.new_vm(VMSpec("pw-login"))
        vm.start()
        assert vm.access.host_key_source == "the guest's key file, read on its console"
        assert vm.guest.check_output("cat /proc/1/comm").strip() == "systemd", "a distribution image, not ours"
        assert vm.guest.check_output("cat /proc/sys/kernel/random/boot_id").strip() == vm.boot_id
        assert vm.guest.run("test -e /usr/bin/cloud-init", check=False).rc != 0, "the image has no cloud-init"
        # the harness logged out again: a wrong password at the console's prompt is refused, named by its source
        with vm.console() as con:
            con.wait_connected(Deadline(15, "virsh console"))
            wrong = Login("root", Secret("not-the-password", "/etc/wrong-password-file"))
            with pytest.raises(ConsoleError, match="refused the login of 'root' with the password from "
                                                   "/etc/wrong-password-file"):
                con.sync_shell(Deadline(60, "a console shell"), login=wrong)
        # a console session of a claim logs in again where the console asks
        with vm.console() as con:
            con.wait_connected(Deadline(15, "virsh console"))
            con.sync_shell(Deadline(60, "a console shell"))
            token = secrets.token_hex(6)
            out = con.run(f"echo {token} > /root/console-proof; id -un", Deadline(15, "a console command")).stdout
            assert out.strip() == "root"
        assert vm.guest.check_output("cat /root/console-proof").strip() == token
        written = {p: p.read_bytes() for p in vm.dir.rglob("*") if p.is_file()}
        written["serial log"] = vm.serial_text().encode()
        written["run log"] = "\n".join(map(str, lines)).encode()
        transcripts = b"".join(v for k, v in written.items() if "console" in str(k))
        assert transcripts.count(b"Password:") >= 3, "every login went through the guest's password prompt"
        for secret in (password, "not-the-password"):
            leaks = [str(k) for k, v in written.items() if secret.encode() in v]
            assert not leaks, f"a console password is written in {leaks}"
    finally:
        run.close()
