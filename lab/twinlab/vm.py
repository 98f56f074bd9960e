"""One lab VM: its fixed identity, its qemu command line, and its process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from twinlab.image import Image

LINK_NET = "192.168.77"
MEMORY_MB = 768


@dataclass(frozen=True)
class Node:
    """A node's identity: the same in every run (MACs select its network config in the image)."""

    name: str
    index: int

    @property
    def link_addr(self) -> str:
        return f"{LINK_NET}.{self.index}"

    @property
    def mgmt_mac(self) -> str:
        return f"52:54:00:12:34:{self.index:02x}"

    @property
    def link_mac(self) -> str:
        return f"52:54:00:77:00:{self.index:02x}"


NODES: tuple[Node, ...] = (Node("twin-a", 1), Node("twin-b", 2))


@dataclass
class Ports:
    """Host ports of one node: ssh forward (TCP) and both ends of the link tunnel (UDP)."""

    ssh: int
    link_local: int
    link_peer: int


@dataclass(frozen=True)
class VmFiles:
    run_dir: Path
    name: str

    @property
    def overlay(self) -> Path:
        return self.run_dir / f"{self.name}.qcow2"

    @property
    def monitor(self) -> Path:
        return self.run_dir / f"{self.name}.monitor"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def console(self) -> Path:
        return self.run_dir / f"{self.name}.console.log"

    @property
    def ssh_control(self) -> Path:
        return self.run_dir / f"{self.name}.ssh"

    def transient(self) -> list[Path]:
        return [self.overlay, self.monitor, self.pidfile, self.ssh_control]


def free_port(kind: int) -> int:
    """A port that is free on 127.0.0.1 right now (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def qemu_command(node: Node, ports: Ports, image: Image, files: VmFiles) -> list[str]:
    append = (
        f"console=ttyS0 root=/dev/vda rw fsck.mode=skip quiet loglevel=3 "
        f"systemd.show_status=false systemd.hostname={node.name}"
    )
    # fmt: off
    return [
        "qemu-system-x86_64", "-name", node.name,
        "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "1", "-m", str(MEMORY_MB),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append,
        "-drive", f"file={files.overlay},if=virtio,format=qcow2,cache=unsafe",
        "-netdev", f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{ports.ssh}-:22",
        "-device", f"virtio-net-pci,netdev=mgmt,mac={node.mgmt_mac},romfile=",
        # The peer link: a UDP tunnel between the two qemu processes, on 127.0.0.1 only.
        # Connectionless, so either VM can be killed and booted again without the other.
        "-netdev", (f"socket,id=link,udp=127.0.0.1:{ports.link_peer},"
                    f"localaddr=127.0.0.1:{ports.link_local}"),
        "-device", f"virtio-net-pci,netdev=link,mac={node.link_mac},romfile=",
        "-device", "virtio-rng-pci",
        "-serial", f"file:{files.console}",
        "-monitor", f"unix:{files.monitor},server,nowait",
        "-pidfile", str(files.pidfile), "-daemonize",
    ]
    # fmt: on


def create_overlay(backing: Path, files: VmFiles) -> None:
    """A fresh thin qcow2 for this run, on top of `backing` (base image or warm disk)."""
    files.overlay.unlink(missing_ok=True)
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing)]
    subprocess.run([*cmd, str(files.overlay)], check=True)


def start(
    node: Node, ports: Ports, image: Image, files: VmFiles, extra: tuple[str, ...] = ()
) -> int:
    """Start qemu daemonized (plus `extra` arguments); return its pid."""
    files.pidfile.unlink(missing_ok=True)
    cmd = [*qemu_command(node, ports, image, files), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"qemu for {node.name} failed to start: {result.stderr.strip()}")
    return int(files.pidfile.read_text().strip())


def machine_signature(node: Node, image: Image) -> str:
    """The qemu version and command line without ports and run paths.

    A saved VM state can only be loaded into the same machine: this names that machine.
    """
    version = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    cmd = qemu_command(node, Ports(0, 0, 0), image, VmFiles(Path("/run-dir"), node.name))
    return "\n".join([version, *cmd])


def is_ours(pid: int, files: VmFiles) -> bool:
    """True if pid is a live qemu started for this run dir (guards against reused pids)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    if "\nState:\tZ" in status:
        return False
    return str(files.monitor).encode() in cmdline


def stop(pid: int, files: VmFiles, grace: float = 5.0) -> None:
    """SIGTERM then SIGKILL the VM process, by pid, if it is still ours."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not is_ours(pid, files):
            return
        os.kill(pid, sig)
        if wait_gone(pid, files, grace):
            return


def wait_gone(pid: int, files: VmFiles, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_ours(pid, files):
            return True
        time.sleep(0.05)
    return not is_ours(pid, files)
