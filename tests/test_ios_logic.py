"""Disk I/O suspension logic without a lab: the storage's request log, retry gaps, the
two forms of the guide's settings, QEMU's retry probe on recorded `-device help`, and
the QEMU build's input checks (every bad source is one clear error)."""
import json
import subprocess
from pathlib import Path

import pytest

from lab import certification, config, qemu_build
from lab import xml as X
from lab.arch import profile
from lab.faults import NbdkitBackend, parse_nbd_log
from lab.hostexec import LocalHost
from lab.hostfacts import Capability, probe_qemu_retry, retry_form
from lab.hostexec import host_result
from lab.retry import RetryPolicy, failed_attempts, most_retried, retry_disk

DATA = Path(__file__).parent / "data" / "ios"


# ------------------------------------------------------------------ the storage's record

def test_nbdkit_log_gives_each_request_with_its_time_and_error():
    reqs = parse_nbd_log((DATA / "nbdkit-requests.log").read_text())
    assert [(r.op, r.offset, r.count, r.error) for r in reqs] == [("Write", 0, 4096, "EIO"), ("Write", 0, 4096, "EIO")]
    assert reqs[1].at - reqs[0].at == pytest.approx(2.002463, abs=1e-6)


def test_nbdkit_log_request_without_reply_is_not_counted_as_failed():
    text = ("2026-11-28 10:10:30.801521 connection=2 Read id=7 offset=0x200 count=0x200 ...\n"
            "2026-11-28 10:10:30.801521 connection=1 Read id=7 offset=0x0 count=0x200 ...\n"
            "2026-11-28 10:10:30.901558 connection=1 ...Read id=7 return=0\n")
    a, b = parse_nbd_log(text)
    assert (a.offset, a.error, a.failed) == (0x200, "?", False), "connection 2's id 7 has no reply yet"
    assert (b.error, b.failed) == (None, False)


def test_retries_are_the_same_request_failing_again_not_many_requests_failing_once():
    text = "".join(f"2026-01-01 00:00:0{i}.000000 connection=1 Read id={i} offset={hex(i * 512)} count=0x200 ...\n"
                   f"2026-01-01 00:00:0{i}.000100 connection=1 ...Read id={i} return=-1 error=EIO\n" for i in range(4))
    text += "".join(f"2026-01-01 00:00:0{i}.500000 connection=1 Write id={10 + i} offset=0x0 count=0x1000 ...\n"
                    f"2026-01-01 00:00:0{i}.500100 connection=1 ...Write id={10 + i} return=-1 error=EIO\n"
                    for i in range(3))
    reqs = parse_nbd_log(text)
    assert failed_attempts(reqs).count == 7
    again = most_retried(reqs)
    assert again.count == 3 and again.gaps == pytest.approx([1.0, 1.0])
    assert again.per_second == pytest.approx(1.0)
    assert "3 failed attempts" in again.summary()
    # a second fault on the same disk is judged on its own attempts, not the first fault's
    first_write = min(r.at for r in reqs if r.op == "Write")
    assert most_retried(reqs, since=first_write).times == tuple(r.at for r in reqs if r.op == "Write")[1:]
    assert most_retried(reqs, since=max(r.at for r in reqs)).count == 0


def test_nbdkit_backend_logs_outside_the_error_filter_and_delays_inside(tmp_path):
    cmd = NbdkitBackend(LocalHost(), tmp_path, write_delay_ms=600).command()
    filters = [a for a in cmd if a.startswith("--filter=")]
    assert filters == ["--filter=log", "--filter=delay", "--filter=error"], \
        "the log sees what QEMU sent and got; the delay applies to failing writes too"
    assert "delay-write=600ms" in cmd and any(a.startswith("logfile=") for a in cmd)
    assert "--filter=delay" not in NbdkitBackend(LocalHost(), tmp_path).command()


# ------------------------------------------------------------------ the two forms

class FakeFault:
    def disk(self, target, bus="virtio", **driver):
        return X.disk("/run/x.sock", target=target, bus=bus, fmt="raw", kind="network", **driver)


def test_xml_form_is_the_guides_driver_attributes():
    d, ov = retry_disk(FakeFault(), "xml", "vdb", RetryPolicy(interval=2000, timeout=10000), "acc-f")
    drv = d.find("driver")
    assert (drv.get("error_policy"), drv.get("rerror_policy"), drv.get("retry_interval"), drv.get("retry_timeout")) \
        == ("retry", "retry", "2000", "10000")
    assert d.find("alias").get("name") == "ua-acc-f" and ov == {}


