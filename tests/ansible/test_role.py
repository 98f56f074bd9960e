"""CI checks of the Ansible deployment (ansible/, inventory/).

Lint, syntax, the peer each inventory host derives, and real runs of the role against this machine:
connection local, every path under ``twinlog_root`` in a scratch directory, and the service
account created in a private copy of /etc (a mount namespace), so nothing outside the test area
changes. NFS server, mount and systemd manager steps are switched off; the files they would act on
(export, nfs.conf drop-in, units) are still rendered and checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
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
    cwd: Path = REPO,
) -> subprocess.CompletedProcess[str]:
    args = [os.fspath(a) for a in argv]
    proc = subprocess.run(
        args,
        env=env,
        cwd=cwd,
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
    # ansible/ is the collection twinlog.pair; its playbook names the role by its full name.
    env = ansible_env(tmp_path)
    (tmp_path / "ansible_collections/twinlog").mkdir(parents=True)
    (tmp_path / "ansible_collections/twinlog/pair").symlink_to(ANSIBLE_DIR)
    env["ANSIBLE_COLLECTIONS_PATH"] = str(tmp_path)
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
        env,
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
    inventory: Path,
    env: Mapping[str, str],
    *,
    check: bool = True,
    extra_vars: Mapping[str, object] | None = None,
) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run the role's pair checks (tasks/peer.yml) for every host, connection local (nothing
    is contacted), with ``extra_vars`` for every host; return the process and its JSON-callback
    result."""
    extra = ["-e", json.dumps(dict(extra_vars))] if extra_vars else []
    proc = run(
        [
            "ansible-playbook",
            "-i",
            inventory,
            "-e",
            "ansible_connection=local",
            *extra,
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


# -- NFS security: sys by default, Kerberos (sec=krb5*) as an option -----------------------------

DEFAULT_EXPORT_OPTIONS = "rw,sync,root_squash,no_subtree_check"
DEFAULT_MOUNT_OPTIONS = (
    "vers=4.2,proto=tcp,soft,timeo=10,retrans=2,retry=0,local_lock=none,nosuid,nodev,noexec,"
    "nofail,_netdev,x-systemd.mount-timeout=30s"
)


def keytabs(tmp: Path) -> dict[str, str]:
    """Two stand-in keytabs on the controller (random bytes: nothing here talks to a KDC)."""
    sources = {}
    for name in ("host", "client"):
        path = tmp / f"{name}.keytab"
        path.write_bytes(os.urandom(64))
        sources[name] = str(path)
    return {
        "twinlog_krb5_keytab_src": sources["host"],
        "twinlog_krb5_client_keytab_src": sources["client"],
    }


def failure_messages(result: Any) -> dict[str, list[str]]:
    """host -> the messages of its failed tasks (and failed loop items), from the JSON callback."""
    messages: dict[str, list[str]] = {}
    for play in result["plays"]:
        for task in play["tasks"]:
            for host, res in task["hosts"].items():
                for item in [res, *res.get("results", [])]:
                    if item.get("failed"):
                        messages.setdefault(host, []).append(item["msg"])
    return messages


@pytest.mark.parametrize("sec", ["sys", "krb5", "krb5i", "krb5p"])
def test_nfs_sec_goes_on_the_export_and_the_mount(tmp_path: Path, sec: str) -> None:
    """sys (the default) adds nothing, so a sys deployment is what it was before the option;
    Kerberos adds sec= to both ends."""
    env = ansible_env(tmp_path, callback="ansible.builtin.json")
    extra_vars = {"twinlog_nfs_sec": sec, **keytabs(tmp_path)} if sec != "sys" else {}
    _, result = derived_peers(EXAMPLE_INVENTORY, env, extra_vars=extra_vars)
    messages = peer_messages(result)
    assert len(messages) == 2
    suffix = "" if sec == "sys" else f",sec={sec}"
    for msg in messages.values():
        assert msg["export_options"] == DEFAULT_EXPORT_OPTIONS + suffix
        assert msg["mount_options"] == DEFAULT_MOUNT_OPTIONS + suffix


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param(
            {"twinlog_nfs_sec": "krb5p"},
            [
                "twinlog_krb5_keytab_src",
                "twinlog_krb5_client_keytab_src",
                "twinlog_krb5_keytabs_in_place=true",
            ],
            id="no-keytab",
        ),
        pytest.param(
            {
                "twinlog_nfs_sec": "krb5p",
                "twinlog_krb5_keytab_src": "host.keytab",
                "twinlog_krb5_client_keytab_src": "/nonexistent/client.keytab",
            },
            [
                "twinlog_krb5_keytab_src=host.keytab is not the absolute path of a file",
                "twinlog_krb5_client_keytab_src=/nonexistent/client.keytab is not the absolute",
            ],
            id="keytab-not-on-the-controller",
        ),
        pytest.param(
            {
                "twinlog_nfs_sec": "krb5p",
                "twinlog_krb5_keytabs_in_place": True,
                "twinlog_root": "/nonexistent",
            },
            [
                "twinlog_krb5_keytabs_in_place is true but /nonexistent/etc/krb5.keytab is missing",
                "/nonexistent/var/lib/gssproxy/clients/4190.keytab is missing",
            ],
            id="keytab-not-in-place",
        ),
        pytest.param(
            {"twinlog_nfs_sec": "kerberos"},
            ["twinlog_nfs_sec is 'kerberos'", "one of sys, krb5, krb5i, krb5p"],
            id="unknown-flavour",
        ),
        pytest.param(
            {"twinlog_nfs_sec": "krb5i", "twinlog_mount_options": ["vers=4.2", "sec=sys"]},
            ["leave sec= out of twinlog_export_options and twinlog_mount_options"],
            id="sec-in-the-options",
        ),
    ],
)
def test_kerberos_settings_are_refused_with_the_fix(
    tmp_path: Path, settings: dict[str, object], expected: list[str]
) -> None:
    """The role stops in its first checks, before it installs anything, and says which variable
    to set and how."""
    env = ansible_env(tmp_path, callback="ansible.builtin.json")
    proc, result = derived_peers(EXAMPLE_INVENTORY, env, check=False, extra_vars=settings)
    assert proc.returncode != 0
    messages = failure_messages(result)
    assert set(messages) == {"mgmt-a.example.net", "mgmt-b.example.net"}
    for host, host_messages in messages.items():
        text = " ".join(host_messages)
        for fragment in expected:
            assert fragment in text, (host, host_messages)
    assert not peer_messages(result)  # stopped before "Show the peer"


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

    def __init__(
        self,
        tmp: Path,
        python: str,
        *,
        source: Mapping[str, object],
        inventory: Path | None = None,
        site: Path = ANSIBLE_DIR / "site.yml",
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``source``: the settings that say where twinlog comes from (wheelhouse, build);
        ``site``: the playbook; ``env``: ansible-playbook's environment (default: the roles of this
        checkout)."""
        self.after_check: dict[str, object] = {}
        self.tmp = tmp
        self.root = tmp / "root"
        self.etc = tmp / "etc"
        self.site = site
        self.env = dict(env) if env is not None else ansible_env(tmp)
        self.root.mkdir()
        # The service account goes into this copy, bind-mounted over /etc for ansible-playbook only.
        subprocess.run(["cp", "-a", "/etc", self.etc], check=True)
        self.inventory = inventory or tmp / "inventory.yml"
        common = {
            "ansible_python_interpreter": sys.executable,
            "ansible_become": False,
            "twinlog_root": str(self.root),
            "twinlog_python": python,
            **source,
            "twinlog_manage_packages": False,
            "twinlog_manage_nfs_server": False,
            "twinlog_manage_mount": False,
            "twinlog_manage_services": False,
            "twinlog_lock_timeout": 25,
            "twinlog_fsync": True,
            "twinlog_prometheus_textfile_dir": "/var/lib/prometheus/node-exporter",
            "twinlog_rsyslog_enabled": True,
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
            str(self.site),
        ]
        return run(argv, self.env, cwd=self.site.parent)

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


@contextlib.contextmanager
def scratch_area() -> Iterator[tuple[Path, str]]:
    """A scratch directory for real runs of the role and the node's Python; skips where such runs
    cannot happen, and checks afterwards that nothing outside the scratch directory changed."""
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
        "/usr/share/bash-completion/completions/twinlog",
        "/usr/share/man/man1/twinlog.1",
    ]
    before = snapshot(watched)
    python = node_python()
    if python is None:
        pytest.skip("no Python >= 3.11 with venv that an unprivileged user may run")
    # Not under pytest's 0700 temp: the service user must reach its files, as on a node.
    tmp = Path(tempfile.mkdtemp(prefix="twinlog-ansible-"))
    tmp.chmod(0o755)
    try:
        yield tmp, python
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert snapshot(watched) == before, "the runs changed the machine outside the test area"


@pytest.fixture(scope="module")
def deployed(wheelhouse: Path) -> Iterator[tuple[Node, list[subprocess.CompletedProcess[str]]]]:
    """Check mode on a fresh node, two real runs, then check mode again."""
    with scratch_area() as (tmp, python):
        source = {"twinlog_wheelhouse": str(wheelhouse), "twinlog_build_wheelhouse": False}
        node = Node(tmp, python, source=source)
        runs = [node.playbook("--check", "--diff")]
        node.after_check = snapshot([str(node.etc / "passwd"), str(node.root)])
        runs += [node.playbook(), node.playbook(), node.playbook("--check", "--diff")]
        yield node, runs


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
        "witness": True,  # the role's default: the minute timer's reconciles witness
    }
    assert isinstance(config["lock_timeout"], float)


SHIPPED_RSYSLOG = REPO / "contrib" / "rsyslog" / "twinlog.conf"
ROLE_RSYSLOG = ANSIBLE_DIR / "roles/twinlog/templates/rsyslog-twinlog.conf.j2"


def test_the_role_renders_the_shipped_rsyslog_configuration() -> None:
    """With the role's defaults, its template is contrib/rsyslog/twinlog.conf (which
    tests/test_rsyslog.py runs under a real rsyslogd), after the managed-file comment."""
    jinja2 = pytest.importorskip("jinja2")
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    environment.filters["comment"] = lambda text: f"# {text}"
    rendered = environment.from_string(ROLE_RSYSLOG.read_text()).render(
        ansible_managed="Ansible managed",
        twinlog_user="twinlog",
        twinlog_group="twinlog",
        __twinlog_bin="/opt/twinlog/venv/bin/twinlog",
        __twinlog_config_file="/etc/twinlog/twinlog.toml",
        twinlog_rsyslog_selector="local5.*",
    )
    assert rendered == "# Ansible managed\n" + SHIPPED_RSYSLOG.read_text()


def test_rsyslog_configuration(deployed: tuple[Node, list[Any]]) -> None:
    node, _ = deployed
    conf = node.path("/etc/rsyslog.d/60-twinlog.conf")
    assert mode_owner(conf) == (0o644, 0, 0)
    text = conf.read_text()
    shipped = SHIPPED_RSYSLOG.read_text()
    for default, deployed_path in [
        ("/opt/twinlog/venv/bin/twinlog", node.path("/opt/twinlog/venv/bin/twinlog")),
        ("/etc/twinlog/twinlog.toml", node.path("/etc/twinlog/twinlog.toml")),
    ]:
        shipped = shipped.replace(default, str(deployed_path))
    assert text.endswith(shipped)
    header = text[: len(text) - len(shipped)].splitlines()
    assert header and all(line.startswith("#") for line in header)  # ansible_managed
    rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if os.access(rsyslogd, os.X_OK):
        run([rsyslogd, "-N1", "-f", conf])


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


def parser_commands() -> list[str]:
    """The subcommands of the command line as this checkout's parser defines them."""
    from twinlog.cli import build_parser

    (commands,) = (
        action.choices
        for action in build_parser()._actions
        if isinstance(action.choices, dict) and action.dest == "command"
    )
    return sorted(commands)


