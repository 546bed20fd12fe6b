"""The guards, decided for each delivery at the moment it is claimed for sending.

A protected key (legal hold) is never sent: its delivery becomes dead with
the reason, approved or not, and a delivery made due later (a backoff that
ended mid-run, `dlq retry` beside a running daemon) is screened by its own
claim. The legal hold compares keys the way the target does: on a
case-insensitive target, 'SA ' is the row 'sa'. Over a mass-delete limit,
every due delivery no operator approved is held until `syncengine approve`
or `reject`; a limit that cannot be weighed (the target's count failed)
holds too. `plan` shows the same verdicts, from the same functions and the same counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, cast

from connectors.contract import ConnectorError, Countable, KeyMatch
from connectors.kit.keys import KeyTemplate, UnmappedKey
from state import ClaimedDelivery, GuardCounts
from syncengine.config.models import GuardSettings, LegalHold
from syncengine.engine.runtime import TargetRuntime

LEGAL_HOLD = "legal hold: "
"""How the reason of a delivery the legal hold protected begins (dead, never sent);
`report` tells these apart from deliveries that died for another reason."""


def legal_hold(hold: LegalHold | None, match: KeyMatch, fields: Mapping[str, Any]) -> str | None:
    """Why the legal hold protects a deletion with these fields, or None.

    A deletion whose hold key cannot be rendered is protected too: the hold
    cannot tell whether it names a protected record, and the target may key
    on other fields, so sending it would be a delete nobody cleared.
    """
    if hold is None:
        return None
    try:
        key = KeyTemplate(hold.key).render(fields)
    except UnmappedKey as exc:
        return f"its key {hold.key} cannot be read ({exc.reason}), so it cannot be cleared"
    pattern = next((p for p in hold.patterns if match.matches(key, p)), None)
    if pattern is None:
        return None
    how = "" if fnmatchcase(key, pattern) else f" ({match.describe()}, as the target compares)"
    return f"key {key!r} matches {pattern!r}{how}"


@dataclass(frozen=True)
class Population:
    """The target's record count for max_fraction, or why it is unknown."""

    count: int | None
    problem: str = ""


async def count_population(target: TargetRuntime) -> Population | None:
    """Counted once per run, before the first claim; None when no max_fraction asks."""
    if target.config.guard.max_fraction is None:
        return None
    if not target.capabilities.count:
        return Population(None, "this target cannot count its records")
    api = cast(Countable, target.target)
    try:
        count = await api.population()
    except ConnectorError as exc:
        return Population(None, f"counting the target's records failed: {exc}")
    if count is None:
        return Population(None, "the target gave no count of its records")
    return Population(count)


def mass_delete_reasons(
    guard: GuardSettings, counts: GuardCounts, sent: int, population: Population | None
) -> list[str]:
    """Each limit the due deliveries would cross. `sent`: deliveries no operator
    approved that this run already claimed for sending."""
    return [reason for _, reason in mass_delete_limits(guard, counts, sent, population)]


def mass_delete_limits(
    guard: GuardSettings, counts: GuardCounts, sent: int, population: Population | None
) -> list[tuple[str, str]]:
    """`mass_delete_reasons` with the name of the limit each reason is about, so
    `plan` can say which limit would hold."""
    due = counts.due
    crossed: list[tuple[str, str]] = []
    if guard.max_per_run is not None and sent + due > guard.max_per_run:
        already = f"{sent} sent in this run + " if sent else ""
        crossed.append(
            ("max_per_run", f"{already}{due} deletions due, max_per_run is {guard.max_per_run}")
        )
    if guard.max_per_hour is not None:
        recent = counts.done_last_hour + counts.in_flight
        if recent + due > guard.max_per_hour:
            crossed.append(
                (
                    "max_per_hour",
                    f"{recent} done in the last hour or in flight + {due} due exceeds "
                    f"max_per_hour {guard.max_per_hour}",
                )
            )
    if guard.max_fraction is not None:
        crossed.extend(
            ("max_fraction", reason)
            for reason in _fraction(guard.max_fraction, sent + due, population)
        )
    return crossed


def weighs_limits(guard: GuardSettings) -> bool:
    """Whether a mass-delete limit is set: then each claim must see every deletion due,
    so the push waits for the whole pull instead of sending alongside it."""
    return any(
        limit is not None for limit in (guard.max_per_run, guard.max_per_hour, guard.max_fraction)
    )


def _fraction(limit: float, due: int, population: Population | None) -> list[str]:
    if population is None or population.count is None:
        problem = population.problem if population is not None else "no count was taken"
        return [f"{problem}, so max_fraction {limit:.0%} cannot be checked"]
    count = population.count
    if count > 0 and due / count <= limit:
        return []
    share = f" ({due / count:.0%})" if count > 0 else ""
    return [f"{due} of the target's {count} records{share} exceeds max_fraction {limit:.0%}"]


@dataclass
class ClaimGuard:
    """The `state.Screen` of one run for one target: what the store asks at each claim."""

    target: TargetRuntime
    population: Population | None = None
    sent: int = 0
    """Deliveries no operator approved that this run claimed for sending."""
    protected: int = 0
    held: int = 0
    reasons: list[str] = field(default_factory=list)

    def protect(self, delivery: ClaimedDelivery) -> str | None:
        reason = legal_hold(
            self.target.config.guard.legal_hold, self.target.target.key_match, delivery.fields
        )
        if reason is None:
            return None
        self.protected += 1
        return LEGAL_HOLD + reason

    def hold(self, counts: GuardCounts) -> str | None:
        reasons = mass_delete_reasons(self.target.config.guard, counts, self.sent, self.population)
        return "guard: " + "; ".join(reasons) if reasons else None

    @property
    def weighs_limits(self) -> bool:
        return weighs_limits(self.target.config.guard)

    def on_hold(self, count: int, reason: str) -> None:
        self.held += count
        self.reasons.append(reason)

    def claimed(self, items: list[ClaimedDelivery]) -> None:
        self.sent += sum(1 for item in items if not item.approved)

    def returned(self, items: list[ClaimedDelivery]) -> None:
        """Claimed items about to be weighed again (a job screened anew at its submission)."""
        self.sent -= sum(1 for item in items if not item.approved)

    def report(self, pipeline: str, log: Any) -> None:
        if self.protected:
            log.warning("legal_hold_applied", protected=self.protected)
        if self.held:
            log.error(
                "alert_guard_tripped",
                held=self.held,
                reasons=self.reasons,
                hint=f"inspect with `syncengine held`, then `syncengine approve --pipeline "
                f"{pipeline} --target {self.target.name} --count {self.held}` or "
                "`syncengine reject`",
            )
