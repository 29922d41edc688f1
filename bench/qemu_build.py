#!/usr/bin/env python3
"""What the lab's own QEMU costs: a cold build into an empty cache directory, then the
cached start (hash the inputs, verify the install), as `key value` lines.

    .venv/bin/python bench/qemu_build.py                       # labs/local-openeuler-qemu.toml
    .venv/bin/python bench/qemu_build.py --cached-only         # no cold build (seconds)
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import config, qemu_build  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def out(key, value):
    print(f"{key:36} {value:.2f}" if isinstance(value, float) else f"{key:36} {value}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lab", default=str(REPO / "labs" / "local-openeuler-qemu.toml"))
    p.add_argument("--cached-only", action="store_true", help="only the cached start of the lab's own cache")
    a = p.parse_args()
    cfg = config.load(a.lab)
    if not cfg.qemu_source:
        raise SystemExit(f"{a.lab} builds no QEMU ([qemu] source is empty)")
    src = Path(cfg.qemu_source)
    if not a.cached_only:
        cache = Path(tempfile.mkdtemp(prefix="qemu-bench-", dir=cfg.work_dir))
        try:
            t = time.monotonic()
            b = qemu_build.ensure(src, cache, cfg.qemu_source_sha256, log=lambda m: print(f"# {m}", flush=True))
            out("qemu_build.cold_s", time.monotonic() - t)
            out("qemu_build.compile_and_install_s", float(b.info["build_seconds"]))
            t = time.monotonic()
            qemu_build.ensure(src, cache, cfg.qemu_source_sha256, log=lambda m: None)
            out("qemu_build.cached_s", time.monotonic() - t)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    t = time.monotonic()
    b = qemu_build.for_lab(cfg, build=True, log=lambda m: print(f"# {m}", flush=True))
    out("qemu_build.lab_cache_start_s", time.monotonic() - t)
    out("qemu_build.version", b.info["version"])
    out("qemu_build.source", f"{b.info['source']} {b.info['source_id']}")


if __name__ == "__main__":
    main()
