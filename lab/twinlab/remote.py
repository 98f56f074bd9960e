"""A command running in the background on a VM, whose output lines we can wait for."""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading
import time


class Remote:
    """Wraps a Popen from Lab.spawn(): lines arrive in a queue, each with its host arrival time."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def line(self, timeout: float) -> tuple[float, str] | None:
        """The next output line and when it arrived, or None after timeout."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def expect(self, prefix: str, timeout: float) -> tuple[float, str]:
        """Wait for a line starting with prefix (skipping others); raise on timeout or exit."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            item = self.line(min(left, 0.5))
            if item is None:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            if item[1].startswith(prefix):
                return item
            seen.append(item[1])
        raise TimeoutError(f"no {prefix!r} line within {timeout} s; got {seen[-5:]}")

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def finish(self, timeout: float = 15.0) -> int:
        """Close stdin, wait for the exit (kill the local ssh after timeout), free the pipes."""
        self.close_stdin()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
