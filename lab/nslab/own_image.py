"""A lab config for the namespace lab host with the user's own guest image, as a lab
engineer with an openEuler image would write it: `python -m lab.nslab.own_image OUT.toml`.

The image is the harness's password-only Debian image (root password, no cloud-init, as
openEuler's published images come), named by its path on this machine, where the lab host
cannot see it: the run must copy it there (cached by content).  Nothing else differs from
labs/nslab.toml, so the same lab host is started for it.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from .. import cloud_image, config

REPO = Path(__file__).resolve().parents[2]


def write(out: Path, base: Path = REPO / "labs" / "nslab.toml",
          password_lab: Path = REPO / "labs" / "local-password-image.toml") -> Path:
    pw = config.load(password_lab)
    img = cloud_image.image(pw.work_dir / "images", pw.image)       # built here (cached)
    text = base.read_text()
    guest = (f'[guest]\n# the user\'s own image, on this machine only (copied to the lab host by the harness)\n'
             f'image = "{img.root}"\naccess = "console-password"\nuser = "{pw.guest_user}"\n'
             f'password_file = "{pw.password_file}"\nmemory_mib = {pw.memory_mib}\n\n')
    text, n = re.subn(r"(?ms)^\[guest\]\n.*?(?=^\[)", guest, text)
    if n != 1:
        raise config.LabConfigError(f"{base}: no [guest] section to replace")
    text = text.replace('name = "nslab"', 'name = "nslab-own-image"', 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# Written by python -m lab.nslab.own_image from {base.name}\n" + text)
    config.load(out)            # the harness's own validation, before anyone runs it
    return out


if __name__ == "__main__":
    print(write(Path(sys.argv[1])))
