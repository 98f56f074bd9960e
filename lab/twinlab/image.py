"""Build the guest image once: debootstrap, customize, trim, mkfs.ext4 -d, qcow2.

The result lives in CACHE_DIR/image-<digest>/ where <digest> hashes the recipe (suite, packages,
size, the files copied into the image and the customize script). Changing any of these builds a
new image; nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from twinlab import hostdeps, mirror
from twinlab.paths import CACHE_DIR, GUEST_DIR, IMAGE_FILES_DIR

RECIPE_VERSION = 1
PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "kmod",
    "openssh-server",
    "python3",
    "python3-venv",
    "nfs-kernel-server",
    "nfs-common",
    "iproute2",
    "sudo",
    "procps",
    "netbase",
    "ca-certificates",
    "dbus",
    "initramfs-tools",
    # Not in the lab's own needs: Ansible's apt/package module needs it on the node, and the
    # nodes have no package mirror to fetch it from.
    "python3-apt",
)
CUSTOMIZE_SCRIPT = GUEST_DIR / "customize.sh"
KEY_NAME = "id_ed25519"


@dataclass(frozen=True)
class Recipe:
    suite: str = "bookworm"
    packages: tuple[str, ...] = PACKAGES
    disk_size: str = "3G"
    files_dir: Path = IMAGE_FILES_DIR
    customize: Path = CUSTOMIZE_SCRIPT
    version: int = RECIPE_VERSION

    def digest(self) -> str:
        h = hashlib.sha256()
        meta = {
            "suite": self.suite,
            "packages": sorted(self.packages),
            "size": self.disk_size,
            "version": self.version,
        }
        h.update(json.dumps(meta, sort_keys=True).encode())
        for path in sorted(p for p in self.files_dir.rglob("*") if p.is_file()):
            h.update(str(path.relative_to(self.files_dir)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
        h.update(self.customize.read_bytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    """A built image: base disk, kernel, initrd and the root ssh key baked into it."""

    directory: Path
    digest: str = field(default="")

    @property
    def base(self) -> Path:
        return self.directory / "base.qcow2"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def key(self) -> Path:
        return self.directory / KEY_NAME

    def complete(self) -> bool:
        return (self.directory / "DONE").exists()


def image_for(recipe: Recipe, cache_dir: Path = CACHE_DIR) -> Image:
    digest = recipe.digest()
    return Image(cache_dir / f"image-{digest}", digest)


def ensure_image(recipe: Recipe | None = None, cache_dir: Path = CACHE_DIR) -> Image:
    """Return the cached image for the recipe, building it first if needed."""
    recipe = recipe or Recipe()
    image = image_for(recipe, cache_dir)
    if image.complete():
        return image
    hostdeps.ensure_host_tools()
    started = time.monotonic()
    build_dir = cache_dir / f"build-{image.digest}"
    if build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)
    _build(recipe, build_dir, cache_dir)
    (build_dir / "DONE").write_text(f"built in {time.monotonic() - started:.0f} s\n")
    if image.directory.exists():
        shutil.rmtree(image.directory)
    build_dir.rename(image.directory)
    _prune_old_images(cache_dir, keep=image.directory)
    _log(f"image {image.digest} ready in {time.monotonic() - started:.0f} s")
    return image


def _build(recipe: Recipe, build_dir: Path, cache_dir: Path) -> None:
    rootfs = build_dir / "rootfs"
    log = build_dir / "build.log"
    debs = cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    source = mirror.debian_mirror()
    _log(f"debootstrap {recipe.suite} from {source} (about 2 minutes)")
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--cache-dir={debs}",
            f"--include={','.join(recipe.packages)}",
            recipe.suite,
            str(rootfs),
            source,
        ],
        log,
    )
    _make_key(build_dir / KEY_NAME)
    _install_files(recipe.files_dir, rootfs)
    _install_key(build_dir / f"{KEY_NAME}.pub", rootfs)
    _log("customizing and trimming the root filesystem")
    with recipe.customize.open("rb") as script:
        _run(["chroot", str(rootfs), "/bin/sh", "-s"], log, stdin=script)
    _extract_boot_files(rootfs, build_dir)
    _log("making the ext4 image and the qcow2 base")
    raw = build_dir / "root.raw"
    _run(
        ["mkfs.ext4", "-q", "-F", "-L", "twinroot", "-d", str(rootfs), str(raw), recipe.disk_size],
        log,
    )
    _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(build_dir / "base.qcow2")], log)
    raw.unlink()
    shutil.rmtree(rootfs)
    (build_dir / "recipe.json").write_text(
        json.dumps(
            {"suite": recipe.suite, "packages": list(recipe.packages), "mirror": source}, indent=2
        )
    )


def _make_key(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "twinlog-lab", "-f", str(path)],
        check=True,
    )


def _install_files(files_dir: Path, rootfs: Path) -> None:
    for src in sorted(files_dir.rglob("*")):
        if src.is_file():
            dst = rootfs / src.relative_to(files_dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            dst.chmod(0o644)


def _install_key(public_key: Path, rootfs: Path) -> None:
    ssh_dir = rootfs / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    shutil.copyfile(public_key, authorized)
    authorized.chmod(0o600)


def _extract_boot_files(rootfs: Path, build_dir: Path) -> None:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise RuntimeError(f"expected one kernel and one initrd, got {kernels} {initrds}")
    shutil.copyfile(kernels[0], build_dir / "vmlinuz")
    shutil.copyfile(initrds[0], build_dir / "initrd.img")


def _prune_old_images(cache_dir: Path, keep: Path) -> None:
    for old in cache_dir.glob("image-*"):
        if old != keep and old.is_dir():
            shutil.rmtree(old)


def _run(cmd: list[str], log: Path, stdin: IO[bytes] | None = None) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=stdin, check=False)
    if result.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"{cmd[0]} failed ({result.returncode}); see {log}:\n{tail}")


def _log(message: str) -> None:
    print(f"lab: {message}", flush=True)
