"""Which set-up a controller needs for a lab config, decided before anything is installed:
run as a script by `./harness` with the system's python3 (standard library only; the
`lab` package itself needs libvirt-python, which the set-up installs).

    python3 lab/labkind.py [LAB_CONFIG]    prints "local<TAB>why" or "remote<TAB>tools"

(tools: the programs a remote lab's controller runs itself: OpenSSH's `ssh` for
libvirt's qemu+ssh, `genisoimage` for a cloud image's NoCloud seed)

"remote": every lab host is reached over SSH (`[shell] address`), its guest image is the
user's own (a path or `lab-host:/path`), and no QEMU is built from source: the
controller needs only Python, the libvirt client library and the venv; no apt, no
daemons, no root.  Anything else ("local") is set up as this machine's lab: Debian
packages, libvirtd, the harness's image builds.  Full validation stays with
`lab/config.py`; this reads only what decides the kind.
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILT_ON_CONTROLLER = {"default", "debian12-cloud", "debian12-password"}


def host_tables(path: Path) -> list[dict]:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    if "hosts" not in data:
        return [data]
    out = []
    for e in data["hosts"]:
        out += host_tables((path.parent / e["include"]).resolve()) if "include" in e else [e]
    return out


def why_local(path: Path) -> list[str]:
    """What makes this lab need this machine's set-up (empty: a remote lab)."""
    why = []
    for t in host_tables(path):
        name = t.get("host", {}).get("name", "?")
        if not t.get("shell", {}).get("address"):
            why.append(f"{name} is this machine (no [shell] address)")
        image = t.get("guest", {}).get("image", "default")
        if image in BUILT_ON_CONTROLLER:
            why.append(f"{name}'s guest image {image!r} is built here from Debian packages")
        if t.get("qemu", {}).get("source"):
            why.append(f"{name}'s QEMU is built here from source")
    return why


def controller_tools(path: Path) -> list[str]:
    """The programs this machine runs for a remote lab (beside Python and the venv)."""
    tools = ["ssh"]
    if any(t.get("guest", {}).get("access") == "nocloud" for t in host_tables(path)):
        tools.append("genisoimage")
    return tools


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else REPO / "labs" / "local.toml"
    try:
        why = why_local(path)
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        print(f"local\t(lab config {path} not read here: {e}; the harness's validation will say more)")
        return 0
    print("remote\t" + " ".join(controller_tools(path)) if not why else "local\t" + "; ".join(why))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
