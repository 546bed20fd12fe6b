"""Run one contender as a child process and read what it cost: wall time, CPU, peak RSS.

`os.wait4` gives the rusage of that child alone (and of any children it
waited for), so the emulators, in their own process, and this harness are
never counted. A child past its timeout is killed and still measured: its
peak RSS so far is in the same rusage.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ChildResult:
    seconds: float
    """Wall time from spawn to exit (to the kill if it timed out)."""
    cpu_seconds: float
    peak_rss_mb: float
    returncode: int
    timed_out: bool
    stdout: str
    stderr: str


def run_child(
    argv: Sequence[str],
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ChildResult:
    """The child is waited for through a pidfd, so it is killed only while it is still
    ours (not yet reaped): no other process can be hit by the timeout's kill."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=cwd, env=env)
        pidfd = os.pidfd_open(proc.pid)
        try:
            ready, _, _ = select.select([pidfd], [], [], max(timeout, 0.0))
            took = time.perf_counter() - began
            if not ready:
                os.kill(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
            raise
        finally:
            os.close(pidfd)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildResult(
            seconds=took,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            peak_rss_mb=usage.ru_maxrss / 1024,  # Linux reports kilobytes
            returncode=proc.returncode,
            timed_out=not ready,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )
