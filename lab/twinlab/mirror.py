"""Find the Debian mirror this machine's own apt uses (one-line and deb822 formats)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

APT_DIR = Path("/etc/apt")
FALLBACK = "http://deb.debian.org/debian"


def debian_mirror(suite: str = "bookworm", apt_dir: Path = APT_DIR) -> str:
    """The first enabled `deb` source that serves `suite` itself (not -security/-updates)."""
    for uri, suites in _sources(apt_dir):
        if suite in suites and "security" not in uri:
            return uri.rstrip("/")
    return FALLBACK


def _sources(apt_dir: Path) -> Iterator[tuple[str, list[str]]]:
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if path.is_file():
            yield from _parse_one_line(path.read_text())
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        yield from _parse_deb822(path.read_text())


def _parse_one_line(text: str) -> Iterator[tuple[str, list[str]]]:
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "deb":
            continue
        rest = words[1:]
        if rest[0].startswith("["):  # options like [arch=amd64 signed-by=...]
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2:
            yield rest[0], [rest[1]]


def _parse_deb822(text: str) -> Iterator[tuple[str, list[str]]]:
    for stanza in text.split("\n\n"):
        fields = _stanza_fields(stanza)
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = fields.get("suites", "").split()
        for uri in fields.get("uris", "").split():
            yield uri, suites


def _stanza_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    return fields
