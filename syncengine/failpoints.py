"""Named points for the crash and race tests: stop this process at an exact moment.

`SYNCENGINE_FAILPOINTS=after_fetch` (comma-separated names) makes the
engine kill itself when it reaches that point, the way a power cut or an
OOM kill would. `name@N` fires on the N-th time the point is reached.
`name=pause` freezes the process there instead, so a test can act beside
it (another command, as an operator would) at that exact moment: it creates
`<name>.paused` in `SYNCENGINE_PAUSE_DIR` and waits for `<name>.resume`
there (at most PAUSE_LIMIT seconds). Unset (always, outside tests), `hit`
does nothing.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

ENV = "SYNCENGINE_FAILPOINTS"
PAUSE_DIR = "SYNCENGINE_PAUSE_DIR"
PAUSE_LIMIT = 120.0
_seen: Counter[str] = Counter()


def hit(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    _seen[name] += 1
    for item in spec.split(","):
        where, _, action = item.strip().partition("=")
        point, _, nth = where.partition("@")
        if point == name and _seen[name] == (int(nth) if nth else 1):
            if action == "pause":
                _pause(name)
            else:
                os.kill(os.getpid(), signal.SIGKILL)


def _pause(name: str) -> None:
    folder = Path(os.environ[PAUSE_DIR])
    (folder / f"{name}.paused").touch()
    resume = folder / f"{name}.resume"
    deadline = time.monotonic() + PAUSE_LIMIT
    while not resume.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
