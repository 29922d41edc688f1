"""Configuring a Virtual Serial Port (SER-1..3): a pty serial port with a
serial console, reached through `virsh console` and `virsh start --console`."""
import re
import secrets

import pytest

from fixtures.api import claims, shared_vm
from lab.domain import VMSpec
from lab.timeouts import Deadline

PROMPT_BUDGET = 30


guest_vm = shared_vm(lambda: VMSpec("serial"))


@claims("SER-1")
def test_pty_console_gives_an_interactive_shell(guest_vm):
    xml = guest_vm.domain.live_xml()
    serial = xml.find("devices/serial[@type='pty']")
    assert serial is not None and serial.find("source").get("path", "").startswith("/dev/pts/")
    assert xml.find("devices/console[@type='pty']/target").get("type") == "serial"
    with guest_vm.console() as con:
        con.wait_connected(Deadline(10, "virsh console"))
        con.sync_shell(Deadline(PROMPT_BUDGET, "a console shell"))
        out = con.run("cat /proc/sys/kernel/random/boot_id", Deadline(10, "boot id over the console")).stdout
        assert out.strip() == guest_vm.boot_id, "the console shell belongs to this guest"
        token = secrets.token_hex(6)
        r = con.run(f"echo {token} > /tmp/console-proof; cat /tmp/console-proof; false",
                    Deadline(10, "a command over the console"), check=False)
        assert r.rc == 1 and r.stdout.strip() == token
    # what was typed on the console really happened in the guest
    assert guest_vm.guest.check_output("cat /tmp/console-proof").strip() == token


@claims("SER-2")
def test_start_with_console_misses_no_boot_message(vms):
    vm = vms.define(VMSpec("serial-start"))
    boot = vm.boot_deadline(f"{vm.name} to boot with its console attached")
    con = vm.start_with_console(vm.dir / "start-console.log")
    con.expect(r"Linux version [^\r\n]+", boot, "the kernel's first line")
    # keep reading the console until it shows the end of the boot (the harness's marker,
    # cloud-init's host keys or a login prompt): everything in between is the boot
    con.expect([p.pattern for p in vm.access.boot_done_patterns()], boot, "the end of the boot")
    vm.wait_ready(boot)
    con.close()
    transcript = con.transcript.read_bytes().decode(errors="replace").replace("\r", "")
    # The guest's own record of its boot: every message the console was asked to
    # print (level < 7) before userspace quietened it must be in the transcript.
    raw = vm.guest.check_output("dmesg -r")
    boot_lines = []
    for line in raw.splitlines():
        m = re.match(r"<(\d+)>(.*)", line)
        if not m:
            continue
        level = int(m.group(1)) & 7
        if re.search(r"EXT4-fs \(\w+\): re-mounted", m.group(2)):
            break          # the guest's rcS is running; it quietens the console soon after
        if level < 7:
            boot_lines.append(m.group(2))
    assert boot_lines and any("Linux version" in line for line in boot_lines[:3]), boot_lines[:3]
    missing = [line for line in boot_lines if line not in transcript]
    assert not missing, f"{len(missing)} of {len(boot_lines)} boot messages never reached the console, first: {missing[:3]}"
    first = transcript.find(boot_lines[0])
    assert first >= 0 and not re.search(r"\[\s*\d+\.\d{6}\]", transcript[:first]), \
        "the transcript's first kernel line is the guest's first boot message"


@claims("SER-3")
def test_console_works_without_a_network_path(vms):
    vm = vms.boot(VMSpec("serial-nonet"))
    mgmt = vm.guest.net.by_mac()[vm.mac]
    with vm.console() as con:
        con.wait_connected(Deadline(10, "virsh console"))
        con.sync_shell(Deadline(PROMPT_BUDGET, "a console shell"))
        con.run(f"ip link set {mgmt} down && ip addr flush dev {mgmt}", Deadline(10, "taking the network down"))
        out = con.run("ip -4 addr show scope global; ip route show", Deadline(10, "the guest's addresses")).stdout
        assert "inet " not in out and "default" not in out, f"the guest still has layer 3: {out!r}"
        # from the host, the guest is now unreachable over the network
        with pytest.raises(TimeoutError):
            vm.access.connect_ssh(Deadline(4, "SSH to a guest without network")).close()
        token = secrets.token_hex(6)
        out = con.run(f"echo {token} | tee /root/offline-proof; cat /proc/sys/kernel/random/boot_id",
                      Deadline(10, "a command over the console")).stdout
        assert out.split() == [token, vm.boot_id]
        assert con.run("cat /root/offline-proof", Deadline(10, "reading back")).stdout.strip() == token
