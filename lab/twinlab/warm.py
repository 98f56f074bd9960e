"""Warm boot: each node's booted state (RAM + devices + disk) saved once, loaded in seconds.

A cold boot under TCG takes 1-3 minutes; loading a saved state takes ~4 s. The first `up` with a
new image boots cold, waits until systemd is settled, saves each VM with the monitor's `migrate`
to a file, and keeps the disk overlay of that moment. Later runs start qemu with `-incoming` on a
thin overlay of that disk, then `cont`. The guest clock is stale after a load: set it.

Kept in IMAGE_DIR/warm-<hash>/, where the hash covers the qemu version and the machine's command
line (without ports and paths), so any change to the VM definition makes a new one.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from twinlab import vm
from twinlab.image import Image
from twinlab.monitor import monitor_command
from twinlab.vm import NODES, VmFiles

WARM_VERSION = 1
SAVE_TIMEOUT = 180.0


@dataclass(frozen=True)
class Warm:
    directory: Path

    def disk(self, name: str) -> Path:
        return self.directory / f"{name}.qcow2"

    def state(self, name: str) -> Path:
        return self.directory / f"{name}.state"

    def complete(self) -> bool:
        return (self.directory / "DONE").exists()

    def incoming_args(self, name: str) -> tuple[str, ...]:
        return ("-incoming", f"exec:cat {shlex.quote(str(self.state(name)))}")


def warm_for(image: Image) -> Warm:
    h = hashlib.sha256(f"warm {WARM_VERSION}\n".encode())
    for node in NODES:
        h.update(vm.machine_signature(node, image).encode() + b"\0")
    return Warm(image.directory / f"warm-{h.hexdigest()[:16]}")


def prepare(warm: Warm) -> None:
    """Start a new warm set: drop older sets of this image and any half-made one."""
    for old in warm.directory.parent.glob("warm-*"):
        shutil.rmtree(old)
    warm.directory.mkdir(parents=True)


def save(warm: Warm, name: str, pid: int, files: VmFiles) -> None:
    """Save a running VM's state and disk into the warm set; the VM is gone afterwards."""
    partial = warm.state(name).with_suffix(".partial")
    monitor_command(files.monitor, "stop")
    monitor_command(files.monitor, f'migrate "exec:cat > {shlex.quote(str(partial))}"')
    _wait_migration(files, SAVE_TIMEOUT)
    monitor_command(files.monitor, "quit")
    if not vm.wait_gone(pid, files, 15.0):
        vm.stop(pid, files)
    shutil.move(files.overlay, warm.disk(name))
    partial.rename(warm.state(name))


def finish(warm: Warm) -> None:
    (warm.directory / "DONE").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))


def resume(files: VmFiles, timeout: float = 120.0) -> None:
    """Wait until qemu started with incoming_args() has loaded the state, then run the VM."""
    _wait_migration(files, timeout)
    monitor_command(files.monitor, "cont")


def _wait_migration(files: VmFiles, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = monitor_command(files.monitor, "info migrate")
        if "Migration status: completed" in info:
            return
        if "Migration status: failed" in info:
            raise RuntimeError(f"migration failed for {files.name}: {info}")
        time.sleep(0.2)
    raise TimeoutError(f"migration of {files.name} not done after {timeout:.0f} s")
