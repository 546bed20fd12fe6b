"""Lineage in the store, on SQLite and PostgreSQL: echoes of our own deletes are never
propagated, chained pipelines take over exactly what was done upstream, and a record's
whole path can be read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from state import NewRecord, OutcomeRecord, ReadWindow, RetryRule, Store
from state.db import MIGRATIONS
from state.models import DeliveryStatus
from state.schema import at_head

RULE = RetryRule(max_attempts=1, base_delay=0, max_delay=0)
GOOSE_0_1 = "goose:DEV001:CON_TRO:0-1"


def deliver(store: Store, pipeline: str, target: str, outcomes: dict[str, tuple[str, str]]) -> None:
    """Claim every delivery of pipeline/target and record key -> (kind, effect)."""
    claimed = store.claim(pipeline, target, 1000, "test")
    store.record_outcomes(
        [
            OutcomeRecord(c.id, outcomes[c.key][0], reason="refused", effect=outcomes[c.key][1])
            for c in claimed
            if c.key in outcomes
        ],
        RULE,
    )
    store.release([c.id for c in claimed if c.key not in outcomes])


def test_a_deletion_this_engine_made_is_journaled_as_an_echo_not_propagated(
    store: Store,
) -> None:
    store.journal("back", "T", [NewRecord("r1", {})], cursor={}, targets=["goose"], run_id=None)
    deliver(store, "back", "goose", {"r1": ("done", GOOSE_0_1)})
    result = store.journal(
        "contacts",
        "CON_TRO",
        [NewRecord("0-1", {"RECORD_ID": "0-1"}, origin=GOOSE_0_1), NewRecord("0-2", {})],
        cursor={},
        targets=["mdm"],
        run_id=None,
    )
    assert (result.new, result.echoes, result.duplicates) == (1, 1, 0)
    rows = store.deliveries(pipeline="contacts")
    assert [e.record_key for _, e in rows] == ["0-2"], "the echo has no delivery"
    [echo_id] = store.lineage.find("0-1", "contacts")
    [caused_by] = store.deliveries(pipeline="back")
    tree = store.lineage.tree(store.lineage.root(echo_id))
    assert tree is not None and tree.pipeline == "back"
    assert [e.key for e in tree.deliveries[0].echoes] == ["0-1"]
    assert tree.deliveries[0].id == caused_by[0].id


def test_a_failed_delivery_is_no_cause_and_the_deletion_propagates(store: Store) -> None:
    store.journal("back", "T", [NewRecord("r1", {})], cursor={}, targets=["goose"], run_id=None)
    deliver(store, "back", "goose", {"r1": ("dead", GOOSE_0_1)})
    result = store.journal(
        "contacts", "CON_TRO", [NewRecord("0-1", {}, origin=GOOSE_0_1)], cursor={},
        targets=["mdm"], run_id=None,
    )  # fmt: skip
    assert (result.new, result.echoes) == (1, 0)


def test_a_source_following_our_own_jobs_links_instead_of_echoing(store: Store) -> None:
    name = "dmm:http://x:Customer.ExternalId=0-1"
    store.journal("people", "T", [NewRecord("0-1", {})], cursor={}, targets=["crm"], run_id=None)
    deliver(store, "people", "crm", {"0-1": ("done", name)})
    result = store.journal(
        "crm_deleted",
        "execution-7",
        [NewRecord("0-1", {"value": "0-1"}, origin=name)],
        cursor={"finished": True},
        targets=["goose"],
        run_id=None,
        own_effects=[("people", "crm")],
    )
    assert (result.new, result.echoes) == (1, 0)
    root = store.lineage.root(store.lineage.find("0-1", "crm_deleted")[0])
    tree = store.lineage.tree(root)
    assert tree is not None and tree.pipeline == "people"
    assert [n.pipeline for n in tree.deliveries[0].continued] == ["crm_deleted"]


def test_handovers_are_what_was_done_upstream_and_not_yet_journaled(store: Store) -> None:
    store.journal(
        "contacts",
        "CON_TRO",
        [NewRecord(k, {"RECORD_ID": k}) for k in ("0-1", "0-2", "0-3")],
        cursor={},
        targets=["mdm", "erp"],
        run_id=None,
    )
    deliver(store, "contacts", "mdm", {"0-1": ("done", ""), "0-2": ("dead", "")})
    assert store.lineage.streams_with_deliveries("contacts", "mdm") == ["CON_TRO"]
    [first] = store.lineage.handovers("down", "contacts", "mdm", "CON_TRO")
    assert (first.key, first.fields) == ("0-1", {"RECORD_ID": "0-1"})
    assert store.lineage.handovers("down", "contacts", "erp", "CON_TRO") == []
    store.journal(
        "down",
        "CON_TRO",
        [NewRecord("0-1", first.fields, origin_delivery_id=first.delivery_id)],
        cursor={},
        targets=["erp2"],
        run_id=None,
    )
    assert store.lineage.handovers("down", "contacts", "mdm", "CON_TRO") == []
    deliver(store, "contacts", "mdm", {"0-3": ("done", "")})
    assert [h.key for h in store.lineage.handovers("down", "contacts", "mdm", "CON_TRO")] == ["0-3"]
    tree = store.lineage.tree(store.lineage.root(store.lineage.find("0-1", "down")[0]))
    assert tree is not None and tree.pipeline == "contacts"
    hops = {d.target: [n.pipeline for n in d.continued] for d in tree.deliveries}
    assert hops == {"mdm": ["down"], "erp": []}
    statuses = {d.target: d.status for d in tree.deliveries}
    assert statuses == {"mdm": DeliveryStatus.DONE, "erp": DeliveryStatus.PENDING}


def test_a_key_deleted_again_upstream_is_handed_over_again(store: Store) -> None:
    """The chain takes over deliveries, not keys: a record restored and deleted again
    upstream is a second delivery, continued once, and re-reads stay duplicates."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for start in (0, 10):
        store.journal(
            "contacts", "CON_TRO", [NewRecord("0-1", {"n": start})], cursor={},
            targets=["mdm"], run_id=None,
            window=ReadWindow(t0 + timedelta(minutes=start), t0 + timedelta(minutes=start + 10)),
        )  # fmt: skip
    deliver(store, "contacts", "mdm", {"0-1": ("done", "")})
    first, second = store.lineage.handovers("down", "contacts", "mdm", "CON_TRO")
    assert (first.fields, second.fields) == ({"n": 0}, {"n": 10})

    def take(handover_id: int) -> tuple[int, int]:
        result = store.journal(
            "down", "CON_TRO", [NewRecord("0-1", {}, origin_delivery_id=handover_id)],
            cursor={}, targets=["erp"], run_id=None,
        )  # fmt: skip
        return result.new, result.duplicates

    assert take(first.delivery_id) == (1, 0)
    assert [
        h.delivery_id for h in store.lineage.handovers("down", "contacts", "mdm", "CON_TRO")
    ] == [second.delivery_id]
    assert take(second.delivery_id) == (1, 0), "same key, another upstream delivery"
    assert take(second.delivery_id) == (0, 1), "read again: a duplicate"
    assert store.lineage.handovers("down", "contacts", "mdm", "CON_TRO") == []
    assert len(store.lineage.find("0-1", "down")) == 2, "trace shows each deletion"


