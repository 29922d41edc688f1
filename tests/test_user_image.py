"""The user's own guest image: named by its content (hashed once per file identity),
copied to a remote lab host once per content (an interrupted copy is no cache entry),
or named as already on the lab host; every error names the host, the path and the fix."""
import os
from pathlib import Path

import pytest

from lab import config, images
from lab.hostexec import LabPath, LocalHost


class FarHost(LocalHost):
    """A lab host whose files happen to be on this machine but which the harness must
    treat as remote (copies, not links), counting what is copied."""
    local = False

    def __init__(self, fail_after: int | None = None):
        super().__init__("far")
        self.copied, self.fail_after = [], fail_after

    def put(self, local, remote, progress=None, readonly=False):
        if not readonly:
            return super().put(local, remote)
        if self.fail_after is not None and len(self.copied) >= self.fail_after:
            raise OSError(28, "No space left on device")
        self.copied.append(Path(local).name)
        size = Path(local).stat().st_size
        if progress:
            for done in range(0, size + 1, max(size // 20, 1)):
                progress(done, size)
        super().put(local, remote)


def test_an_image_is_hashed_once_per_file_identity_and_again_when_it_changes(tmp_path, monkeypatch):
    img = tmp_path / "my.qcow2"
    img.write_bytes(b"A" * 4096)
    first = images.file_sha256(img, tmp_path / "cache")
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: (reads.append(p), real_open(p, *a, **k))[1])
    assert images.file_sha256(img, tmp_path / "cache") == first and img not in reads, "re-read an unchanged image"
    monkeypatch.undo()
    img.write_bytes(b"B" * 4096)
    os.utime(img, ns=(1, 1))
    assert images.file_sha256(img, tmp_path / "cache") != first


def test_a_controller_image_reaches_a_remote_lab_host_once_per_content(tmp_path):
    img = tmp_path / "openEuler.qcow2"
    img.write_bytes(os.urandom(70 << 20 >> 4) * 16)        # 70 MiB: big enough for progress lines
    said = []
    g = images.user_image(img, tmp_path / "cache", "console-password", "ttyS0", log=said.append)
    host = FarHost()
    up = images.upload(g, host, LabPath(tmp_path / "labhost" / "images"), log=said.append)
    assert host.copied == ["openEuler.qcow2"] and Path(up.root).read_bytes() == img.read_bytes()
    assert up.root.parent.name == f"guest-{g.digest}" and up.access == "console-password"
    assert any("100 %" in s for s in said) and any("to lab host far" in s for s in said), said
    # a second run (or another config naming the same content) copies nothing
    images.upload(images.user_image(img, tmp_path / "cache", "console-password", "ttyS0"), host,
                  LabPath(tmp_path / "labhost" / "images"))
    assert host.copied == ["openEuler.qcow2"]


def test_an_interrupted_copy_is_no_cache_entry_and_the_error_names_host_path_and_fix(tmp_path):
    img = tmp_path / "mine.qcow2"
    img.write_bytes(b"x" * 1024)
    g = images.user_image(img, tmp_path / "cache", "nocloud", "ttyS0")
    with pytest.raises(images.ImageError) as e:
        images.upload(g, FarHost(fail_after=0), LabPath(tmp_path / "labhost" / "images"))
    assert "far:" in str(e.value) and "mine.qcow2" in str(e.value) and "fix:" in str(e.value)
    host = FarHost()
    images.upload(g, host, LabPath(tmp_path / "labhost" / "images"))
    assert host.copied == ["mine.qcow2"], "a failed copy was taken for a cached image"


def test_an_image_named_on_the_lab_host_is_checked_there(tmp_path):
    with pytest.raises(images.ImageError) as e:
        images.on_lab_host(FarHost(), str(tmp_path / "absent.qcow2"), "nocloud", "ttyS0")
    assert "lab host far has no guest image at" in str(e.value) and "absent.qcow2" in str(e.value)
    there = tmp_path / "there.qcow2"
    there.write_bytes(b"y" * 10)
    g = images.on_lab_host(FarHost(), str(there), "nocloud", "ttyS0")
    assert g.root == LabPath(there) and "10 bytes" in g.digest


def test_a_missing_controller_image_names_the_other_way(tmp_path):
    with pytest.raises(images.ImageError) as e:
        images.user_image(tmp_path / "nope.qcow2", tmp_path / "cache", "nocloud", "ttyS0")
    assert "lab-host:/path" in str(e.value)


def test_the_config_takes_an_image_on_the_lab_host_without_looking_on_this_machine(tmp_path):
    p = tmp_path / "lab.toml"
    p.write_text('[host]\nname = "h"\nlibvirt_uri = "qemu:///system"\nvirt_type = "qemu"\n'
                 '[guest]\nimage = "lab-host:/var/lib/images/openEuler-24.03.qcow2"\naccess = "nocloud"\n')
    c = config.load(p)
    assert c.image_on_lab_host == "/var/lib/images/openEuler-24.03.qcow2" and not c.uses_default_image
    p.write_text(p.read_text().replace("lab-host:/var", "lab-host:var"))
    with pytest.raises(config.LabConfigError) as e:
        config.load(p)
    assert "guest.image" in str(e.value) and "lab-host:/path" in str(e.value)
