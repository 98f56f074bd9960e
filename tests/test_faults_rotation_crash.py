"""A crash in the middle of a rotation must not make the node reuse sequence numbers.

Found by the history checker (tests/history.py, seed 2): a writer died at ``after_rotate_rename``
(the active log already renamed to a segment, the checkpoint not yet rewritten). The checkpoint
left behind was the *fresh* one of the previous rotation (offset 0, the marks at that rotation);
it matches the missing active log (offset 0 <= size 0, no tail to compare), so the next process
took its stale marks, skipped the segment the crash had just made, and wrote ``seq`` numbers
that were already in that segment: two different entries with the same id, both acknowledged.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from twinlog import Config, TwinLog

ROTATE = """
import json, sys
from twinlog import Config, TwinLog
with TwinLog(Config.from_mapping(json.loads(sys.argv[1]))) as log:
    log.rotate()
"""


def all_ids(log_dir: Path) -> list[str]:
    ids = []
    for path in sorted(log_dir.glob("twinlog.log*")):
        ids += [json.loads(line)["id"] for line in path.read_bytes().splitlines()]
    return ids


def test_crash_after_rotate_rename_following_an_earlier_rotation(tmp_path: Path) -> None:
    config = Config("a", "b", tmp_path / "a", tmp_path / "peer", require_mount=False)
    with TwinLog.init(config) as log:
        for i in range(3):
            log.write(f"before first rotation {i}")
        log.rotate()  # leaves a "fresh" checkpoint: offset 0, a's mark 3
        for i in range(3):
            log.write(f"after first rotation {i}")  # a:4..a:6
    env = dict(os.environ, TWINLOG_FAILPOINTS="after_rotate_rename")
    crashed = subprocess.run(
        [sys.executable, "-c", ROTATE, json.dumps(config.to_dict())], env=env, check=False
    )
    assert crashed.returncode == -signal.SIGKILL  # twinlog.log is now segment 2, idx unchanged
    with TwinLog(config) as log:
        entry = log.write("after the crash")
    ids = all_ids(config.log_dir)
    dups = [i for i, n in collections.Counter(ids).items() if n > 1]
    assert not dups, f"sequence numbers reused after a crashed rotation: {dups}"
    assert entry.seq == 7
