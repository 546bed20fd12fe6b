"""The deployment files keep the promises the README makes for them. No container
engine runs on these machines, so the Dockerfile is held to being the same install the
wheel test exercises; the systemd unit is checked by systemd's own verifier where the
machine has it, and for its hardening either way."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def directives(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_dockerfile_installs_the_built_wheel_as_a_non_root_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert bases and all(base == "python:3.11-slim" for base in bases)
    assert "python -m build --wheel" in text
    assert re.search(r"pip install --no-cache-dir /tmp/dist/\*\.whl", text)
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user == ["syncengine"]
    assert re.search(r'^VOLUME \["/var/lib/syncengine"\]', text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.MULTILINE)
    assert re.search(r"^STOPSIGNAL SIGTERM", text, re.MULTILINE)
    # Exec form: the process itself gets SIGTERM, not a shell.
    assert re.search(r'^ENTRYPOINT \["syncengine"\]', text, re.MULTILINE)


def test_compose_runs_two_daemons_on_one_postgresql() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    daemons = [name for name, s in services.items() if s.get("image") == "syncengine"]
    assert len(daemons) == 2
    assert services["db"]["image"].startswith("postgres:")
    for name in daemons:
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy"
        assert services[name]["stop_grace_period"] == "2m"


def test_the_systemd_unit_is_hardened_and_stops_gracefully() -> None:
    unit = directives(DEPLOY / "syncengine.service")
    assert unit["Restart"] == ["on-failure"]
    assert unit["StateDirectory"] == ["syncengine"]
    assert unit["KillSignal"] == ["SIGTERM"]
    seconds = int(unit["TimeoutStopSec"][0].removesuffix("s"))
    assert seconds >= 60, "longer than one batch takes"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictSUIDSGID"):
        assert unit[key] == ["yes"], key
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["CapabilityBoundingSet"] == [""]
    # Another daemon's pid must stay visible: a lease held on this host is judged by it.
    assert "ProtectProc" not in unit


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    verifier = shutil.which("systemd-analyze")
    if verifier is None:  # not a skip: the hardening test above still holds the unit
        return
    tool = shutil.which("true")
    assert tool is not None
    unit = (DEPLOY / "syncengine.service").read_text(encoding="utf-8")
    copy = tmp_path / "syncengine.service"
    copy.write_text(unit.replace("/opt/syncengine/bin/syncengine", tool), encoding="utf-8")
    result = subprocess.run(
        [verifier, "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
