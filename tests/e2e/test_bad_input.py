"""Input an operator can get wrong ends in one line naming the place and the fix, and
exit 2; never a traceback, and never a run that breaks on what `validate` let through.
The real CLI, as a subprocess, on a configuration of its own (no emulator is needed:
each is refused before any call)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SECRET = "Zq9SuperSecret77"


def config(
    tmp: Path,
    *,
    erp_url: str = "http://127.0.0.1:9/IDORequestService/MGRESTService.svc",
    state: str = "",
    entry: str = '"${TEST_ERP_PASSWORD}"',
) -> Path:
    path = tmp / "config.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            state: {{url: "{state or f"sqlite:///{tmp / 'state.db'}"}"}}
            connections:
              goose: {{type: goose, url: "http://127.0.0.1:9/deleted/", code: DEV001,
                      key: "goose-engine-key-1", timezone: Europe/Rome}}
              erp: {{type: mongoose, url: "{erp_url}", config: DEMO, user: sync,
                    password: {entry}}}
            pipelines:
              contacts:
                schedule: {{every: 60s}}
                source: {{connection: goose, tables: [CON_TRO], from: latest}}
                targets:
                  erp_users: {{connection: erp, ido: UserNames, key: "{{SYKEY}}",
                              lookup: {{property: Username}}}}
            """
        )
    )
    return path


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCENGINE_", "TEST_"))}
    return subprocess.run(
        [sys.executable, "-m", "syncengine", *args],
        capture_output=True,
        text=True,
        env={**base, "TEST_ERP_PASSWORD": "erp-password-1", **env},
        timeout=120,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The one line of a refusal, after checking it is one, exit 2, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_a_job_number_beyond_any_job_is_refused(tmp_path: Path) -> None:
    result = cli("jobs", "cancel", "99999999999999999999999", "-c", str(config(tmp_path)))
    one_line(result, "JOB_ID 99999999999999999999999: write a job number shown by")


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["run", "dry-run"])
def test_a_backfill_from_a_time_its_zone_cannot_place_is_refused(
    tmp_path: Path, dry_run: list[str]
) -> None:
    result = cli(
        "backfill",
        "-p",
        "contacts",
        "--from",
        "0001-01-01 00:00:00",
        *dry_run,
        "-c",
        str(config(tmp_path)),
    )
    one_line(result, "--from '0001-01-01 00:00:00': in the source connection's time zone")


@pytest.mark.parametrize("command", [["validate"], ["run", "--once"], ["status"]])
def test_a_url_whose_port_is_out_of_range_is_refused_before_any_run(
    tmp_path: Path, command: list[str]
) -> None:
    url = f"http://sync:{SECRET}@127.0.0.1:99999/IDORequestService/MGRESTService.svc"
    line = one_line(
        cli(*command, "-c", str(config(tmp_path, erp_url=url))),
        "connections.erp.url: this URL's port is not a number from 1 to 65535; write e.g.",
    )
    assert SECRET not in line
    assert not (tmp_path / "state.db").exists(), "nothing journaled, no cursor moved"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        (["run", "--once", "--job-wait"], "-5"),
        (["run", "--once", "--job-wait"], "nan"),
        (["run", "--once", "--job-wait"], "inf"),
        (["backfill", "-p", "contacts", "--from", "2024-01-01 00:00:00", "--wait"], "-1"),
        (["backfill", "-p", "contacts", "--from", "2024-01-01 00:00:00", "--job-wait"], "nan"),
    ],
)
def test_seconds_must_be_a_finite_number_not_below_zero(
    tmp_path: Path, option: list[str], value: str
) -> None:
    result = cli(*option, value, "-c", str(config(tmp_path)))
    one_line(result, f"{option[-1]} ", ": write a number of seconds, 0 or more")
    assert not (tmp_path / "state.db").exists(), "refused before the store is opened"


def test_a_count_beyond_any_count_is_refused(tmp_path: Path) -> None:
    result = cli(
        "approve",
        "-p",
        "contacts",
        "-t",
        "erp_users",
        "-n",
        "99999999999999999999999",
        "-c",
        str(config(tmp_path)),
    )
    one_line(result, "--count 99999999999999999999999: write a count from 0 to")


@pytest.mark.parametrize("command", [["validate"], ["status"]])
def test_a_store_on_mysql_is_refused_as_not_supported(tmp_path: Path, command: list[str]) -> None:
    state = f"mysql://sync:{SECRET}@127.0.0.1/syncengine"
    line = one_line(
        cli(*command, "-c", str(config(tmp_path, state=state))),
        "state.url: 'mysql' is not supported: the store runs on SQLite or PostgreSQL",
    )
    assert SECRET not in line


@pytest.mark.postgres
def test_a_postgres_url_is_postgresql(tmp_path: Path, pg_url: str) -> None:
    state = pg_url.replace("postgresql+psycopg://", "postgres://")
    path = config(tmp_path, state=state)
    assert cli("validate", "-c", str(path)).returncode == 0
    status = cli("status", "-c", str(path), "-o", "json")
    assert status.returncode == 0, status.stderr
    assert '"pipeline": "contacts"' in status.stdout


@pytest.mark.parametrize(
    ("password", "env", "expected"),
    [
        (
            '"${MONGOOSE_PASSWORD}"',
            {"MONGOOSE_PASSWORD": ""},
            "connections.erp.password: this secret is empty: environment variable "
            "MONGOOSE_PASSWORD gives an empty value; export it with the secret",
        ),
        (
            '""',
            {},
            "connections.erp.password: this secret is empty; write it, or ${NAME} to read it",
        ),
    ],
    ids=["variable", "yaml"],
)
@pytest.mark.parametrize("command", [["validate"], ["run", "--once"]])
def test_an_empty_secret_is_refused(
    tmp_path: Path, password: str, env: dict[str, str], expected: str, command: list[str]
) -> None:
    result = cli(*command, "-c", str(config(tmp_path, entry=password)), **env)
    one_line(result, expected)
