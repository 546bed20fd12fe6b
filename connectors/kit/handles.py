"""What an async target keeps in its own job handle, and reads back: the key each
delivery was submitted under and the outcomes decided before submission, and from
them one outcome per item.

A handle is JSON that may have crossed a restart or an upgrade, so it is read
defensively: a field of the wrong shape reads as empty, and an item whose key
cannot be found is retried, never assumed done.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connectors.contract import Outcome
from connectors.kit.jobs import JobSpec, item_outcomes, outcome_to_json


@dataclass(frozen=True)
class HandleKeys:
    """The handle field holding `delivery id -> key`, and what an item missing from it
    is told."""

    field: str
    missing: str

    def detail(self, keys: Mapping[int, str], settled: Mapping[int, Outcome]) -> dict[str, Any]:
        """A plan as JSON for the handle, which the engine stores and gives back at every
        poll, after any restart: each delivery's key, and the outcomes already decided."""
        return {
            self.field: {str(k): v for k, v in keys.items()},
            "outcomes": {str(k): outcome_to_json(o) for k, o in settled.items()},
        }

    def read(self, known: Mapping[str, Any]) -> dict[str, str]:
        stored = known.get(self.field)
        return {str(k): str(v) for k, v in stored.items()} if isinstance(stored, dict) else {}

    def outcomes(
        self, job: JobSpec, known: Mapping[str, Any], by_key: Mapping[str, Outcome]
    ) -> list[Outcome]:
        """One outcome per item: decided before submission, or by its key's fate."""
        return item_outcomes(
            job.items, known.get("outcomes"), self.read(known), by_key, self.missing
        )
