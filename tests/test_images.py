"""The image cache: entries are whole or rebuilt, old ones pruned, overlays never touch the base."""
import json
import os
import time
from pathlib import Path

from lab import images
from lab.hostexec import LabPath, LocalHost
from lab.arch import profile


def fake_entry(cache, digest, age=0):
    d = cache / f"guest-x86_64-{digest}"
    d.mkdir(parents=True)
    for f in images.IMAGE_FILES:
        (d / f).write_bytes(f"{f}-{digest}".encode())
    files = {f: images.sha256_file(d / f) for f in images.IMAGE_FILES}
    (d / "manifest.json").write_text(json.dumps({"digest": digest, "files": files}))
    t = time.time() - age
    os.utime(d / "manifest.json", (t, t))
    return d


def test_a_corrupted_or_partial_entry_is_not_used(tmp_path):
    d = fake_entry(tmp_path, "aaaa")
    assert images._complete(d)
    (d / "root.qcow2").write_bytes(b"garbage")
    assert not images._complete(d), "a flipped image must be rebuilt"
    d2 = fake_entry(tmp_path, "bbbb")
    (d2 / "kernel").unlink()
    assert not images._complete(d2)
    d3 = fake_entry(tmp_path, "cccc")
    (d3 / "manifest.json").write_text("{not json")
    assert not images._complete(d3)


def test_prune_keeps_the_most_recently_used(tmp_path):
    for i, digest in enumerate(("old1", "old2", "new1", "new2", "new3")):
        fake_entry(tmp_path, digest, age=1000 - i * 100)
    images.prune(tmp_path, profile("x86_64"), keep=3, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.glob("guest-*")) == [
        "guest-x86_64-new1", "guest-x86_64-new2", "guest-x86_64-new3"]


def test_overlay_leaves_the_base_untouched(tmp_path):
    host = LocalHost()
    base = images.create_image(host, LabPath(tmp_path) / "base.qcow2", "8M")
    before = images.sha256_file(Path(base))
    ov = images.create_overlay(host, base, LabPath(tmp_path) / "ov.qcow2")
    info = images.image_info(host, ov)
    assert info["backing-filename"] == str(base) and info["format"] == "qcow2"
    assert images.sha256_file(Path(base)) == before
