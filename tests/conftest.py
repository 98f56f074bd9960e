from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pairlib import Pair, can_bind_mount, write_toml


@pytest.fixture(scope="session")
def bind_mounts_work(tmp_path_factory: pytest.TempPathFactory) -> bool:
    return os.geteuid() == 0 and can_bind_mount(tmp_path_factory.mktemp("mountprobe"))


@pytest.fixture
def pair(tmp_path: Path, bind_mounts_work: bool, request: pytest.FixtureRequest) -> Iterator[Pair]:
    """Two nodes a and b, cross bind-mounted and connected; always unmounted afterwards.

    Tests marked ``no_mounts`` (the commit's logic, not the mount checks) get the pair of
    ``twinlog.testing`` instead: the same algorithm through the same worker, no root."""
    if request.node.get_closest_marker("no_mounts"):
        local = Pair(tmp_path, mounts=False)
        try:
            yield local
        finally:
            local.close()
        return
    if not bind_mounts_work:
        pytest.skip("bind mounts need root (mount --bind); run the tests as root")
    p = Pair(tmp_path)
    try:
        p.twin("a").close()  # create both directories' markers before mounting
        p.twin("b").close()
        p.heal()
        yield p
    finally:
        p.close()


@pytest.fixture
def conf(pair: Pair, tmp_path: Path) -> dict[str, str]:
    """A configuration file per node of the bind-mounted pair."""
    return {
        node: os.fspath(write_toml(tmp_path / f"{node}.toml", pair.config_dict(node)))
        for node in ("a", "b")
    }
