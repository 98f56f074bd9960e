"""CI checks of the Ansible deployment (ansible/, inventory/).

Lint, syntax, the peer each inventory host derives, and real runs of the role against this machine:
connection local, every path under ``twinlog_root`` in a scratch directory, and the service
account created in a private copy of /etc (a mount namespace), so nothing outside the test area
changes. NFS server, mount and systemd manager steps are switched off; the files they would act on
(export, nfs.conf drop-in, units) are still rendered and checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest


def tool(name: str) -> str | None:
    """An executable beside this Python (an unactivated virtualenv), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if os.access(beside, os.X_OK) else shutil.which(name)


if tool("ansible-playbook") is None:
    pytest.skip(
        "ansible is not installed (pip install ansible ansible-lint)", allow_module_level=True
    )

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
HERE = Path(__file__).resolve().parent
EXAMPLE_INVENTORY = REPO / "inventory" / "hosts.yml"
TWO_PAIRS_INVENTORY = HERE / "inventory-two-pairs.yml"

UID = GID = 4190
ANSIBLE_TIMEOUT = 600
RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$", re.MULTILINE)


def ansible_env(tmp: Path, *, callback: str = "ansible.builtin.default") -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}"
    env.update(
        ANSIBLE_ROLES_PATH=str(ANSIBLE_DIR / "roles"),
        ANSIBLE_STDOUT_CALLBACK=callback,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-local"),
        ANSIBLE_REMOTE_TEMP=str(tmp / "ansible-remote"),
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_DEPRECATION_WARNINGS="0",
        ANSIBLE_PIPELINING="1",
    )
    return env