def test_a_deletion_of_ours_from_before_the_read_began_is_no_echo(store: Store) -> None:
    """This engine deleted the record once; someone restored it and deleted it again,
    seen by a read that began after our delete: that one must propagate."""
    store.journal("back", "T", [NewRecord("r1", {})], cursor={}, targets=["goose"], run_id=None)
    deliver(store, "back", "goose", {"r1": ("done", GOOSE_0_1)})
    later = datetime.now(UTC) + timedelta(minutes=1)
    result = store.journal(
        "contacts", "CON_TRO", [NewRecord("0-1", {}, origin=GOOSE_0_1)], cursor={},
        targets=["mdm"], run_id=None, window=ReadWindow(later, later + timedelta(minutes=1)),
    )  # fmt: skip
    assert (result.new, result.echoes) == (1, 0)


def test_registering_a_stream_is_idempotent(store: Store) -> None:
    assert store.register_stream("tasks", "task-42") is True
    assert store.register_stream("tasks", "task-42") is False
    assert [c.stream for c in store.cursors("tasks")] == ["task-42"]
    assert store.cursor("tasks", "task-42").value is None


def test_problem_is_kept_on_the_stream_without_counting_as_a_failure(store: Store) -> None:
    store.journal(
        "tasks", "task-1", [], cursor={"finished": True}, targets=["t"], run_id=None,
        problem="filter-based task",
    )  # fmt: skip
    [row] = store.cursors("tasks")
    assert row.last_error == "filter-based task" and row.consecutive_errors == 0


def test_job_remote_ids_for_followers(store: Store) -> None:
    store.journal("p", "T", [NewRecord("a", {})], cursor={}, targets=["t"], run_id=None)
    job = store.claim_into_job("p", "t", "kind", 10)
    assert job is not None
    assert store.lineage.job_remote_ids("p", "t") == []
    store.record_submitted(job.id, "exec-9", "queued", {}, job.created_at)
    assert store.lineage.job_remote_ids("p", "t") == ["exec-9"]


def test_the_migrations_build_exactly_the_models(store: Store) -> None:
    """A new store is created from the models (state.db.create_at_head); a store from
    before is migrated: both must end with the same schema."""
    downgrade_to_base(store)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert diff == []


def test_a_new_store_is_created_at_head_from_the_models(store: Store) -> None:
    assert at_head(store.engine)
    with store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert diff == []


def downgrade_to_base(store: Store) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert not at_head(store.engine)


def test_trace_finds_a_record_by_key_origin_or_the_value_a_task_source_names(store: Store) -> None:
    store.journal(
        "crm", "execution-2",
        [NewRecord("Customer.ExternalId=0-9", {}), NewRecord("Customer.ExternalId=0-90", {})],
        cursor={}, targets=[], run_id=None,
    )  # fmt: skip
    store.journal(
        "contacts", "CON_TRO", [NewRecord("0-1", {}, origin=GOOSE_0_1)], cursor={}, targets=[],
        run_id=None,
    )  # fmt: skip
    assert len(store.lineage.find("0-9")) == 1
    assert len(store.lineage.find("0-1")) == len(store.lineage.find(GOOSE_0_1)) == 1
    assert store.lineage.find("0-1", "crm") == []
    assert store.lineage.find("%") == [] and store.lineage.find("_-9") == []
