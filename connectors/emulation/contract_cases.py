"""What a connector tells the target contract suite about its targets.

The suite (tests/connectors/test_target_contract.py) holds every registered target
to the same behaviour against its emulator. It knows no connector: each package's
`sandbox.py` hands it `contract_cases()`, found through the registry entry
(`SandboxSpec.contract`), and the suite builds the target through that same entry,
from the connection and target blocks a case gives as configuration data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.contract import Delivery
from connectors.emulation.admin import Emulator

KEYED = "keyed"
"""Cases about one record's key (absent, empty): a target that addresses records by key."""
UNSAFE = "unsafe"
"""Keys no request can carry safely."""
AMBIGUOUS = "ambiguous"
"""A key that matches several records."""
LOST = "lost"
"""A job whose start was applied but whose answer was lost."""
NO_JOBS = {LOST: "deletes record by record, each call idempotent; it starts no job"}
PATH_UNSAFE = ("..", ".", "%2e%2e")
"""Keys that would change the path of a request carrying the key in it."""


@dataclass
class ContractCase:
    """One target kind, its seeded emulator and what the suite needs to address it."""

    emulator: Emulator
    connection: Callable[[str], dict[str, Any]]
    """The `connections:` entry for the emulator at this URL, without `type` (the
    connector's name) and, unless it needs its own, `timeout` and `retry` (the suite's)."""
    target: Callable[[str], dict[str, Any]]
    """The pipeline's target block for the emulator at this URL."""
    key_field: str
    """The delivery field its key template reads."""
    present: str
    absent: str = ""
    unsafe: Sequence[str] = ()
    """Keys this target can never send safely (they would change the request)."""
    step: float = 0.05
    """How far to move the emulator's clock between two polls of a job."""
    secrets: Sequence[str] = ()
    """Every secret the connection holds, none of which may show in an error or a log."""
    revoke: Callable[[], None] = lambda: None
    """Makes the emulator refuse the connection's credentials from now on, fresh ones too."""
    renews_at: str = ""
    """Where the connection fetches a token; empty for credentials it cannot renew."""
    hint: str = ""
    """The settings a refusal must name, after `connections.<name>.`."""
    jobs: Callable[[], int] | None = None
    """How many jobs the emulator has been asked to start (job targets)."""
    ambiguous: Callable[[], str] | None = None
    """Seeds a second record under one key and returns that key."""
    not_applicable: Mapping[str, str] = field(default_factory=dict)
    """Cases this target's nature rules out, each with the reason the suite shows."""

    def delivery(self, n: int, key: str) -> Delivery:
        return Delivery(n, "CON_TRO", key, {self.key_field: key})


ContractCases = Mapping[str, Callable[[], ContractCase]]
"""A connector's target kinds, each making a fresh case: "" for a connector with one kind
of target, else the kind's name (the suite shows it as `<connector>-<kind>`)."""