def test_override_form_sets_only_what_the_test_sets_on_qemus_device():
    d, ov = retry_disk(FakeFault(), "override", "vdb", RetryPolicy(werror=None, interval=500), "acc-r")
    assert d.find("driver").get("error_policy") is None, "libvirt without the extension would refuse it"
    assert ov == {"ua-acc-r": {"rerror": "retry", "retry_interval": 500}}
    dom = X.domain("x", virt_type="qemu", arch=profile("x86_64"), devices=[d], overrides=ov, emulator="/opt/q/bin/qemu")
    text = X.to_string(dom)
    assert "<emulator>/opt/q/bin/qemu</emulator>" in text
    props = dom.findall(f"{{{X.QEMU_NS}}}override/{{{X.QEMU_NS}}}device[@alias='ua-acc-r']/"
                        f"{{{X.QEMU_NS}}}frontend/{{{X.QEMU_NS}}}property")
    assert [(p.get("name"), p.get("type"), p.get("value")) for p in props] == \
        [("rerror", "string", "retry"), ("retry_interval", "signed", "500")]
    with pytest.raises(ValueError):
        retry_disk(FakeFault(), "none", "vdb", RetryPolicy(), "acc-x")


def test_qemu_commandline_is_handed_over_as_it_is():
    dom = X.domain("x", virt_type="qemu", arch=profile("x86_64"), qemu_args=["-device", "virtio-blk-pci,werror=retry"])
    args = [a.get("value") for a in dom.findall(f"{{{X.QEMU_NS}}}commandline/{{{X.QEMU_NS}}}arg")]
    assert args == ["-device", "virtio-blk-pci,werror=retry"]


def test_retry_form_prefers_the_documented_xml():
    yes, no = Capability("x", True, ""), Capability("x", False, "")
    assert retry_form({"error-policy-retry": yes, "qemu-retry": yes})[0] == "xml"
    form, why = retry_form({"error-policy-retry": no, "qemu-retry": yes})
    assert form == "override" and "IOS-1 and IOS-6 stay unproven" in why
    assert retry_form({"error-policy-retry": no, "qemu-retry": no})[0] == "none"


class HelpHost:
    local, name = True, "rec"

    def __init__(self, text):
        self.text = text

    def run(self, *argv, check=True, input=None, timeout=120):
        return host_result("rec", argv, 0, self.text, "")


def test_qemu_retry_probe_on_recorded_device_help():
    ok, why = probe_qemu_retry(HelpHost((DATA / "openeuler-virtio-blk-pci-help.txt").read_text()), "/q")
    assert ok, why
    ok, why = probe_qemu_retry(HelpHost((DATA / "debian-7.2-virtio-blk-pci-help.txt").read_text()), "/usr/bin/q")
    assert not ok and "retry_interval" in why and "upstream" in why
    assert probe_qemu_retry(HelpHost(""), "")[0] is False


def test_certification_says_how_a_claim_was_proven():
    o = certification.TestOutcome("suites/test_ios.py::t", ("IOS-2",), "passed", how="QEMU device properties")
    md = certification.markdown(certification.build([o], {"IOS-2"}, {"lab.host": "h"}))
    assert "proven with QEMU device properties" in next(line for line in md.splitlines() if "| IOS-2 |" in line)


# ------------------------------------------------------------------ the QEMU build's inputs

def test_qemu_source_errors_name_the_fix(tmp_path):
    with pytest.raises(qemu_build.QemuBuildError, match="does not exist; fix"):
        qemu_build.source_id(tmp_path / "nope.tar.xz")
    with pytest.raises(qemu_build.QemuBuildError, match="not a git checkout"):
        qemu_build.source_id(tmp_path)
    junk = tmp_path / "q.tar.xz"
    junk.write_bytes(b"not a tarball at all")
    with pytest.raises(qemu_build.QemuBuildError, match="not a tar archive"):
        qemu_build.source_id(junk)


def test_qemu_source_pin_is_checked(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "VERSION").write_text("8.2.0\n")
    tar = tmp_path / "q.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(tmp_path), "src"], check=True)
    sid = qemu_build.source_id(tar)
    assert sid.startswith("sha256:")
    assert qemu_build.source_id(tar, sid.split(":")[1]) == sid
    with pytest.raises(qemu_build.QemuBuildError, match="but qemu.source_sha256 pins"):
        qemu_build.source_id(tar, "0" * 64)