def test_bash_completion_and_man_page_follow_the_parser(deployed: tuple[Node, list[Any]]) -> None:
    """Generated on the node from the installed parser, so they name every command it has."""
    node, _ = deployed
    completion = node.path("/usr/share/bash-completion/completions/twinlog")
    man_page = node.path("/usr/share/man/man1/twinlog.1")
    assert mode_owner(completion) == (0o644, 0, 0)
    assert mode_owner(man_page) == (0o644, 0, 0)
    commands = parser_commands()
    assert {"init", "write", "tail", "status", "reconcile"} <= set(commands)
    script = completion.read_text()
    (listed,) = re.findall(r"^_shtab_twinlog_subparsers=\((.*)\)$", script, re.MULTILINE)
    assert sorted(listed.split()) == commands
    assert re.search(r"^complete .*-F _shtab_twinlog twinlog$", script, re.MULTILINE), script
    run(["bash", "-n", completion])
    page = man_page.read_text()
    assert page.startswith('.TH TWINLOG "1" ')
    assert f'"twinlog {metadata.version("twinlog")}"' in page.splitlines()[0]
    for command in commands:
        assert f"\\fBtwinlog\\fR \\fI\\,{command}\\/\\fR" in page, command
    # Rendered when a man formatter is at hand: no warnings from the markup.
    if shutil.which("man") and shutil.which("groff"):
        rendered = run(["man", "--warnings", "-l", man_page], {**os.environ, "MANWIDTH": "80"})
        assert rendered.stderr == "", rendered.stderr


