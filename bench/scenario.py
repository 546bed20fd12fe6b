"""What every contender of the benchmark is given: the same data, names and credentials.

Standard library only: the bare contender imports it, and its start-up is measured.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GOOSE_CODE = "B01"
GOOSE_KEY = "bench-key-000000"
TABLE = "CON_TRO"
MONGOOSE_CONFIG = "DEMO"
MONGOOSE_USER = "sync"
MONGOOSE_PASSWORD = "bench-password"
MONGOOSE_BASE = "/IDORequestService/MGRESTService.svc"
IDO = "UserNames"
LOOKUP = "Username"
SENTINEL = "bench-sentinel"
"""The one row Mongoose holds in the memory benchmark, so the IDO exists but no
lookup finds anything (a million rows would make the emulator, not the client,
the thing measured)."""

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def record_id(n: int) -> str:
    return f"0-{n}"


def natural_key(n: int) -> str:
    """The SYKEY Goose reports and the Username Mongoose holds, as the first benchmark
    used: a filter of 100 of them is about 1,700 URL-encoded characters."""
    return f"u0-{n}"


def parse_setting(text: str) -> tuple[str, Any]:
    """`name=value` from the command line; the value is read as YAML would read a
    scalar (JSON numbers, booleans), else kept as text. Raises ValueError."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not _SETTING_NAME.match(name):
        raise ValueError(f"--set {text!r}: write name=value, e.g. --set concurrency=4")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw.strip()
    return name, value


def config_text(
    goose_url: str,
    mongoose_url: str,
    state: Path,
    batch: int,
    settings: Mapping[str, Any] | None = None,
) -> str:
    """The syncengine configuration a user would write for this job: defaults
    everywhere except the batch size and any `settings` added to the target."""
    extra = "".join(f", {name}: {json.dumps(value)}" for name, value in (settings or {}).items())
    return f"""\
state: {{url: "sqlite:///{state}"}}
logging: {{level: info, format: json}}
connections:
  goose: {{type: goose, url: "{goose_url}/deleted/", code: {GOOSE_CODE}, key: "{GOOSE_KEY}",
          timeout: 300}}
  erp: {{type: mongoose, url: "{mongoose_url}{MONGOOSE_BASE}", config: {MONGOOSE_CONFIG},
        user: {MONGOOSE_USER}, password: "{MONGOOSE_PASSWORD}"}}
pipelines:
  bench:
    schedule: {{every: 60s}}
    source: {{connection: goose, tables: [{TABLE}], from: latest}}
    targets:
      erp: {{connection: erp, ido: {IDO}, key: "{{SYKEY}}", lookup: {{property: {LOOKUP}}},
            batch_size: {batch}{extra}}}
"""
