"""The harness's QEMU build on a remote lab host: copied once per build (the build's key
names it there), unpacked and renamed into place whole, checked to run there, and a
binary that does not run names the missing libraries and the fix."""
import json
import os
import stat
from pathlib import Path

import pytest

from lab import qemu_build
from lab.hostexec import LabPath, LocalHost

VERSION = "8.2.0"


class FarHost(LocalHost):
    """A lab host whose files are on this machine but which the harness treats as remote."""
    local = False

    def __init__(self):
        super().__init__("far")
        self.copied = []

    def put(self, local, remote, progress=None, readonly=False):
        self.copied.append(Path(local).name)
        super().put(local, remote, readonly=readonly)


def fake_build(tmp_path, body=f'echo "QEMU emulator version {VERSION} (openEuler)"') -> qemu_build.QemuBuild:
    prefix = tmp_path / "controller" / "qemu-0123456789abcdef"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "share" / "qemu").mkdir(parents=True)
    (prefix / "share" / "qemu" / "bios-256k.bin").write_bytes(b"\0" * 4096)
    exe = prefix / "bin" / qemu_build.BINARY
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    info = {"vendor": "openEuler", "version": VERSION, "source": "q.tar.xz", "source_id": "sha256:x",
            "emulator_sha256": qemu_build._sha256_file(exe)}
    (prefix / "build-info.json").write_text(json.dumps(info))
    return qemu_build.QemuBuild(prefix, info)


def test_a_build_reaches_a_remote_lab_host_once_and_runs_there(tmp_path):
    b = fake_build(tmp_path)
    host, cache = FarHost(), LabPath(tmp_path / "labhost" / "qemu")
    said = []
    emu = qemu_build.install_on(b, host, cache, log=said.append)
    assert emu == str(cache / b.prefix.name / "bin" / qemu_build.BINARY)
    assert Path(emu).read_bytes() == b.emulator.read_bytes()
    assert (Path(cache) / b.prefix.name / "share" / "qemu" / "bios-256k.bin").exists()
    assert len(host.copied) == 1 and any("to lab host far" in s for s in said), said
    assert not [p for p in os.listdir(cache) if p != b.prefix.name], "the archive or a temporary tree was left"
    assert qemu_build.install_on(b, host, cache) == emu and len(host.copied) == 1, "a second run copied again"


def test_a_half_unpacked_copy_is_no_install(tmp_path):
    b = fake_build(tmp_path)
    cache = Path(tmp_path / "labhost" / "qemu")
    (cache / b.prefix.name / "bin").mkdir(parents=True)   # no .complete: an older, broken copy
    host = FarHost()
    with pytest.raises(qemu_build.QemuBuildError):
        # the rename onto a non-empty directory fails, and there is no complete install there
        qemu_build.install_on(b, host, LabPath(cache))
    assert len(host.copied) == 1


def test_another_build_under_the_same_name_is_refused_with_the_fix(tmp_path):
    b = fake_build(tmp_path)
    cache = Path(tmp_path / "labhost" / "qemu")
    (cache / b.prefix.name).mkdir(parents=True)
    (cache / b.prefix.name / ".complete").write_text("f" * 64 + "\n")
    with pytest.raises(qemu_build.QemuBuildError) as e:
        qemu_build.install_on(b, FarHost(), LabPath(cache))
    assert "different QEMU build" in str(e.value) and "fix: remove" in str(e.value)


def test_a_binary_that_does_not_run_there_names_the_fix(tmp_path):
    b = fake_build(tmp_path, body='echo "error while loading shared libraries: libslirp.so.0" >&2; exit 127')
    with pytest.raises(qemu_build.QemuBuildError) as e:
        qemu_build.install_on(b, FarHost(), LabPath(tmp_path / "labhost" / "qemu"))
    msg = str(e.value)
    assert "does not run on lab host far" in msg and "libslirp.so.0" in msg and "[qemu] emulator" in msg
    assert "\n" not in msg
