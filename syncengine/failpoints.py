"""Named crash points for the crash tests: SIGKILL this process at an exact moment.

`SYNCENGINE_FAILPOINTS=after_fetch` (comma-separated names) makes the
engine kill itself when it reaches that point, the way a power cut or an
OOM kill would. `name@N` fires on the N-th time the point is reached.
Unset (always, outside tests), `hit` does nothing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "SYNCENGINE_FAILPOINTS"
_seen: Counter[str] = Counter()


def hit(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    _seen[name] += 1
    for item in spec.split(","):
        point, _, nth = item.strip().partition("@")
        if point == name and _seen[name] == (int(nth) if nth else 1):
            os.kill(os.getpid(), signal.SIGKILL)
