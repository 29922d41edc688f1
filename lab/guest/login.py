"""Logging in on a guest's serial console, for images whose console asks for a
login (distribution images), and what the console shows at the end of a boot.

The password is typed only right after the guest asked for it (its tty does not
echo then), so it never reaches a console transcript; it is held as a `Secret`
and shown as where it came from.
"""
from __future__ import annotations

import re
import secrets
import subprocess
from dataclasses import dataclass

from ..config import Secret
from ..errors import LabError

# The harness's own guest (lab/guest_image/rcS); the whole line, up to its end: the
# serial log can be read while a slow console is mid-line.
READY_RE = re.compile(r"ACC-READY boot_id=(\S+)(?: mgmt_if=\S+)?(?: hostkey=(\S+))?[ \t]*\r?\n")
# getty's prompt, "<hostname> login: " at the start of a line (agetty, busybox getty, mingetty
# alike), not "Last login: ...".  No inline flags: the patterns are combined into one.
LOGIN_RE = re.compile(r"[\r\n](?!Last )[\w.-]+ login: ")
PASSWORD_RE = re.compile(r"[Pp]assword: ?")
LOGIN_REFUSED_RE = re.compile(r"Login incorrect|Authentication failure|Permission denied")
# cloud-init's own record of the host keys it made (cc_keys_to_console), on the console
KEYS_BLOCK_RE = re.compile(r"-----BEGIN SSH HOST KEY KEYS-----([\s\S]*?)-----END SSH HOST KEY KEYS-----")
CLOUD_INIT_DONE_RE = re.compile(r"Cloud-init v\. \S+ finished at [^\r\n]*")


class LoginSetupError(LabError):
    """This machine could not make the per-run console login (openssl): a lab problem."""


@dataclass(frozen=True)
class Login:
    user: str
    password: Secret

    def __repr__(self) -> str:
        return f"Login({self.user!r}, {self.password!r})"


def per_run_login() -> tuple[Login, str]:
    """A random root password for this run's cloud-init guests (given through the seed
    as a SHA-512 crypt hash, so the seed holds no clear text), and that hash."""
    pw = secrets.token_urlsafe(18)
    r = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=pw + "\n", capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.startswith("$6$"):
        raise LoginSetupError(f"openssl passwd -6 failed (exit {r.returncode}): {r.stderr.strip()[-200:]}")
    return Login("root", Secret(pw, "this run's NoCloud seed")), r.stdout.strip()


def host_key_from_console(text: str, kind: str = "ssh-ed25519") -> str | None:
    """The base64 host key of `kind` from the last cloud-init key block on the console."""
    blocks = KEYS_BLOCK_RE.findall(text)
    if not blocks:
        return None
    m = re.search(rf"(?m)^{re.escape(kind)} (\S+)", blocks[-1].replace("\r", ""))
    return m.group(1) if m else None


def boot_done_patterns(access: str) -> list[re.Pattern]:
    """The console's signs that a boot is complete, by how the image is reached: the
    harness's own marker (cmdline), cloud-init's host-key block or its final line
    (nocloud; the harness's guest with a seed prints its marker), a login prompt
    (console-password)."""
    if access == "cmdline":
        return [READY_RE]
    if access == "nocloud":
        return [READY_RE, KEYS_BLOCK_RE, CLOUD_INIT_DONE_RE]
    return [LOGIN_RE]


def boot_done(text: str, access: str) -> re.Match | None:
    for rx in boot_done_patterns(access):
        m = rx.search(text)
        if m:
            return m
    return None


def prepare_script(pubkey_line: str, mac: str) -> str:
    """Run in the console shell of a password-only image: the run's SSH key for the
    logged-in user, the management NIC (found by MAC) with an address (the image's own
    DHCP if it gives one within 10 s, else QEMU's user-network address), sshd started.
    Prints the interface, the ed25519 host key and the boot id."""
    return (
        'umask 077; mkdir -p "$HOME/.ssh" && '
        f"echo '{pubkey_line}' >> \"$HOME/.ssh/authorized_keys\" || exit 11; "
        f"IF=; for n in /sys/class/net/*; do [ \"$(cat $n/address)\" = '{mac}' ] && IF=${{n##*/}}; done; "
        '[ -n "$IF" ] || exit 12; ip link set "$IF" up; i=0; '
        'while [ $i -lt 20 ] && ! ip -4 -o addr show dev "$IF" | grep -q inet; do sleep 0.5; i=$((i+1)); done; '
        'ip -4 -o addr show dev "$IF" | grep -q inet || { ip addr add 10.0.2.15/24 dev "$IF" && '
        'ip route replace default via 10.0.2.2; } || exit 13; '
        "systemctl start ssh 2>/dev/null || systemctl start sshd 2>/dev/null || /usr/sbin/sshd || exit 14; "
        'echo "ACC_IF=$IF"; echo "ACC_HOSTKEY=$(cut -d" " -f2 /etc/ssh/ssh_host_ed25519_key.pub)"; '
        'echo "ACC_BOOT_ID=$(cat /proc/sys/kernel/random/boot_id)"'
    )


PREPARE_ERRORS = {11: "could not write ~/.ssh/authorized_keys", 12: "no interface has the management NIC's MAC",
                  13: "could not give the management NIC an address", 14: "could not start sshd"}


def parse_prepared(out: str) -> dict[str, str]:
    return dict(re.findall(r"(?m)^ACC_(IF|HOSTKEY|BOOT_ID)=(\S*)\r?$", out))