def run(
    argv: Sequence[str | os.PathLike[str]],
    env: Mapping[str, str] | None = None,
    *,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    args = [os.fspath(a) for a in argv]
    proc = subprocess.run(
        args,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=ANSIBLE_TIMEOUT,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout (tail)\n{proc.stdout[-6000:]}\n--- stderr (tail)\n{proc.stderr[-3000:]}"
        )
    return proc


def recap(stdout: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of a default-callback run: host -> {ok, changed, failed, ...}."""
    tail = stdout.rsplit("PLAY RECAP", 1)[-1]
    return {
        m["host"]: {k: int(v) for k, v in (kv.split("=") for kv in m["counts"].split())}
        for m in RECAP_LINE.finditer(tail)
    }


def changed_tasks(stdout: str) -> list[str]:
    """Names of the tasks that reported a change, for failure messages."""
    names, current = [], ""
    for line in stdout.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            current = line
        elif line.startswith("changed:"):
            names.append(current)
    return names


# -- static checks ------------------------------------------------------------------------------


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    if tool("ansible-lint") is None:
        pytest.skip("ansible-lint is not installed (pip install ansible-lint)")
    proc = run(
        [
            "ansible-lint",
            "--offline",
            "--nocolor",
            "--profile",
            "production",
            "-c",
            ANSIBLE_DIR / ".ansible-lint",
            "ansible/",
            "inventory/",
            "tests/ansible/",
        ],
        ansible_env(tmp_path),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "inventory", [EXAMPLE_INVENTORY, TWO_PAIRS_INVENTORY], ids=lambda p: p.name
)
def test_site_syntax(tmp_path: Path, inventory: Path) -> None:
    run(
        ["ansible-playbook", "-i", inventory, "--syntax-check", ANSIBLE_DIR / "site.yml"],
        ansible_env(tmp_path),
    )


# -- inventory: every host gets the other host of its pair as peer ------------------------------


def inventory_listing(inventory: Path, env: Mapping[str, str]) -> dict[str, Any]:
    listing: dict[str, Any] = json.loads(
        run(["ansible-inventory", "-i", inventory, "--list"], env).stdout
    )
    return listing


def derived_peers(
    inventory: Path, env: Mapping[str, str], *, check: bool = True
) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run the role's pair checks (tasks/peer.yml) for every host, connection local (nothing
    is contacted); return the process and its JSON-callback result."""
    proc = run(
        [
            "ansible-playbook",
            "-i",
            inventory,
            "-e",
            "ansible_connection=local",
            HERE / "peers.yml",
        ],
        env,
        check=check,
    )
    return proc, json.loads(proc.stdout)


def peer_messages(result: Any) -> dict[str, dict[str, str]]:
    messages: dict[str, dict[str, str]] = {}
    for play in result["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"].endswith("Show the peer"):
                for host, res in task["hosts"].items():
                    messages[host] = res["msg"]
    return messages


@pytest.mark.parametrize(
    "inventory", [EXAMPLE_INVENTORY, TWO_PAIRS_INVENTORY], ids=lambda p: p.name
)
def test_every_host_gets_the_other_host_of_its_pair(tmp_path: Path, inventory: Path) -> None:
    env = ansible_env(tmp_path, callback="ansible.builtin.json")
    listing = inventory_listing(inventory, env)
    hostvars = listing["_meta"]["hostvars"]
    pairs = {g: listing[g]["hosts"] for g in listing["twinlog"]["children"]}
    assert pairs, "the inventory defines no pair under the group twinlog"
    assert all(g.startswith("pair_") and len(h) == 2 for g, h in pairs.items()), pairs

    _, result = derived_peers(inventory, env)
    messages = peer_messages(result)
    expected_hosts = {h for hosts in pairs.values() for h in hosts}
    assert set(messages) == expected_hosts

    for group, (first, second) in pairs.items():
        for host, peer in ((first, second), (second, first)):
            msg = messages[host]
            pv = hostvars[peer]
            address = pv.get("twinlog_address", pv.get("ansible_host", peer))
            export = pv.get("twinlog_log_dir", "/var/lib/twinlog/log")
            assert msg["pair"] == group
            assert msg["peer_host"] == peer
            assert msg["node"] == hostvars[host].get("twinlog_node", host)
            assert msg["peer"] == pv.get("twinlog_node", peer)
            assert msg["peer_address"] == address
            assert msg["peer_export"] == f"{address}:{export}"


def test_hosts_outside_a_proper_pair_are_refused(tmp_path: Path) -> None:
    inventory = tmp_path / "bad.yml"
    inventory.write_text(
        json.dumps(
            {
                "twinlog": {
                    "children": {
                        "pair_three": {"hosts": {"t1": None, "t2": None, "t3": None}},
                        "pair_ok": {"hosts": {"o1": None, "o2": None}},
                        "loners": {"hosts": {"lonely": None}},
                    }
                }
            }
        )
    )
    env = ansible_env(tmp_path, callback="ansible.builtin.json")
    proc, result = derived_peers(inventory, env, check=False)
    assert proc.returncode != 0
    stats = result["stats"]
    assert {h for h, s in stats.items() if s["failures"]} == {"t1", "t2", "t3", "lonely"}
    assert stats["o1"]["failures"] == stats["o2"]["failures"] == 0


# -- a real run of the role against this machine -------------------------------------------------


def build_wheelhouse(house: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """Build the wheelhouse from this checkout with the role's own build tasks."""
    playbook: list[str | os.PathLike[str]] = ["ansible-playbook", HERE / "build.yml"]
    extra = ["-e", f"twinlog_wheelhouse={house}", "-e", f"twinlog_source_dir={REPO}"]
    return run([*playbook, *extra], ansible_env(tmp))


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session and shared by the runs of the role."""
    tmp = tmp_path_factory.mktemp("wheelhouse")
    house = tmp / "wheels"
    build_wheelhouse(house, tmp)
    return house


def test_wheelhouse_build_is_reproducible(wheelhouse: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in wheelhouse.glob("*.whl"))
    assert any(n.startswith("twinlog-") for n in names), names
    proc = build_wheelhouse(wheelhouse, tmp_path)
    assert recap(proc.stdout)["localhost"]["changed"] == 0, changed_tasks(proc.stdout)
    assert sorted(p.name for p in wheelhouse.glob("*.whl")) == names


def world_reachable(path: Path) -> bool:
    """Whether any user may reach (x on every parent) and run this file."""
    path = path.resolve()
    return all(p.stat().st_mode & 0o001 for p in path.parents) and bool(path.stat().st_mode & 0o001)


def node_python() -> str | None:
    """A Python >= 3.11 with venv that the service user may run (not one under /root)."""
    for candidate in ("/usr/bin/python3", sys.executable):
        path = Path(candidate)
        if not path.exists() or not world_reachable(path):
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys, venv, ensurepip; assert sys.version_info >= (3, 11)"],
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:
            return candidate
    return None


def can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "true"], check=False).returncode == 0


class Node:
    """A scratch node: twinlog_root, a private copy of /etc, and the inventory to run against."""

    def __init__(self, tmp: Path, wheelhouse: Path, python: str) -> None:
        self.after_check: dict[str, object] = {}
        self.tmp = tmp
        self.root = tmp / "root"
        self.etc = tmp / "etc"
        self.root.mkdir()
        # The service account goes into this copy, bind-mounted over /etc for ansible-playbook only.
        subprocess.run(["cp", "-a", "/etc", self.etc], check=True)
        self.inventory = tmp / "inventory.yml"
        common = {
            "ansible_python_interpreter": sys.executable,
            "ansible_become": False,
            "twinlog_root": str(self.root),
            "twinlog_python": python,
            "twinlog_wheelhouse": str(wheelhouse),
            "twinlog_build_wheelhouse": False,
            "twinlog_manage_packages": False,
            "twinlog_manage_nfs_server": False,
            "twinlog_manage_mount": False,
            "twinlog_manage_services": False,
            "twinlog_lock_timeout": 25,
            "twinlog_fsync": True,
            "twinlog_prometheus_textfile_dir": "/var/lib/prometheus/node-exporter",
        }
        self.inventory.write_text(
            json.dumps(
                {
                    "twinlog": {
                        "vars": common,
                        "children": {
                            "pair_ci": {
                                "hosts": {
                                    "node-a": {
                                        "ansible_connection": "local",
                                        "twinlog_address": "127.0.0.1",
                                    },
                                    "node-b": {"twinlog_address": "127.0.0.2"},
                                }
                            }
                        },
                    }
                }
            )
        )

    def playbook(self, *extra: str) -> subprocess.CompletedProcess[str]:
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            'mount --bind "$0" /etc && exec "$@"',
            str(self.etc),
            "ansible-playbook",
            "-i",
            str(self.inventory),
            "--limit",
            "node-a",
            *extra,
            str(ANSIBLE_DIR / "site.yml"),
        ]
        return run(argv, ansible_env(self.tmp))

    def path(self, node_path: str) -> Path:
        return Path(os.fspath(self.root) + node_path)


def snapshot(paths: Sequence[str]) -> dict[str, object]:
    """Content of files, listing of directories, None for what does not exist."""
    state: dict[str, object] = {}
    for name in paths:
        path = Path(name)
        if path.is_file():
            state[name] = path.read_bytes()
        elif path.is_dir():
            state[name] = sorted(str(p) for p in path.rglob("*"))
        else:
            state[name] = None
    return state


@pytest.fixture(scope="module")
def deployed(
    wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Node, list[subprocess.CompletedProcess[str]]]]:
    """Check mode on a fresh node, two real runs, then check mode again."""
    if not can_unshare():
        pytest.skip("the real run needs root and mount namespaces (unshare --mount)")
    watched = [
        "/etc/passwd",
        "/etc/group",
        "/etc/twinlog",
        "/etc/exports.d",
        "/opt/twinlog",
        "/var/lib/twinlog",
        "/etc/systemd/system",
    ]
    before = snapshot(watched)
    python = node_python()
    if python is None:
        pytest.skip("no Python >= 3.11 with venv that an unprivileged user may run")
    # Not under pytest's 0700 temp: the service user must reach its files, as on a node.
    tmp = Path(tempfile.mkdtemp(prefix="twinlog-ansible-"))
    tmp.chmod(0o755)
    try:
        node = Node(tmp, wheelhouse, python)
        runs = [node.playbook("--check", "--diff")]
        node.after_check = snapshot([str(node.etc / "passwd"), str(node.root)])
        runs += [node.playbook(), node.playbook(), node.playbook("--check", "--diff")]
        yield node, runs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert snapshot(watched) == before, "the runs changed the machine outside the test area"


def test_check_mode_on_a_fresh_node_reports_changes_and_makes_none(
    deployed: tuple[Node, list[Any]],
) -> None:
    node, runs = deployed
    assert recap(runs[0].stdout)["node-a"]["changed"] > 0
    assert "--- before" in runs[0].stdout  # --diff shows what would change
    assert node.after_check == {
        str(node.etc / "passwd"): Path("/etc/passwd").read_bytes(),
        str(node.root): [],
    }


def test_second_run_changes_nothing(deployed: tuple[Node, list[Any]]) -> None:
    _, runs = deployed
    for proc in runs[2:]:
        counts = recap(proc.stdout)["node-a"]
        assert counts["failed"] == 0
        assert counts["changed"] == 0, changed_tasks(proc.stdout)


def test_service_account_has_the_fixed_ids(deployed: tuple[Node, list[Any]]) -> None:
    node, _ = deployed
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (node.etc / "passwd").read_text().splitlines()
    }
    group = {
        line.split(":")[0]: line.split(":")
        for line in (node.etc / "group").read_text().splitlines()
    }
    assert passwd["twinlog"][2:4] == [str(UID), str(GID)]
    assert passwd["twinlog"][5] == "/var/lib/twinlog"
    assert passwd["twinlog"][6] == "/usr/sbin/nologin"
    assert group["twinlog"][2] == str(GID)


def mode_owner(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), path
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_directories_and_identity_marker(deployed: tuple[Node, list[Any]]) -> None:
    node, _ = deployed
    assert mode_owner(node.path("/var/lib/twinlog")) == (0o750, 0, GID)
    assert mode_owner(node.path("/var/lib/twinlog/log")) == (0o750, UID, GID)
    # Root-owned and closed to the service user while nothing is mounted on it.
    assert mode_owner(node.path("/var/lib/twinlog/peer")) == (0o755, 0, 0)
    assert mode_owner(node.path("/etc/twinlog")) == (0o750, 0, GID)
    marker = node.path("/var/lib/twinlog/log/twinlog.node")
    assert marker.read_text().strip() == "node-a"
    assert marker.stat().st_uid == UID


def test_configuration(deployed: tuple[Node, list[Any]]) -> None:
    node, _ = deployed
    config_file = node.path("/etc/twinlog/twinlog.toml")
    assert mode_owner(config_file) == (0o640, 0, GID)
    config = tomllib.loads(config_file.read_text())
    assert config == {
        "node": "node-a",
        "peer": "node-b",
        "log_dir": str(node.path("/var/lib/twinlog/log")),
        "peer_dir": str(node.path("/var/lib/twinlog/peer")),
        "lock_timeout": 25.0,
        "fsync": True,
    }
    assert isinstance(config["lock_timeout"], float)


def test_virtualenv_runs_the_real_package(deployed: tuple[Node, list[Any]]) -> None:
    node, _ = deployed
    venv = node.path("/opt/twinlog/venv")
    proc = run(
        [
            venv / "bin/python",
            "-c",
            "import twinlog, twinlog.cli, twinlog.config, sys; print(twinlog.__file__)",
        ]
    )
    assert proc.stdout.startswith(str(venv))
    assert (venv / "bin/twinlog").is_file()
    assert (node.path("/opt/twinlog/wheels")).is_dir()


def test_systemd_units_verify(deployed: tuple[Node, list[Any]]) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    node, _ = deployed
    unit_dir = node.path("/etc/systemd/system")
    units = sorted(unit_dir.iterdir())
    assert [u.name for u in units] == [
        "twinlog-peer-mount.service",
        "twinlog-reconcile.service",
        "twinlog-reconcile.timer",
        "twinlog-rotate.service",
        "twinlog-rotate.timer",
    ]
    proc = run(["systemd-analyze", "verify", "--man=no", *units], check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    service = (unit_dir / "twinlog-reconcile.service").read_text()
    venv_bin = node.path("/opt/twinlog/venv/bin/twinlog")
    config = node.path("/etc/twinlog/twinlog.toml")
    assert f"ExecStart={venv_bin} --config {config} reconcile\n" in service
    assert "User=twinlog\n" in service
    assert f"ReadWritePaths={node.path('/var/lib/twinlog/log')}\n" in service
    assert "ProtectSystem=strict\n" in service
    assert "OnCalendar=minutely\n" in (unit_dir / "twinlog-reconcile.timer").read_text()
    # Metrics for node_exporter's textfile collector, from the reconcile run only.
    textfile_dir = node.path("/var/lib/prometheus/node-exporter")
    assert (
        f"ExecStopPost=-{venv_bin} --config {config} status --prometheus "
        f"--textfile {textfile_dir}/twinlog.prom\n"
    ) in service
    assert f"ReadWritePaths=-{textfile_dir}\n" in service
    rotate = (unit_dir / "twinlog-rotate.service").read_text()
    assert "ExecStopPost" not in rotate and "node-exporter" not in rotate
    assert "OnCalendar=daily\n" in (unit_dir / "twinlog-rotate.timer").read_text()


def test_exports_and_nfs_lease(deployed: tuple[Node, list[Any]]) -> None:
    node, _ = deployed
    exports = node.path("/etc/exports.d/twinlog.exports").read_text().splitlines()
    entries = [line for line in exports if line and not line.startswith("#")]
    assert entries == [
        f"{node.path('/var/lib/twinlog/log')} 127.0.0.2(rw,sync,root_squash,no_subtree_check)"
    ]
    nfs_conf = node.path("/etc/nfs.conf.d/twinlog.conf").read_text()
    assert "[nfsd]\nlease-time = 10\ngrace-time = 10\n" in nfs_conf
