"""Whose problem a libvirt refusal is, from libvirt's own message.

A define, start or attach that libvirt refuses is a finding about the product
(`DomainError`, an AssertionError) unless the message shows that the lab could
not do its part:

- the lab host's security driver or file permissions kept QEMU from a file
  (SELinux labels, AppArmor profiles, DAC ownership): `SecurityRefusal`, naming
  the file, the driver and the fix;
- a helper the harness started for the test (nbdkit's socket, a bridge, a
  vhost-user backend) did not answer when QEMU connected to it:
  `HelperNotReady`.

Both are `LabError`s: reported as lab problems, never as product defects.
"""
from __future__ import annotations

import re

from .errors import LabError


class SecurityRefusal(LabError):
    """The lab host's security driver or file permissions refused QEMU a file."""

    def __init__(self, message: str, driver: str, path: str | None):
        super().__init__(message)
        self.driver, self.path = driver, path


class HelperNotReady(LabError):
    """A helper the harness started (fault backend, bridge) did not answer QEMU."""


# (driver, pattern): the first match names the driver.  The texts are libvirt's and
# QEMU's own (security_selinux.c, security_apparmor.c, security_dac.c, storage
# access checks, QEMU's open() errors passed through libvirt).
DAC = "file permissions (DAC: the QEMU user cannot open it)"
SECURITY = [
    ("SELinux", re.compile(r"security context|SELinux|svirt_|unable to set security label|"
                           r"setfilecon|getfilecon", re.I)),
    ("AppArmor", re.compile(r"AppArmor|apparmor|virt-aa-helper", re.I)),
    (DAC,
     re.compile(r"\(as uid:\d+, gid:\d+\)|unable to set user and group|Permission denied|"
                r"Operation not permitted", re.I)),
]
FIXES = {
    "SELinux": "label the harness's work dir for QEMU (semanage fcontext -a -t virt_image_t '<work_dir>(/.*)?' "
               "&& restorecon -R <work_dir>), or put [shell] work_dir under /var/lib/libvirt/images; "
               "`ausearch -m avc -ts recent` on the lab host shows the denial",
    "AppArmor": "the libvirt-<uuid> profile does not allow the file: add the harness's work dir to "
                "/etc/apparmor.d/local/abstractions/libvirt-qemu; `dmesg | grep DENIED` shows the denial",
    DAC: "make the file and every directory above it reachable by the QEMU user (user `qemu` on openEuler, "
         "`libvirt-qemu` on Debian), or keep libvirt's dynamic_ownership = 1 in qemu.conf so libvirt "
         "chowns the images it is given",
}
# "Failed to connect to '<path>': Connection refused" (QEMU's NBD/chardev client), "Failed to
# connect socket <path>: Connection refused" (libvirt's own), and the unix socket that is gone.
HELPER = re.compile(r"Failed to connect(?: socket)?(?: to)? '?(/[^':\s]+)'?[:,]?\s*(Connection refused|"
                    r"No such file or directory|Resource temporarily unavailable)", re.I)
QUOTED_PATH = re.compile(r"'(/[^']+)'")


def classify(what: str, message: str, harness_dirs=()) -> LabError | None:
    """The lab problem that `message` (libvirt's refusal of `what`) shows, or None when it is
    the product's answer.  `harness_dirs`: where the harness's own files are on the lab host
    (a helper that fails there is the lab's)."""
    helper = HELPER.search(message)
    if helper and any(helper.group(1).startswith(str(d).rstrip("/") + "/") for d in harness_dirs):
        return HelperNotReady(f"{what}: the harness's helper at {helper.group(1)} did not answer QEMU "
                              f"({helper.group(2)}): a lab problem, not a finding. libvirt said: {message}")
    for driver, pattern in SECURITY:
        if pattern.search(message):
            paths = QUOTED_PATH.findall(message)
            path = next((p for p in paths if not p.startswith("/proc/")), None)
            fix = FIXES[driver]
            return SecurityRefusal(f"{what}: refused by the lab host's {driver}"
                                   f"{f' for {path}' if path else ''}: a lab problem, not a finding. "
                                   f"Fix: {fix}. libvirt said: {message}", driver, path)
    return None
