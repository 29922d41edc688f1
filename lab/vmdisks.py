"""A VM's own files on the lab host: the overlay on the run's image (its root disk), the
NoCloud seed of a cloud image, and scratch images a test asks for; all in the VM's
directory there, removed with it."""
from __future__ import annotations

from pathlib import Path

from .images import create_image, create_nocloud_seed, create_overlay, image_sha256


class VmDisks:
    def __init__(self, host, hdir, local_dir: Path, name: str, lab):
        """`hdir`: the VM's directory on the lab host; `local_dir`: its directory here."""
        self.host, self.hdir, self.local_dir, self.name = host, hdir, local_dir, name
        self._lab = lab

    @property
    def overlay(self):
        """The VM's root disk on the lab host: a qcow2 overlay on the run's image."""
        return self.hdir / "root.qcow2"

    @property
    def seed(self):
        """The NoCloud seed on the lab host (images with access = 'nocloud')."""
        return self.hdir / "seed.iso"

    def own(self) -> dict[str, str]:
        """The disks the harness gives every VM, target -> path on the lab host (its own record)."""
        disks = {"vda": str(self.overlay)}
        if self._lab.image.access == "nocloud":
            disks["sdzz"] = str(self.seed)
        return disks

    def make(self) -> None:
        """The overlay and, for a NoCloud image, the seed (made here, copied to the lab host),
        once per VM: what the domain's XML names must exist before it is defined."""
        if self.host.exists(self.overlay):
            return
        lab = self._lab
        create_overlay(self.host, lab.image.root, self.overlay)
        if lab.image.access == "nocloud":
            local = create_nocloud_seed(self.local_dir / "seed.iso", self.name, "acc-guest", lab.key.public_line,
                                        lab.seed_password_hash)
            self.host.put(local, self.seed)

    def scratch_image(self, name: str, size: str = "64M", fmt: str = "qcow2"):
        """An empty image in the VM's directory on the lab host (removed with the VM)."""
        return create_image(self.host, self.hdir / f"{name}.{fmt}", size, fmt)

    def sha256(self, path, mib: int, fmt: str = "qcow2") -> str:
        """The sha256 of the first `mib` MiB of an image's guest-visible content."""
        return image_sha256(self.host, path, mib, fmt)
