"""SIGHUP reloads the daemon's configuration between runs: a file that does not
validate changes nothing (the old configuration keeps running, the error is logged as
an alert); a valid one takes effect at each pipeline's next run, without a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from tests.e2e.conftest import Env


class Lines:
    """The daemon's log lines as they come, read by a thread so the test can wait on them."""

    def __init__(self, daemon: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        assert daemon.stderr is not None
        self._stream = daemon.stderr
        self._thread = threading.Thread(target=self._read, args=(daemon.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.seen.append(line)

    def close(self) -> None:
        self._thread.join(timeout=10)
        self._stream.close()

    def events(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in list(self.seen):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                found.append(record)
        return found


def wait_for(check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def counts(e2e: Env, config: str) -> dict[str, int]:
    """The target's delivery counts, read through a copy of the good file (the daemon's
    own file is broken on purpose for a while)."""
    result = e2e.cli("status", "-c", config, "-o", "json")
    assert result.returncode == 0, result.stderr
    found: dict[str, int] = json.loads(result.stdout)["pipelines"][0]["targets"][0]
    return found


def test_sighup_reloads_a_valid_file_and_keeps_running_on_a_bad_one(e2e: Env) -> None:
    good = e2e.config.read_text(encoding="utf-8")
    copy = e2e.tmp / "status.yaml"
    copy.write_text(good, encoding="utf-8")
    daemon = e2e.popen("run", "-c", str(e2e.config))
    lines = Lines(daemon)
    try:
        wait_for(lambda: bool(lines.events("daemon_started")))
        e2e.box.delete_in_goose("CON_TRO", ["0-1"])
        wait_for(lambda: counts(e2e, str(copy))["done"] == 1)

        e2e.config.write_text(good.replace("pipelines:", "pipelines: [oops"), encoding="utf-8")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: bool(lines.events("alert_config_reload_failed")))
        e2e.box.delete_in_goose("CON_TRO", ["0-2"])
        wait_for(lambda: counts(e2e, str(copy))["done"] == 2)
        assert daemon.poll() is None, "a bad file never stops the daemon"

        held = good.replace(
            "batch_size: 3",
            'batch_size: 3\n        guard: {legal_hold: {key: "{RECORD_ID}", patterns: ["0-3"]}}',
        )
        e2e.config.write_text(held, encoding="utf-8")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: bool(lines.events("config_reloaded")))
        e2e.box.delete_in_goose("CON_TRO", ["0-3"])
        wait_for(lambda: counts(e2e, str(copy))["dead"] == 1)
        assert counts(e2e, str(copy))["done"] == 2, "the legal hold of the new file held 0-3"
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        lines.close()
        assert daemon.stdout is not None
        daemon.stdout.close()
    assert daemon.returncode == 0
    (failed,) = lines.events("alert_config_reload_failed")
    assert "not valid YAML" in json.dumps(failed["problems"])
    (reloaded,) = lines.events("config_reloaded")
    assert reloaded["changed"] == ["contacts"] and reloaded["added"] == []
    assert not any("Traceback" in line for line in lines.seen)
