"""The nested lab's pieces that need no L1: its config agrees with the L1 that is
started, the mirror comes from the machine's apt sources, the QEMU command line
carries the hardware the inventory lists.  L1 itself: `./harness nested`."""
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest

from lab import config, debroot
from lab.nested import __main__ as nested, image, l1
from lab.nested.__main__ import DEFAULT_CONFIG, HARDWARE_CLAIMS, layout
from lab import claims


def test_nested_config_and_l1_agree():
    cfg = config.load(DEFAULT_CONFIG)
    lay = layout(cfg)
    u = urlparse(cfg.libvirt_uri)
    q = parse_qs(u.query)
    assert u.scheme == "qemu+ssh" and u.hostname == "127.0.0.1" and u.port == cfg.shell_port
    assert q["keyfile"] == [cfg.shell_key_file] == [str(lay.key)]
    assert q["command"] == [str(lay.ssh)], "libvirt's ssh must pin L1's host key"
    assert cfg.shell_known_hosts == str(lay.known_hosts)
    assert not cfg.on_this_machine and cfg.virt_type == "kvm"
    assert cfg.fault_backend == "dm-error" and cfg.boot_retries > 0
    assert cfg.ssh_port_base - cfg.shell_port >= 10, "guest forwards (on L1) and L1's own forward stay apart"


def test_hardware_claims_are_known_and_need_hardware():
    families = {c.split("-")[0] for c in claims.CLAIMS}
    for item in HARDWARE_CLAIMS.split(","):
        assert item in claims.CLAIMS or item in families
        ids = [c for c in claims.CLAIMS if c == item or c.split("-")[0] == item]
        assert all(claims.get(c).requires for c in ids), f"{item}: the nested run is for hardware claims"


def test_qemu_command_line_carries_the_inventory(tmp_path):
    cfg = config.load(DEFAULT_CONFIG)
    lay = l1.Layout(tmp_path)
    img = image.L1Image(tmp_path / "img", "d")
    argv = l1.qemu_argv(lay, img, tmp_path / "o.qcow2", tmp_path / "u.img", cfg.shell_port)
    line = " ".join(argv)
    assert f"hostfwd=tcp:127.0.0.1:{cfg.shell_port}-:22" in line, "L1 is reached only through 127.0.0.1"
    assert "intel-iommu,intremap=on,caching-mode=on" in line and "intel_iommu=on" in line
    # root ports at fixed slots 0x10.. give the fixed bus numbers the inventory lists
    assert re.search(r"pcie-root-port,id=rp1,chassis=1,addr=0x10 .*igb,bus=rp1", line)
    assert cfg.inventory.sriov_pfs[0].bdf == "0000:01:00.0"
    assert re.search(r"pcie-root-port,id=rp2,chassis=2,addr=0x11 .*e1000e,bus=rp2", line)
    assert {d.bdf for d in cfg.inventory.pci} == {"0000:02:00.0", "0000:04:01.0", "0000:04:02.0"}
    assert line.count("e1000,bus=pb1") == 2, "two devices behind one PCIe-to-PCI bridge: one IOMMU group"
    assert "usb-storage,bus=xhci.0" in line and cfg.inventory.usb[0].vendor == "46f4"
    assert "restrict=on" in line, "the igb's network cannot reach beyond QEMU"
    assert "-nodefaults" in argv and str(lay.pidfile) in argv


