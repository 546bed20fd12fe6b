"""The contract every target keeps, checked once for all of them against their emulators.

Each case runs for every factory in `tests.connectors.targets`; a case a target's own
nature rules out is declared not applicable by its factory, with the reason, and
shows as a skip naming it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from connectors import load_registry
from connectors.contract import AmbiguousError, AsyncTarget, ConnectorError, FatalError, OutcomeKind
from connectors.emulation.contract_cases import AMBIGUOUS, KEYED, LOST, UNSAFE
from tests.connectors.targets import FACTORIES, Harness


@pytest.fixture(params=sorted(FACTORIES))
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    async with FACTORIES[request.param]() as built:
        yield built


def applies(harness: Harness, case: str) -> None:
    reason = harness.case.not_applicable.get(case)
    if reason is not None:
        pytest.skip(f"not applicable: {reason}")


def test_every_registered_target_is_in_the_suite() -> None:
    registry = load_registry()
    with_targets = {
        name for name in registry.names() if registry.get(name).build_target is not None
    }
    covered = {case_id.split("-")[0] for case_id in FACTORIES}
    assert with_targets and with_targets == covered


async def test_an_unsafe_key_is_dead_and_never_reaches_the_emulator(harness: Harness) -> None:
    applies(harness, UNSAFE)
    assert harness.case.unsafe, "a target that declares no unsafe key must say why instead"
    batch = [harness.delivery(n, key) for n, key in enumerate(harness.case.unsafe, start=1)]
    outcomes = await harness.deliver(batch)
    assert [o.delivery_id for o in outcomes] == [d.delivery_id for d in batch]
    for outcome, key in zip(outcomes, harness.case.unsafe, strict=True):
        assert outcome.kind is OutcomeKind.DEAD, key
        assert outcome.reason.startswith("unsafe key: "), (key, outcome.reason)
    sent = await harness.requests()
    for key in harness.case.unsafe:
        assert not [e for e in sent if key in e.path], (key, sent)
    assert not [e for e in sent if e.mutating], sent


async def test_an_empty_key_is_dead_and_never_reaches_the_emulator(harness: Harness) -> None:
    applies(harness, KEYED)
    outcomes = await harness.deliver([harness.delivery(1, "")])
    assert outcomes[0].kind is OutcomeKind.DEAD
    assert outcomes[0].reason.startswith(("no key: ", "unsafe key: ")), outcomes[0].reason
    assert not [e for e in await harness.requests() if e.mutating]


async def test_an_absent_key_is_done_and_sending_again_is_harmless(harness: Harness) -> None:
    applies(harness, KEYED)
    batch = [harness.delivery(1, harness.case.present), harness.delivery(2, harness.case.absent)]
    first = await harness.deliver(batch)
    assert [o.delivery_id for o in first] == [1, 2]
    assert [o.kind for o in first] == [OutcomeKind.DONE] * 2, first
    assert "deleted" in first[0].detail and "absent" in first[1].detail, first
    again = await harness.deliver(batch)
    assert [o.kind for o in again] == [OutcomeKind.DONE] * 2, again
    assert all("absent" in o.detail for o in again), again


async def test_preview_answers_every_delivery_and_changes_nothing(harness: Harness) -> None:
    """The plan and a dry run rely on it: one outcome per delivery, and no mutating call."""
    batch = [harness.delivery(1, harness.case.present)]
    keyed = KEYED not in harness.case.not_applicable
    if keyed:
        batch += [harness.delivery(2, ""), harness.delivery(3, harness.case.absent)]
    outcomes = await harness.preview(batch)
    assert [o.delivery_id for o in outcomes] == [d.delivery_id for d in batch]
    assert outcomes[0].kind is OutcomeKind.DONE, outcomes[0]
    assert outcomes[0].detail.startswith("would "), outcomes[0]
    if keyed:
        assert outcomes[1].kind is OutcomeKind.DEAD, outcomes[1]
        # A preview may skip the existence check (Goose and DMM make no call at all).
        assert outcomes[2].kind is OutcomeKind.DONE, outcomes[2]
        assert outcomes[2].detail == "absent" or outcomes[2].detail.startswith("would "), outcomes
    assert [e for e in await harness.requests() if e.mutating] == []


async def test_errors_and_logs_carry_no_secret_when_the_server_echoes_the_request(
    harness: Harness,
) -> None:
    """Every request is answered 500 with its headers and body echoed back; whatever
    the target raises, answers or logs about it must hold none of its secrets."""
    harness.emulator.faults.update({"echo_rate": 1.0})
    texts: list[str] = []
    with capture_logs() as logs:
        try:
            outcomes = await harness.deliver([harness.delivery(1, harness.case.present)])
        except ConnectorError as exc:
            texts += [str(exc), repr(exc.args)]
        else:
            assert outcomes[0].kind is not OutcomeKind.DONE, outcomes
            texts += [f"{o.reason} {o.detail}" for o in outcomes]
    texts += [repr(entry) for entry in logs]
    assert [e for e in await harness.requests() if e.fault == "echo"], "nothing was echoed"
    for text in texts:
        for secret in harness.case.secrets:
            assert secret not in text, (secret, text)
        assert not re.search(r"bearer\s+[\w.~+/-]{8,}", text, re.IGNORECASE), text


async def test_refused_credentials_are_renewed_once_then_stop_with_a_hint(
    harness: Harness,
) -> None:
    """Credentials that worked are refused mid-run: a token is fetched once more (none
    for credentials that cannot be renewed), then the pipeline stops naming the setting."""

    async def token_calls() -> int:
        if not harness.case.renews_at:
            return 0
        return sum(harness.case.renews_at in e.path for e in await harness.requests())

    first = await harness.deliver([harness.delivery(1, harness.case.present)])
    assert first[0].kind is OutcomeKind.DONE, first
    before = await token_calls()
    harness.case.revoke()
    with pytest.raises(FatalError) as info:
        await harness.deliver([harness.delivery(2, harness.case.absent or harness.case.present)])
    assert harness.hint and harness.hint in str(info.value), str(info.value)
    assert await token_calls() - before == (1 if harness.case.renews_at else 0)


async def test_an_ambiguous_key_is_dead_and_nothing_is_deleted(harness: Harness) -> None:
    applies(harness, AMBIGUOUS)
    assert harness.case.ambiguous, "a target without ambiguous keys must say why instead"
    key = harness.case.ambiguous()
    outcomes = await harness.deliver([harness.delivery(1, key)])
    assert outcomes[0].kind is OutcomeKind.DEAD, outcomes
    assert outcomes[0].reason.startswith("ambiguous: "), outcomes
    assert [e for e in await harness.requests() if e.mutating] == []


async def test_a_lost_answer_never_starts_a_second_job(harness: Harness) -> None:
    """The start was applied and its answer lost. The engine asks `find` and starts the
    batch again only when it finds nothing: either way one job is started, no more."""
    applies(harness, LOST)
    target, jobs = harness.target, harness.case.jobs
    assert isinstance(target, AsyncTarget) and jobs is not None
    job = harness.job([harness.delivery(1, harness.case.present)])
    assert await target.find(job) is None, "found a job never started"  # also fetches a token
    harness.emulator.faults.update({"drop_after_apply_rate": 1.0})
    with pytest.raises(AmbiguousError):
        await target.submit(job)
    harness.emulator.faults.update({"drop_after_apply_rate": 0.0})
    assert jobs() == 1
    handle = await target.find(job) or await target.submit(job)
    outcomes = await harness.finish(job, handle)
    assert [o.kind for o in outcomes] == [OutcomeKind.DONE], outcomes
    assert jobs() == 1