def test_a_tree_without_the_retry_patches_is_refused(tmp_path):
    for f, text in {"configure": "", "meson.build": "", "VERSION": "8.2.0\n",
                    "include/hw/block/block.h": "DEFINE_PROP_BLOCKDEV_ON_ERROR(\"werror\")"}.items():
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text(text)
    with pytest.raises(qemu_build.QemuBuildError, match="without openEuler's disk I/O suspension patches"):
        qemu_build._check_tree(tmp_path, Path("qemu-8.2.0.tar.xz"))
    (tmp_path / "VERSION").unlink()
    with pytest.raises(qemu_build.QemuBuildError, match="is not a QEMU source tree"):
        qemu_build._check_tree(tmp_path, Path("x.tar.xz"))


def test_keymap_stand_in_emits_empty_maps(tmp_path):
    (tmp_path / "tests" / "fp").mkdir(parents=True)
    (tmp_path / "tests" / "fp" / "meson.build").write_text("libsoftfloat_proj = subproject(...)\n")
    qemu_build._adjust(tmp_path)
    gen = tmp_path / "subprojects" / "keycodemapdb" / "tools" / "keymap-gen"
    out = subprocess.run([str(gen), "code-map", "--lang", "glib2", "--varname", "qemu_input_map_usb_to_qcode",
                          "k.csv", "usb", "qcode"], capture_output=True, text=True, check=True).stdout
    assert "const guint16 qemu_input_map_usb_to_qcode[] = { 0 };" in out
    assert "const guint qemu_input_map_usb_to_qcode_len = 0;" in out
    assert "subdir_done()" in (tmp_path / "tests" / "fp" / "meson.build").read_text()


QEMU_LAB = """
[host]
name = "oe"
libvirt_uri = "{uri}"
virt_type = "qemu"
[qemu]
{qemu}
"""


def bad_qemu(tmp_path, qemu, uri="qemu:///system"):
    p = tmp_path / "lab.toml"
    p.write_text(QEMU_LAB.format(qemu=qemu, uri=uri))
    with pytest.raises(config.LabConfigError) as e:
        config.load(p)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_qemu_section_is_validated(tmp_path):
    (tmp_path / "q.tar.xz").write_bytes(b"x")
    assert "qemu.source" in bad_qemu(tmp_path, 'source = "missing.tar.xz"')
    assert "emulator" in bad_qemu(tmp_path, 'source = "q.tar.xz"\nemulator = "/usr/bin/q"')
    p = tmp_path / "arm.toml"
    p.write_text(QEMU_LAB.format(qemu='source = "q.tar.xz"', uri="qemu:///system").replace(
        'virt_type = "qemu"', 'virt_type = "qemu"\narch = "aarch64"'))
    with pytest.raises(config.LabConfigError) as e:
        config.load(p)
    assert "qemu.source" in str(e.value) and "x86_64-softmmu only" in str(e.value)
    assert "64 lower-case hex" in bad_qemu(tmp_path, 'source = "q.tar.xz"\nsource_sha256 = "abc"')
    assert "without qemu.source" in bad_qemu(tmp_path, 'source_sha256 = "' + "a" * 64 + '"')
    assert "absolute path" in bad_qemu(tmp_path, 'emulator = "qemu-kvm"')
    p = tmp_path / "lab.toml"
    p.write_text(QEMU_LAB.format(qemu='source = "q.tar.xz"', uri="qemu:///system"))
    cfg = config.load(p)
    assert cfg.qemu_source == str(tmp_path / "q.tar.xz") and cfg.emulator == ""


def test_qemu_io_error_events_count_as_one_requests_attempts():
    """QEMU's BLOCK_IO_ERROR events (as libvirt hands them over: QEMU's timestamp and the
    event's data as JSON) become attempts with QEMU's times; only 'retry' ones are retries."""
    from lab.qemuproc import IoErrorLog
    from lab.retry import failed_attempts, most_retried
    log = IoErrorLog(dom=None)
    data = {"device": "", "node-name": "libvirt-2-format", "operation": "write", "action": "retry",
            "nospace": False, "reason": "Input/output error"}
    for i in range(4):
        log._on_event(None, None, "BLOCK_IO_ERROR", 1000 + i, 250000, json.dumps(data), None)
    log._on_event(None, None, "BLOCK_IO_ERROR", 1004, 0, json.dumps({**data, "action": "report"}), None)
    retries = log.events("retry")
    assert [e.op for e in retries] == ["Write"] * 4 and retries[0].device == "libvirt-2-format"
    tries = failed_attempts(retries, "Write")
    assert tries.count == 4 and tries.gaps == [1.0, 1.0, 1.0]
    assert most_retried(retries, since=1000.5).count == 3
    assert len(log.events()) == 5
