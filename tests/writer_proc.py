"""A writer process for crash tests: ``python writer_proc.py CONFIG_JSON COUNT [PREFIX]``.

Writes COUNT entries (forever if COUNT is 0) and prints each acknowledged id on its own line,
flushed, the moment write() returns: the parent's record of what was acknowledged. A COUNT of
-1 runs one reconcile instead, -2 one repair (its result as JSON). At a normal end it prints its
group-commit counters (JSON) on stderr.
"""

from __future__ import annotations

import json
import sys

from twinlog import Config, TwinLog


def main() -> None:
    config = Config.from_mapping(json.loads(sys.argv[1]))
    count = int(sys.argv[2])
    prefix = sys.argv[3] if len(sys.argv) > 3 else "w"
    with TwinLog(config) as log:
        if count == -2:
            print(json.dumps(log.repair().to_dict()), flush=True)
            return
        if count < 0:
            log.reconcile()
            print("reconciled", flush=True)
            return
        i = 0
        while count == 0 or i < count:
            entry = log.write(f"{prefix}-{i}", writer=prefix)
            sys.stdout.write(entry.id + "\n")
            sys.stdout.flush()
            i += 1
        print(json.dumps(log.group_stats), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