def test_apt_mirrors_from_deb822_and_one_line_sources(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://src.example/\nSuites: trixie\n")
    (etc / "sources.list").write_text("# comment\ndeb [arch=amd64] http://other.example/debian bookworm-backports main\n")
    m = debroot.apt_mirrors(etc)
    assert m == {"bookworm": "http://mirror.example/debian", "bookworm-updates": "http://mirror.example/debian",
                 "bookworm-security": "http://mirror.example/debian-security",
                 "bookworm-backports": "http://other.example/debian"}


def test_stop_without_l1_is_a_no_op(tmp_path):
    assert l1.stop(l1.Layout(tmp_path), log=lambda m: None) == []
    assert l1.running_pid(l1.Layout(tmp_path)) is None


def test_ssh_wrapper_pins_the_host_key(tmp_path):
    lay = l1.Layout(tmp_path)
    l1.ensure_keys(lay)
    text = lay.ssh.read_text()
    assert f"UserKnownHostsFile={lay.known_hosts}" in text and "StrictHostKeyChecking=yes" in text
    assert lay.key.exists() and lay.host_key.exists() and Path(str(lay.host_key) + ".pub").exists()


def test_l1_has_no_ram_above_4g_so_vf_bars_stay_low(tmp_path, monkeypatch):
    monkeypatch.delenv(l1.TRACE_ENV, raising=False)
    argv = l1.qemu_argv(l1.Layout(tmp_path), image.L1Image(tmp_path / "img", "d"), tmp_path / "o", tmp_path / "u", 22790)
    mib = int(argv[argv.index("-m") + 1])
    assert mib < 2816, "q35 puts RAM above 4 GiB from 2816 MiB on; then the igb VF BARs go above 4 GiB too"
    assert "-trace" not in argv and "-monitor" not in argv


class _Resource:
    """A host whose PF sysfs resource file is recorded text."""
    def __init__(self, text):
        self.text = text

    def run(self, *argv, **kw):
        assert argv == ("cat", f"/sys/bus/pci/devices/{l1.L1_PF}/resource")
        return type("R", (), {"stdout": self.text})()


# L1's igb PF, recorded: BARs 0-3, ROM, then the IOV BARs (lines 7-12)
_PF_LOW = """0x00000000fe800000 0x00000000fe81ffff 0x0000000000040200
0x00000000fe820000 0x00000000fe83ffff 0x0000000000040200
0x000000000000e000 0x000000000000e01f 0x0000000000040101
0x00000000fe840000 0x00000000fe843fff 0x0000000000140204
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fe800000 0x00000000fe81ffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fe820000 0x00000000fe83ffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
"""


def test_vf_bars_above_4g_are_refused_with_the_reason():
    l1.check_vf_bars(_Resource(_PF_LOW))
    high = _PF_LOW.replace("0x00000000fe800000 0x00000000fe81ffff 0x000000000014220c",
                           "0x000000c040000000 0x000000c04001ffff 0x000000000014220c")
    with pytest.raises(Exception, match=r"VF BAR 0 is at 0xc040000000.*above 4 GiB.*2816 MiB"):
        l1.check_vf_bars(_Resource(high))


def test_trace_hook_logs_to_the_lab_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(l1.TRACE_ENV, "igb_set_vfmailbox, igb_core_vf_reset")
    lay = l1.Layout(tmp_path)
    argv = l1.qemu_argv(lay, image.L1Image(tmp_path / "img", "d"), tmp_path / "o", tmp_path / "u", 22790)
    assert argv[-8:] == ["-trace", "enable=igb_set_vfmailbox", "-trace", "enable=igb_core_vf_reset",
                         "-D", str(tmp_path / "l1-trace.log"), "-monitor", f"unix:{lay.state / 'monitor.sock'},server,nowait"]


SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def suites_of(cmd):
    """What the nested runner starts its suites with (SIGINT made deliverable)."""
    from lab import labctl
    return labctl.suites_process(cmd)


@pytest.fixture
def dead_l1(tmp_path, monkeypatch):
    """A nested run whose L1 is never running (no pid file): to watch(), it died."""
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    monkeypatch.setenv("ACC_REPORTS_DIR", str(tmp_path / "reports"))
    lay = l1.Layout(tmp_path / "lab")
    lay.state.mkdir(parents=True)
    lay.console.write_text("[ 99.1] Kernel panic - not syncing: corrupted stack end detected\n")
    calls = []

    def run(children):
        children = iter(children)

        def suites():
            calls.append("suites")
            return suites_of(next(children))
        return nested.run(SimpleNamespace(shell_port=22790, path=DEFAULT_CONFIG, qemu_source=""), lay, SimpleNamespace(pytest_args=[]),
                          start=lambda *a: calls.append("start") or SimpleNamespace(boot_s=1.0),
                          stop=lambda *a: calls.append("stop"), suites=suites)
    return SimpleNamespace(run=run, calls=calls, reports=tmp_path / "reports")


def test_a_run_whose_l1_died_runs_once_more_on_a_fresh_l1(dead_l1):
    rc = dead_l1.run([SLEEPER, [sys.executable, "-c", "pass"]])
    assert rc == 0 and dead_l1.calls == ["start", "suites", "stop", "start", "suites", "stop"]
    kept = (dead_l1.reports / "l1-console-attempt1.log").read_text()
    assert "corrupted stack end" in kept, "the dead L1's console is kept as evidence"


def test_a_second_l1_death_fails_the_run(dead_l1):
    rc = dead_l1.run([SLEEPER] * nested.ATTEMPTS)
    assert rc == nested.L1_DIED and dead_l1.calls.count("suites") == nested.ATTEMPTS
