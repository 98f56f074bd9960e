"""The two-VM lab as one Python object: boot, run commands, inject faults, tear down."""

from __future__ import annotations

import contextlib
import json
import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from twinlab import hostdeps, vm, warm
from twinlab.image import Image, Recipe, ensure_image
from twinlab.monitor import monitor_command
from twinlab.paths import RUN_DIR
from twinlab.ssh import SshTarget, stop_master
from twinlab.vm import NODES, Node, Ports, VmFiles

BOOT_TIMEOUT = 420.0
STATE_FILE = "state.json"
INVENTORY_FILE = "inventory.ini"


def node_named(name: str) -> Node:
    """twin-a, a or A -> the node."""
    wanted = name if name.startswith("twin-") else f"twin-{name.lower()}"
    for node in NODES:
        if node.name == wanted:
            return node
    raise KeyError(f"no lab node {name!r} (known: {', '.join(n.name for n in NODES)})")


class Lab:
    """Two Debian VMs, twin-a and twin-b, linked by 192.168.77.0/24.

    Use as a context manager (torn down on exit, even on errors and Ctrl-C), or `up()` now and
    `Lab.attach()` / `Lab.cleanup()` from a later process.
    """

    def __init__(
        self,
        run_dir: Path = RUN_DIR,
        recipe: Recipe | None = None,
        warm: bool = True,
        save_warm: bool = True,
    ) -> None:
        self.run_dir = run_dir
        self.recipe = recipe or Recipe()
        self.warm = warm
        self.save_warm = save_warm
        self.image: Image | None = None
        self.ports: dict[str, Ports] = {}
        self.pids: dict[str, int] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> None:
        """Build the image if needed, start both VMs in parallel, wait for ssh on both.

        With warm=True (the default) the VMs are loaded from saved booted states (seconds); the
        first run for an image boots cold once and saves those states, unless save_warm=False
        (a one-off run on a fresh machine: boot cold, wait until systemd has settled, go on).
        """
        left = Lab.cleanup(self.run_dir)
        if left:
            _log(f"cleaned leftovers of an earlier run: {', '.join(left)}")
        hostdeps.ensure_host_tools()
        image = self.image = ensure_image(self.recipe)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._allocate_ports()
        started = time.monotonic()
        snapshot = warm.warm_for(image)
        if not self.warm or not (snapshot.complete() or self.save_warm):
            self._boot_all_cold()
            self._parallel(self._settle)
        else:
            if not snapshot.complete():
                self._boot_all_cold()
                self._save_all_warm(snapshot)
                _log(f"booted cold and saved warm states in {time.monotonic() - started:.0f} s")
            self._load_all_warm(snapshot)
        self._parallel(self._set_clock)
        self.write_inventory()
        _log(f"both VMs up in {time.monotonic() - started:.0f} s")

    def _boot_all_cold(self) -> None:
        for node in NODES:
            vm.create_overlay(self._image().base, self.files(node.name))
            self._start(node)
        self._save_state()
        self._parallel(self._wait_ready)

    def _save_all_warm(self, snapshot: warm.Warm) -> None:
        warm.prepare(snapshot)
        self._parallel(lambda node: self._save_warm(node, snapshot))
        warm.finish(snapshot)

    def _settle(self, node: Node) -> str:
        """Wait (up to 100 s) until systemd has started everything; its state."""
        state = self.ssh(
            node.name, "timeout 100 systemctl is-system-running --wait; sync", check=False
        ).stdout.strip()
        _log(f"{node.name} settled ({state})")
        return state

    def _save_warm(self, node: Node, snapshot: warm.Warm) -> None:
        self._settle(node)
        _log(f"saving the state of {node.name}")
        stop_master(self.files(node.name).ssh_control)
        warm.save(snapshot, node.name, self.pids.pop(node.name), self.files(node.name))

    def _load_all_warm(self, snapshot: warm.Warm) -> None:
        for node in NODES:
            self._load_warm(node, snapshot)
        self._save_state()
        self._parallel(self._wait_ready)

    def _load_warm(self, node: Node, snapshot: warm.Warm) -> None:
        files = self.files(node.name)
        vm.create_overlay(snapshot.disk(node.name), files)
        self._start(node, snapshot.incoming_args(node.name))
        warm.resume(files)

    def _parallel(self, step: Callable[[Node], object]) -> None:
        with ThreadPoolExecutor(len(NODES)) as pool:
            list(pool.map(step, NODES))

    def _set_clock(self, node: Node) -> None:
        """A loaded VM's clock is where it was when saved: set it to the host's."""
        self.ssh(node.name, f"date -s @{time.time():.3f} >/dev/null")

    def down(self) -> None:
        for node in NODES:
            self._stop(node)
        Lab.cleanup(self.run_dir)
        self.pids.clear()

    @classmethod
    def attach(cls, run_dir: Path = RUN_DIR) -> Lab:
        """The lab that `up` left running in run_dir."""
        state_path = run_dir / STATE_FILE
        if not state_path.exists():
            raise RuntimeError(f"no lab running (no {state_path}); run `lab.py up` first")
        state = json.loads(state_path.read_text())
        lab = cls(run_dir)
        lab.image = Image(Path(state["image"]))
        lab.ports = {name: Ports(**ports) for name, ports in state["ports"].items()}
        lab.pids = {name: int(pid) for name, pid in state["pids"].items()}
        return lab

    @staticmethod
    def cleanup(run_dir: Path = RUN_DIR) -> list[str]:
        """Stop VMs and ssh masters left in run_dir (by pid) and remove their files."""
        cleaned: list[str] = []
        for node in NODES:
            files = VmFiles(run_dir, node.name)
            stop_master(files.ssh_control)
            pid = _read_pid(files.pidfile)
            if pid is not None and vm.is_ours(pid, files):
                vm.stop(pid, files)
                cleaned.append(f"{node.name} (pid {pid})")
            for path in files.transient():
                path.unlink(missing_ok=True)
        (run_dir / STATE_FILE).unlink(missing_ok=True)
        (run_dir / INVENTORY_FILE).unlink(missing_ok=True)
        return cleaned

    # -- commands ------------------------------------------------------------------------------

    def files(self, node: str) -> VmFiles:
        return VmFiles(self.run_dir, node_named(node).name)

    def target(self, node: str) -> SshTarget:
        name = node_named(node).name
        return SshTarget(self.ports[name].ssh, self._image().key, self.files(name).ssh_control)

    def ssh(
        self,
        node: str,
        cmd: str,
        *,
        check: bool = True,
        timeout: float = 120.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on a node as root; output captured as text."""
        result = subprocess.run(
            [*self.target(node).base(), cmd],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{node}: `{cmd}` exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result

    def spawn(self, node: str, cmd: str) -> subprocess.Popen[str]:
        """Start a command on a node in the background; its stdin/stdout are pipes.

        Closing stdin sends EOF to the remote command. The caller must wait() for it.
        """
        return subprocess.Popen(
            [*self.target(node).base(), cmd],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )

    def put(self, node: str, src: Path, dst: str, mode: str = "0755") -> None:
        quoted = shlex.quote(dst)
        self.ssh(node, f"cat > {quoted} && chmod {mode} {quoted}", input=src.read_text())

    def monitor(self, node: str, command: str) -> str:
        return monitor_command(self.files(node).monitor, command)

    # -- faults --------------------------------------------------------------------------------

    def link(self, up: bool, node: str | None = None) -> None:
        """Cut or restore the peer link (both NICs unless a node is named), silently."""
        names = [node_named(node).name] if node else [n.name for n in NODES]
        for name in names:
            self.monitor(name, f"set_link link {'on' if up else 'off'}")

    def freeze(self, node: str) -> None:
        self.monitor(node, "stop")

    def thaw(self, node: str) -> None:
        self.monitor(node, "cont")

    def kill(self, node: str) -> None:
        """Power the VM off at once (qemu `quit`): a dead peer. Its disk is kept for boot()."""
        target = node_named(node)
        files = self.files(target.name)
        pid = self.pids.pop(target.name, None)
        with contextlib.suppress(OSError):
            self.monitor(target.name, "quit")
        if pid is not None and not vm.wait_gone(pid, files, 10.0):
            vm.stop(pid, files)
        stop_master(files.ssh_control)
        self._save_state()

    def boot(self, node: str, wait: bool = True, fresh: bool = False) -> None:
        """Start a killed VM again.

        Default: boot cold from its own disk, as a crashed machine reboots (1-3 minutes under
        TCG). fresh=True: load the warm state on a new disk instead (seconds; disk changes of
        this run are lost, as if the machine were replaced).
        """
        target = node_named(node)
        if target.name in self.pids:
            raise RuntimeError(f"{target.name} is running; kill() it first")
        snapshot = warm.warm_for(self._image())
        if fresh and snapshot.complete():
            self._load_warm(target, snapshot)
        else:
            self._start(target)
        self._save_state()
        if wait:
            self._wait_ready(target)
            self._set_clock(target)

    # -- inventory -----------------------------------------------------------------------------

    def write_inventory(self) -> Path:
        """An Ansible inventory for the two VMs, shaped like inventory/hosts.yml.

        One pair group (pair_lab) under the group twinlog; Ansible connects through the
        forwarded ports on 127.0.0.1; twinlog_address is each node's address on the link.
        """
        path = self.run_dir / INVENTORY_FILE
        lines = ["[pair_lab]"]
        for node in NODES:
            lines.append(
                f"{node.name} ansible_host=127.0.0.1 ansible_port={self.ports[node.name].ssh} "
                f"twinlog_node={node.name} twinlog_address={node.link_addr}"
            )
        lines += [
            "",
            "[twinlog:children]",
            "pair_lab",
            "",
            "[twinlog:vars]",
            "ansible_user=root",
            f"ansible_ssh_private_key_file={self._image().key}",
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes'",
            "ansible_python_interpreter=/usr/bin/python3",
            "",
        ]
        path.write_text("\n".join(lines))
        return path

    # -- internals -----------------------------------------------------------------------------

    def _image(self) -> Image:
        if self.image is None:
            raise RuntimeError("the lab is not up")
        return self.image

    def _allocate_ports(self) -> None:
        udp = {node.name: vm.free_port(socket.SOCK_DGRAM) for node in NODES}
        a, b = (node.name for node in NODES)
        peer = {a: b, b: a}
        self.ports = {
            name: Ports(
                ssh=vm.free_port(socket.SOCK_STREAM),
                link_local=udp[name],
                link_peer=udp[peer[name]],
            )
            for name in udp
        }

    def _start(self, node: Node, extra: tuple[str, ...] = ()) -> None:
        self.pids[node.name] = vm.start(
            node, self.ports[node.name], self._image(), self.files(node.name), extra
        )

    def _stop(self, node: Node) -> None:
        files = self.files(node.name)
        stop_master(files.ssh_control)
        pid = self.pids.pop(node.name, None)
        if pid is not None:
            vm.stop(pid, files)

    def _wait_ready(self, node: Node) -> None:
        target = self.target(node.name)
        files = self.files(node.name)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not target.reachable():
            pid = self.pids.get(node.name)
            if pid is None or not vm.is_ours(pid, files):
                raise RuntimeError(f"{node.name} died while booting:\n{_tail(files.console)}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no ssh to {node.name} after {BOOT_TIMEOUT:.0f} s:\n{_tail(files.console)}"
                )
            time.sleep(1)
        target.start_master()

    def _save_state(self) -> None:
        state = {
            "image": str(self._image().directory),
            "ports": {name: vars(ports) for name, ports in self.ports.items()},
            "pids": self.pids,
        }
        (self.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no console log)"


def _log(message: str) -> None:
    print(f"lab: {message}", flush=True)
