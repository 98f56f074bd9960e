"""Talk to a qemu human monitor (HMP) on its unix socket.

Same protocol as `socat - UNIX-CONNECT:SOCK`: read the banner up to the "(qemu) " prompt, send one
command line, read until the next prompt. Doing it in Python tells us when the command finished.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

PROMPT = b"(qemu) "


def monitor_command(sock_path: Path, command: str, timeout: float = 10.0) -> str:
    """Run one HMP command and return its output (without echo and prompt).

    `quit` closes the socket instead of printing a prompt: that counts as success.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        _read_until_prompt(sock, timeout)
        sock.sendall(command.encode() + b"\n")
        reply = _read_until_prompt(sock, timeout)
    return _strip_echo(reply.decode(errors="replace"), command)


def _read_until_prompt(sock: socket.socket, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(PROMPT):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no monitor prompt after {timeout} s: {data[-200:]!r}")
        chunk = sock.recv(4096)
        if not chunk:  # qemu closed the monitor (quit)
            break
        data += chunk
    return data.removesuffix(PROMPT)


def _strip_echo(text: str, command: str) -> str:
    # HMP echoes the command line (with terminal escapes) before the output.
    lines = text.replace("\r", "").split("\n")
    kept = [line for line in lines if command not in line and "\x1b" not in line]
    return "\n".join(kept).strip()
