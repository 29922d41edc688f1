"""One harness run on one lab host: the config, the libvirt session, the run's
key and image, and every VM it made (undone on close, or swept next time)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import time
from pathlib import Path

import libvirt

from . import cloud_image, images, qemu_build, timeouts
from . import xml as X
from .guest import login
from .arch import profile
from .config import LabConfig
from .domain import VM, VMSpec
from .guest.ssh import RunKey
from .hostexec import sys_root
from .hostleases import HostLease, LeaseHolder, controller_identity, run_lease
from .leases import Lease, try_lock
from .network import Bridge, OvsBridge, vhostuser_socket_dir
from .session import LibvirtFacts, Session, UnansweredJudge
from .timeouts import Deadline
from .undo import UndoStack
from .sweep import PREFIX, sweep


# The first boot of an image in a run, in seconds (scaled by the lab's timeout factor):
# the harness's own guest boots its kernel directly in seconds; a distribution image
# goes through firmware, GRUB, systemd and cloud-init (45 s idle under TCG here).
FIRST_BOOT_BUDGET = {"kernel": 60.0, "firmware": 300.0}
BOOT_BUDGET = FIRST_BOOT_BUDGET["kernel"]


@dataclasses.dataclass(frozen=True)
class OpenedLabHost:
    """A lab host and its lease holder, opened by the caller before the run (to take a slot
    there first); the run closes them with itself."""
    host: object
    leases: LeaseHolder


class Lab:
    def __init__(self, cfg: LabConfig, log=print, opened: OpenedLabHost | None = None):
        """`opened`: the lab host and its lease holder when the caller has them open already;
        else the run opens its own.

        The run is made in stages; each stage registers its undo the moment it succeeded,
        so a stage that fails undoes exactly the stages before it (in reverse), and close()
        undoes all of them after the run's VMs and host changes."""
        self.cfg = cfg
        self.log = log
        self.vms: list[VM] = []
        self._undo = UndoStack()      # the run's host changes (bridges, leases, device state), undone at close
        self._counter = 0
        self._bridge = None
        self._hostside = None
        self._device_leases: dict = {}
        self.arch = profile(cfg.arch)
        self.work_dir = cfg.work_dir
        # unique across the controllers that share a lab host: its time and 24 random bits
        self.run_id = time.strftime("%H%M%S") + secrets.token_hex(3)
        self._stages = UndoStack()    # the stages of the run's making, undone last
        try:
            with self.paced():
                self._claim(opened)
                self._connect()
                self._prepare()
        except BaseException:
            self._stages.unwind()
            raise

    def paced(self):
        """A block whose deadlines scale by this lab host's timeout factor (the fixtures
        enter it around each test and each VM they make)."""
        return timeouts.paced(self.cfg.timeout_factor)

    def _claim(self, opened: OpenedLabHost | None) -> None:
        """This machine's run lock and directory, the lab host, and the run's lease there."""
        runs = self.work_dir / "runs"
        lock_file = runs / f"{self.run_id}.lock"
        self.lock: Lease = try_lock(lock_file)
        self._stages.push(None, lambda: (self.lock.release(), lock_file.unlink(missing_ok=True)))
        self.dir = runs / self.run_id
        self.dir.mkdir(parents=True)
        os.chmod(self.dir, 0o755)
        self._stages.push(None, lambda: shutil.rmtree(self.dir, ignore_errors=True))
        # The lab host's commands and files: this machine, or SSH to a remote lab host.
        self.host = opened.host if opened else self.cfg.host()
        self._stages.push(None, self.host.close)
        self.sys = sys_root(self.host)
        # Alive on the lab host while this lease is held, for every controller that uses it
        self.leases = opened.leases if opened else LeaseHolder(
            self.host, self.cfg.host_work_dir / "leases", controller_identity(self.work_dir), log=self.log)
        self._stages.push(None, self.leases.close)       # the run lease last: until then no sweeper touches the run
        self.leases.owner = controller_identity(self.work_dir, self.run_id)
        # (polled: a sweeper's look at the lease files locks each one for an instant)
        self.lease = self.leases.wait_take(run_lease(self.cfg.host_work_dir, self.run_id).name,
                                           f"the new lease of run {self.run_id}", Deadline(10, "a new run lease"),
                                           fix="start the run again (a new run id)")

    def _connect(self) -> None:
        """libvirt, the sweep of dead runs, and this run's directory on the lab host."""
        self.session = Session(self.cfg.libvirt_uri)
        self._stages.push(None, self.session.close)
        # (the daemon this run's URI reaches: a private daemon's own pid file, else the system's)
        pid_files = ([self.cfg.private_daemon_dir / "libvirtd.pid"] if self.cfg.daemon == "private"
                     else ["/run/libvirtd.pid", "/run/virtqemud.pid", "/var/run/libvirtd.pid"])
        self.libvirt_facts = LibvirtFacts(self.session, self.cfg.virt_type)
        self.session.judge = UnansweredJudge(self.host, pid_files, f"{PREFIX}{self.run_id}-")
        self.swept = sweep(self.session.conn, self.work_dir, self.log, host=self.host,
                           host_work_dir=self.cfg.host_work_dir, leases=self.leases)
        # Where QEMU finds this run's files, on the lab host (on this machine: the run's dir).
        self.hdir = self.cfg.host_work_dir / "runs" / self.run_id
        self.host.makedirs(self.hdir)
        self._stages.push(f"removed {self.hdir}{self.host.on}", self._remove_hdir)

    def _prepare(self) -> None:
        """The run's key, image (built or copied when not cached), console login and QEMU."""
        self.key = RunKey.generate()
        self.image = run_image(self.cfg, self.arch, self.host, self.log)
        # How the harness logs in on a guest's console (None: the console is a root shell already).
        self.console_login, self.seed_password_hash = console_login(self.image, self.cfg)
        self.boot_seconds: list[float] = []      # measured boots of this run's image (start to ready)
        # The QEMU every domain of this run uses ("" : libvirt's default for the arch).
        self.emulator = qemu_build.emulator_of(self.cfg, self.host, build=True, log=self.log)

    def _remove_hdir(self) -> None:
        if self.host.exists(self.hdir):
            self.host.rmtree(self.hdir)

    def boot_deadline(self, what: str) -> Deadline:
        """A boot's deadline, fitted to the image: the run's first boot gets the generous
        budget of its kind (a hang still fails there, with the console attached); later
        boots get three times the slowest boot measured so far, plus 30 s (never less than
        the first-boot budget of the harness's own guest)."""
        if not self.boot_seconds:
            first = FIRST_BOOT_BUDGET["firmware" if self.image.kernel is None else "kernel"]
            return Deadline(first * self.cfg.timeout_factor, f"{what} (first boot of this image in the run)",
                            scaled=False)
        budget = max(BOOT_BUDGET * self.cfg.timeout_factor, 3 * max(self.boot_seconds) + 30)
        return Deadline(budget, f"{what} (3 x the slowest boot so far, {max(self.boot_seconds):.0f} s, + 30 s)",
                        scaled=False)

    def push_undo(self, what: str, fn) -> None:
        """Register the undo of a host change, right after the change succeeded."""
        self._undo.push(what, fn)

    def undo_now(self, fn) -> None:
        """Run a registered undo now (once): it leaves the stack."""
        self._undo.run_now(fn)

    def bridge(self) -> "Bridge":
        """The documented br0: the lab's own bridge when the config names one,
        else an isolated bridge made (and removed) by this run."""
        if self.cfg.bridge:
            return Bridge(self.run_id, self.host, self.cfg.bridge)
        if self._bridge is None:
            b = Bridge(self.run_id, self.host, work_dir=self.cfg.host_work_dir).create()
            self.push_undo(f"removed bridge {b.name}", b.remove)
            self._bridge = b
        return self._bridge

    @property
    def hostside(self):
        """The lab host's verbs for the suites (PCI, links, VFs, modules, fault facts)."""
        if self._hostside is None:
            from .hostside import HostSide
            self._hostside = HostSide(self.host, self.sys, self.cfg)
        return self._hostside

    def qemu_binary(self) -> str:
        """The QEMU this lab's domains run: the lab's own build, else libvirt's default for
        the guest architecture."""
        from .hostfacts import lab_emulator
        return self.emulator or lab_emulator(self.cfg, self.host, self.session.conn)

    @contextlib.contextmanager
    def ovs_bridge(self, datapath: str = "system"):
        """An Open vSwitch bridge for this run, removed on leaving (and by the run's teardown)."""
        ovs = OvsBridge(self.run_id, self.host, datapath=datapath).create()
        self.push_undo(f"removed OVS bridge {ovs.name}", ovs.remove)
        try:
            yield ovs
        finally:
            self.undo_now(ovs.remove)

    def vhostuser_socket_dir(self) -> str:
        """Where this run's vhost-user sockets go on the lab host (QEMU and OVS both reach it)."""
        return vhostuser_socket_dir(self.host, self.hdir)

    def nodedev_detach(self, bdf: str) -> None:
        """Bind a host PCI device to vfio-pci through libvirt (`virsh nodedev-detach`); the
        host-state restore gives it back."""
        name = "pci_" + bdf.replace(":", "_").replace(".", "_")
        self.session.conn.nodeDeviceLookupByName(name).detachFlags("vfio", 0)

    def refusal(self, devices, role: str, start: bool = False) -> str | None:
        """Define a bare domain of this lab (its virt type, arch and QEMU) with `devices`,
        as libvirt's parser takes it, without schema validation (a vendor's libvirt may
        parse what its schema lacks, as openEuler's does for error_policy='retry'), and
        with `start` start it paused (QEMU checks its command line; no guest runs); all
        undone at once.  None when libvirt accepts it, else libvirt's message.  The domain
        carries the run's tag, so a crash in between leaves nothing the sweeper cannot find."""
        from .sweep import undefine
        self._counter += 1
        meta = X.harness_metadata(self.run_id, os.getpid(), role, work_dir=self.work_dir,
                                  hostdir=self.cfg.host_work_dir)
        dom = X.domain(f"{PREFIX}{self.run_id}-{role}-{self._counter}", virt_type=self.cfg.virt_type,
                       arch=self.arch, devices=list(devices), emulator=self.emulator, metadata=meta)
        try:
            d = self.session.conn.defineXML(X.to_string(dom))
        except libvirt.libvirtError as e:
            return e.get_error_message()
        try:
            if start:
                try:
                    d.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
                except libvirt.libvirtError as e:
                    return e.get_error_message()
                d.destroy()
            return None
        finally:
            undefine(d)

    def lease_device(self, kind: str, ident: str, wait_s: float = 0) -> HostLease:
        """Hold a scarce host device for this run (released at close); a device this
        run already holds is its own (a second test of the run takes it again at once)."""
        held = self._device_leases.get((kind, ident))
        if held is not None:
            return held
        lease = self.leases.device(kind, ident, Deadline(wait_s, f"{kind} {ident} to be free") if wait_s else None)
        self._device_leases[(kind, ident)] = lease
        self.push_undo(f"released lease on {kind} {ident}", lease.release)
        return lease

    def lease_port(self) -> HostLease:
        """A port on the lab host's loopback for a guest's SSH forward, leased there."""
        return self.leases.port(self.cfg.ssh_port_base)

    def new_vm(self, spec: VMSpec) -> VM:
        """Define (not start) a harness-owned VM."""
        self._counter += 1
        name = f"{PREFIX}{self.run_id}-{spec.role}-{self._counter}"
        vm = VM(self, spec, name)
        self.vms.append(vm)
        try:
            vm.define()
        except Exception:
            self.release(vm)
            raise
        return vm

    def release(self, vm: VM) -> list[str]:
        undone = vm.cleanup()
        if vm in self.vms:
            self.vms.remove(vm)
        return undone

    def close(self) -> list[str]:
        with self.paced():
            return self._close()

    def _close(self) -> list[str]:
        undone = []
        for vm in reversed(list(self.vms)):
            undone += self.release(vm)
        return undone + self._undo.unwind() + self._stages.unwind()


