"""Install the host tools the lab needs, only when one is missing."""

from __future__ import annotations

import os
import shutil
import subprocess

# tool on PATH -> Debian package that provides it
TOOLS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "debootstrap": "debootstrap",
    "socat": "socat",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "mkfs.ext4": "e2fsprogs",
}


def missing_packages() -> list[str]:
    return sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})


def ensure_host_tools() -> None:
    packages = missing_packages()
    if not packages:
        return
    print(f"lab: installing host packages {' '.join(packages)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
    )
    still = missing_packages()
    if still:
        raise RuntimeError(f"host packages still missing after install: {still}")
