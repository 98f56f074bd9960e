"""The distribution as a user gets it: build the sdist and the wheel from this checkout, then check
them the way a package index would (``twine check --strict``, ``check-wheel-contents``) and read
what they declare (license, version, dependencies)."""

from __future__ import annotations

import email.parser
import importlib.util
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.message import Message
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dist/ with one sdist and one wheel, built in an isolated environment like a release."""
    for module in ("build", "twine", "check_wheel_contents"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, REPO],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # setuptools warns about deprecated or missing metadata on stderr without failing the build.
    assert "Warning" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return out


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob("twinlog-*.whl")
    return wheel


def wheel_metadata(dist: Path) -> Message:
    with zipfile.ZipFile(wheel_of(dist)) as whl:
        (name,) = (n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(whl.read(name).decode())


def test_twine_check_strict(dist: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_check_wheel_contents(dist: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "check_wheel_contents", wheel_of(dist)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ": OK" in proc.stdout, proc.stdout


def test_license_is_an_spdx_expression_shipped_with_its_file(dist: Path) -> None:
    meta = wheel_metadata(dist)
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert not [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    with zipfile.ZipFile(wheel_of(dist)) as whl:
        (name,) = (n for n in whl.namelist() if n.endswith(".dist-info/licenses/LICENSE"))
        assert whl.read(name).decode() == license_text
    (sdist,) = dist.glob("twinlog-*.tar.gz")
    with tarfile.open(sdist) as tar:
        assert any(m.name.endswith("/LICENSE") for m in tar.getmembers())


def test_metadata_names_the_project_and_its_version(dist: Path) -> None:
    meta = wheel_metadata(dist)
    assert meta["Version"] == PYPROJECT["project"]["version"]
    assert meta["Requires-Python"] == ">=3.11"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Source", "Changelog", "Issues", "Documentation"} <= set(urls), urls
    # The documents the URLs point into exist at those paths in this repository.
    for url in urls.values():
        if "/blob/main/" in url:
            assert (REPO / url.split("/blob/main/", 1)[1]).is_file(), url


def test_every_runtime_dependency_is_imported() -> None:
    """No dead dependency: each one is imported by the package's own code."""
    sources = "\n".join(p.read_text() for p in (REPO / "src/twinlog").glob("*.py"))
    for requirement in PYPROJECT["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert name is not None, requirement
        module = name[0].lower().replace("-", "_")
        assert re.search(rf"^\s*(import|from) {module}\b", sources, re.MULTILINE), requirement


def test_version_is_the_newest_release_in_the_changelog() -> None:
    """Keep a Changelog: an Unreleased section on top, then one entry per released version,
    newest first; pyproject.toml carries the newest."""
    changelog = (REPO / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\](.*)$", changelog, re.MULTILINE)
    assert headings[0] == ("Unreleased", "")
    released = headings[1:]
    assert released, "no released version in CHANGELOG.md"
    for version, date in released:
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
        assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", date), (version, date)
    versions = [tuple(int(p) for p in v.split(".")) for v, _ in released]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)
    assert PYPROJECT["project"]["version"] == released[0][0]
    for version, _ in headings:  # every heading has its link at the bottom
        assert re.search(rf"^\[{re.escape(version)}\]: https://", changelog, re.MULTILINE), version