def run_image(cfg: LabConfig, arch, host, log) -> images.GuestImage:
    """The run's guest image on the lab host: built or found in the cache here (the default
    and built-in images, a user's own image, hashed), or given as already there; copied to
    the lab host once per content."""
    firmware = cfg.firmware or arch.firmware
    if cfg.builtin_image:
        img = cloud_image.image(cfg.work_dir / "images", cfg.image, log=log, arch=arch, firmware=firmware)
    elif cfg.uses_default_image:
        img = images.default_image(cfg.work_dir / "images", arch, log=log)
        if cfg.image_access == "nocloud":
            img = images.GuestImage(root=img.root, kernel=img.kernel, initrd=img.initrd,
                                    digest=img.digest, access="nocloud", console_tty=img.console_tty)
    elif cfg.image_on_lab_host:
        return dataclasses.replace(images.on_lab_host(host, cfg.image_on_lab_host, cfg.image_access,
                                                      arch.console_tty), firmware=firmware)
    else:       # the user's own image on this machine: hashed (cached), copied once per content
        img = dataclasses.replace(images.user_image(Path(cfg.image), cfg.work_dir / "images",
                                                    cfg.image_access, arch.console_tty, log=log),
                                  firmware=firmware)
    return images.upload(img, host, cfg.host_work_dir / "images", log=log)


def console_login(image: images.GuestImage, cfg: LabConfig):
    """(how the harness logs in on a guest's console, the seed's password hash): a per-run
    login for NoCloud images, the lab's user and password for password-only images, else
    (None, None): the console is a root shell already."""
    if image.access == "nocloud":
        return login.per_run_login()
    if image.access == "console-password":
        return login.Login(cfg.guest_user, cfg.guest_password()), None
    return None, None