def test_systemd_units_verify(deployed: tuple[Node, list[Any]]) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    node, _ = deployed
    unit_dir = node.path("/etc/systemd/system")
    units = sorted(unit_dir.iterdir())
    assert [u.name for u in units] == [
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
    # systemd's own mount unit of the peer mount point (from fstab) mounts the peer before a run.
    mount_unit = run(
        ["systemd-escape", "--path", "--suffix=mount", node.path("/var/lib/twinlog/peer")]
    ).stdout.strip()
    assert mount_unit.endswith("-var-lib-twinlog-peer.mount"), mount_unit
    assert f"Wants=network-online.target {mount_unit}\n" in service
    assert f"After=network-online.target remote-fs.target {mount_unit}\n" in service


EXPOSURE = re.compile(r"^→ Overall exposure level for (\S+): (\d+\.\d+) ", re.MULTILINE)


def test_systemd_services_are_sandboxed(deployed: tuple[Node, list[Any]]) -> None:
    """systemd-analyze security rates every service the role installs 2.0 or better (of 10)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    node, _ = deployed
    services = sorted(node.path("/etc/systemd/system").glob("*.service"))
    assert len(services) == 2, services
    proc = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", *services])
    exposure = {name: float(level) for name, level in EXPOSURE.findall(proc.stdout)}
    assert set(exposure) == {s.name for s in services}, proc.stdout
    assert all(level <= 2.0 for level in exposure.values()), (exposure, proc.stdout)


def test_exports_and_nfs_lease(deployed: tuple[Node, list[Any]]) -> None:
    node, _ = deployed
    exports = node.path("/etc/exports.d/twinlog.exports").read_text().splitlines()
    entries = [line for line in exports if line and not line.startswith("#")]
    assert entries == [
        f"{node.path('/var/lib/twinlog/log')} 127.0.0.2(rw,sync,root_squash,no_subtree_check)"
    ]
    nfs_conf = node.path("/etc/nfs.conf.d/twinlog.conf").read_text()
    assert "[nfsd]\nlease-time = 10\ngrace-time = 10\n" in nfs_conf
    assert "[gssd]" not in nfs_conf  # sys: no Kerberos


KERBEROS_TASKS = [
    "Check the NFS security flavour",
    "Check that the Kerberos keytabs are provided",
    "Check that the keytabs to copy are files on the controller",
    "Look for the keytabs already on the node",
    "Check that the keytabs are on the node",
    "Create the directories of the Kerberos files",
    "Install this node's keytab",
    "Install the service user's keytab as its gssproxy client keytab",
    "Let gssproxy hand the service user its NFS credentials",
    "Set the NFSv4 id mapping domain",
    "Enable and start gssproxy",
    "Start the NFS client's Kerberos daemon",
]


def task_outcomes(stdout: str) -> dict[str, set[str]]:
    """Task name (without the role prefix) -> the outcomes its hosts and items reported."""
    outcomes: dict[str, set[str]] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            current = line.split("[", 1)[1].rsplit("]", 1)[0].split(" : ", 1)[-1]
            outcomes.setdefault(current, set())
        elif current and (m := re.match(r"^(ok|changed|skipping|failed|fatal):", line)):
            outcomes[current].add(m[1])
    return outcomes


def test_sys_runs_no_kerberos_task(deployed: tuple[Node, list[Any]]) -> None:
    """With the default sec=sys every Kerberos task is skipped and no Kerberos file is written."""
    node, runs = deployed
    for proc in runs:
        outcomes = task_outcomes(proc.stdout)
        for name in KERBEROS_TASKS:
            assert outcomes.get(name) == {"skipping"}, (name, outcomes.get(name))
    for path in (
        "/etc/krb5.keytab",
        "/etc/gssproxy",
        "/var/lib/gssproxy",
        "/etc/idmapd.conf",
    ):
        assert not node.path(path).exists(), path


DEBIAN_IDMAPD_CONF = """[General]

Verbosity = 0
# set your own domain here, if it differs from FQDN minus hostname
# Domain = localdomain

[Mapping]

Nobody-User = nobody
Nobody-Group = nogroup
"""


@pytest.fixture(scope="module")
def deployed_with_kerberos() -> Iterator[tuple[Node, dict[str, str], list[Any]]]:
    """The role's checks, NFS and Kerberos parts (tags) with sec=krb5p and stand-in keytabs: check
    mode, two real runs, check mode again. Files only: no KDC, no NFS server, no mount here."""
    with scratch_area() as (tmp, python):
        node = Node(tmp, python, source={})
        sources = keytabs(tmp)
        idmapd = node.path("/etc/idmapd.conf")
        idmapd.parent.mkdir(parents=True)
        idmapd.write_text(DEBIAN_IDMAPD_CONF)
        settings = {
            "twinlog_nfs_sec": "krb5p",
            "twinlog_nfs_idmap_domain": "pair.example",
            **sources,
        }
        args = ["--tags", "twinlog_peer,twinlog_krb5,twinlog_nfs", "-e", json.dumps(settings)]
        runs = [node.playbook("--check", "--diff", *args)]
        node.after_check = snapshot([str(node.root)])
        runs += [node.playbook(*args), node.playbook(*args), node.playbook("--check", *args)]
        yield node, sources, runs


def test_kerberos_run_is_idempotent(
    deployed_with_kerberos: tuple[Node, dict[str, str], list[Any]],
) -> None:
    node, _, runs = deployed_with_kerberos
    first_check, first, *again = runs
    assert recap(first_check.stdout)["node-a"]["changed"] > 0
    # Check mode wrote nothing: the scratch root holds only the idmapd.conf put there first.
    assert node.after_check == {
        str(node.root): [str(node.path("/etc")), str(node.path("/etc/idmapd.conf"))]
    }
    assert recap(first.stdout)["node-a"]["changed"] > 0
    for proc in again:
        counts = recap(proc.stdout)["node-a"]
        assert counts["failed"] == 0
        assert counts["changed"] == 0, changed_tasks(proc.stdout)


def test_kerberos_exports_and_keytabs(
    deployed_with_kerberos: tuple[Node, dict[str, str], list[Any]],
) -> None:
    node, sources, _ = deployed_with_kerberos
    exports = node.path("/etc/exports.d/twinlog.exports").read_text().splitlines()
    entries = [line for line in exports if line and not line.startswith("#")]
    assert entries == [
        f"{node.path('/var/lib/twinlog/log')} 127.0.0.2({DEFAULT_EXPORT_OPTIONS},sec=krb5p)"
    ]
    nfs_conf = node.path("/etc/nfs.conf.d/twinlog.conf").read_text()
    assert "[nfsd]\nlease-time = 10\ngrace-time = 10\n" in nfs_conf
    assert nfs_conf.endswith("[gssd]\nuse-gss-proxy = 1\n")
    host_keytab = node.path("/etc/krb5.keytab")
    client_keytab = node.path(f"/var/lib/gssproxy/clients/{UID}.keytab")
    assert host_keytab.read_bytes() == Path(sources["twinlog_krb5_keytab_src"]).read_bytes()
    assert (
        client_keytab.read_bytes() == Path(sources["twinlog_krb5_client_keytab_src"]).read_bytes()
    )
    assert mode_owner(host_keytab) == mode_owner(client_keytab) == (0o600, 0, 0)
    gssproxy = node.path("/etc/gssproxy/99-twinlog-nfs-client.conf")
    assert mode_owner(gssproxy) == (0o644, 0, 0)
    conf = gssproxy.read_text()
    assert "[service/twinlog-nfs-client]\n" in conf
    assert f"  cred_store = keytab:{host_keytab}\n" in conf
    assert f"  cred_store = client_keytab:{client_keytab.parent}/%U.keytab\n" in conf
    assert "  cred_usage = initiate\n" in conf
    # The domain replaces the commented example, in [General].
    idmapd = node.path("/etc/idmapd.conf").read_text()
    assert idmapd == DEBIAN_IDMAPD_CONF.replace("# Domain = localdomain", "Domain = pair.example")


# -- the collection, built and installed as a user would, deployed without a checkout -------------

COLLECTION = "twinlog.pair"
TWO_LINE_PLAYBOOK = "---\n- ansible.builtin.import_playbook: twinlog.pair.deploy\n"


@pytest.fixture(scope="module")
def collection_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("collection")
    run(
        ["ansible-galaxy", "collection", "build", ANSIBLE_DIR, "--output-path", out],
        ansible_env(out),
    )
    (tarball,) = out.glob("twinlog-pair-*.tar.gz")
    return tarball


def test_collection_holds_the_role_and_the_playbook_only(collection_tarball: Path) -> None:
    with tarfile.open(collection_tarball) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    role_files = {
        f"roles/twinlog/{p.relative_to(ANSIBLE_DIR / 'roles/twinlog')}"
        for p in (ANSIBLE_DIR / "roles/twinlog").rglob("*")
        if p.is_file()
    }
    assert role_files <= names
    assert {"README.md", "meta/runtime.yml", "playbooks/deploy.yml"} <= names
    assert "roles/twinlog/README.md" in names
    # The repository's development files stay out.
    assert not names & {"site.yml", "requirements.yml", ".ansible-lint", "galaxy.yml"}
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"]) == ("twinlog", "pair")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert info["version"] == pyproject["project"]["version"]
    assert info["dependencies"] == {"ansible.posix": ">=1.5.0"}


def install_collection(tarball: Path, tmp: Path) -> dict[str, str]:
    """Install the tarball into a scratch collections path; return an environment that finds
    the collection there and no role of this checkout."""
    collections = tmp / "collections"
    env = ansible_env(tmp)
    run(["ansible-galaxy", "collection", "install", tarball, "-p", collections], env)
    (tmp / "no-roles").mkdir()
    env.update(ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_ROLES_PATH=str(tmp / "no-roles"))
    return env


def test_role_documentation_comes_from_the_argument_specs(
    collection_tarball: Path, tmp_path: Path
) -> None:
    """The role's README sends readers to ansible-doc, which renders meta/argument_specs.yml: it
    must document every variable the role's defaults set."""
    env = install_collection(collection_tarball, tmp_path)
    proc = run(["ansible-doc", "-t", "role", "--json", f"{COLLECTION}.twinlog"], env)
    options = json.loads(proc.stdout)[f"{COLLECTION}.twinlog"]["entry_points"]["main"]["options"]
    defaults = (ANSIBLE_DIR / "roles/twinlog/defaults/main.yml").read_text()
    variables = set(re.findall(r"^(twinlog_\w+):", defaults, re.MULTILINE))
    assert variables == set(options)
    readme = (ANSIBLE_DIR / "roles/twinlog/README.md").read_text()
    assert f"ansible-doc -t role {COLLECTION}.twinlog" in readme


@pytest.fixture(scope="module")
def deployed_from_collection(
    collection_tarball: Path, wheelhouse: Path
) -> Iterator[tuple[Node, list[subprocess.CompletedProcess[str]]]]:
    """A deploy directory with an inventory, a two-line playbook and a wheelhouse, nothing of
    twinlog's source; the collection installed from its tarball; two real runs."""
    with scratch_area() as (tmp, python):
        env = install_collection(collection_tarball, tmp)
        deploy = tmp / "deploy"
        deploy.mkdir()
        (deploy / "site.yml").write_text(TWO_LINE_PLAYBOOK)
        (deploy / "wheelhouse").mkdir()
        for wheel in wheelhouse.glob("*.whl"):
            shutil.copy(wheel, deploy / "wheelhouse")
        # No twinlog_wheelhouse: the default, the wheelhouse beside the inventory.
        node = Node(
            tmp,
            python,
            source={},
            inventory=deploy / "inventory.yml",
            site=deploy / "site.yml",
            env=env,
        )
        assert sorted(p.name for p in deploy.iterdir()) == [
            "inventory.yml",
            "site.yml",
            "wheelhouse",
        ]
        yield node, [node.playbook(), node.playbook()]


def test_deploy_from_the_built_collection(
    deployed_from_collection: tuple[Node, list[subprocess.CompletedProcess[str]]],
) -> None:
    node, (first, second) = deployed_from_collection
    assert "TASK [twinlog.pair.twinlog : " in first.stdout
    assert recap(first.stdout)["node-a"]["failed"] == 0
    assert recap(second.stdout)["node-a"]["changed"] == 0, changed_tasks(second.stdout)
    version = metadata.version("twinlog")
    proc = run([node.path("/opt/twinlog/venv/bin/twinlog"), "--version"])
    assert proc.stdout == f"twinlog {version}\n"
    config = tomllib.loads(node.path("/etc/twinlog/twinlog.toml").read_text())
    assert (config["node"], config["peer"]) == ("node-a", "node-b")
    assert node.path("/var/lib/twinlog/log/twinlog.node").read_text().strip() == "node-a"
    assert node.path("/usr/share/man/man1/twinlog.1").is_file()
    units = sorted(p.name for p in node.path("/etc/systemd/system").iterdir())
    assert units == [
        f"twinlog-{c}.{k}" for c in ("reconcile", "rotate") for k in ("service", "timer")
    ]
