"""Who may take a lease early: only a holder proven gone, in this boot and PID namespace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from syncengine.engine import lease
from syncengine.engine.lease import BOOT, HOST, PID_NAMESPACE, holder_is_gone, owner_name


def _absent_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_our_name_carries_where_our_pid_means_something() -> None:
    host, pid, _, boot, namespace = owner_name(os.getpid()).split(":")
    assert (host, pid, boot, namespace) == (HOST, str(os.getpid()), BOOT, PID_NAMESPACE)
    assert "-" not in (BOOT, PID_NAMESPACE), "read on Linux"


def test_a_dead_pid_is_proof_only_with_our_boot_and_namespace() -> None:
    pid = _absent_pid()
    assert holder_is_gone(f"{HOST}:{pid}:n:{BOOT}:{PID_NAMESPACE}")
    assert not holder_is_gone(f"{HOST}:{pid}:n:{BOOT}:{int(PID_NAMESPACE) + 1}")
    assert not holder_is_gone(f"{HOST}:{pid}:n:another-boot:{PID_NAMESPACE}")
    assert not holder_is_gone(f"another-host:{pid}:n:{BOOT}:{PID_NAMESPACE}")
    assert not holder_is_gone(f"{HOST}:{pid}:n"), "an older daemon's name proves nothing"
    assert not holder_is_gone(f"{HOST}:{os.getpid()}:n:{BOOT}:{PID_NAMESPACE}")


def test_where_the_namespace_cannot_be_read_nothing_is_taken_early(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert lease._pid_namespace(str(tmp_path / "absent")) == "-"
    assert lease._boot_id(str(tmp_path / "absent")) == "-"
    monkeypatch.setattr(lease, "PID_NAMESPACE", "-")
    assert not holder_is_gone(f"{HOST}:{_absent_pid()}:n:{BOOT}:-")
