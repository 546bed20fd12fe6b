"""`report`'s rows, read from the store on SQLite and PostgreSQL: each outcome told
apart, chained hops named with their upstream delivery and first source, echoes
labelled, the period and the pipeline/target/key filters, CSV and JSON Lines that
carry odd keys intact, and lag percentiles of a seeded store."""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from state import ClaimedDelivery, GuardCounts, NewRecord, OutcomeRecord, RetryRule, Store
from state.base import DELETION, DELIVERY
from state.evidence import Evidence, EvidenceFilter, EvidenceRow, like_pattern
from syncengine.cli import app
from syncengine.engine.guard import LEGAL_HOLD
from syncengine.report import (
    COLUMNS,
    EXACT,
    LagDigest,
    flat,
    outcome,
    parse_when,
    summarize,
    write_csv,
    write_jsonl,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
RULE = RetryRule(max_attempts=5, base_delay=60, max_delay=60)
ODD = 'Rossi, "Mario"\nline two; ü € 山田\t='


class Guard:
    """The engine's guards in miniature: protect one key, or hold everything due."""

    def __init__(self, protect: str = "", hold: bool = False) -> None:
        self.protected, self.holds = protect, hold

    def protect(self, delivery: ClaimedDelivery) -> str | None:
        return LEGAL_HOLD + "key matches 'VIP*'" if delivery.key == self.protected else None

    def hold(self, counts: GuardCounts) -> str | None:
        return f"guard: {counts.due} deletions due, max_per_run is 0" if self.holds else None

    @property
    def weighs_limits(self) -> bool:
        return self.holds

    def on_hold(self, count: int, reason: str) -> None:
        pass


def at(store: Store, key: str, pipeline: str, seen: datetime, done: datetime | None = None) -> None:
    """Move a deletion (and its done deliveries) to known times."""
    with store.engine.begin() as conn:
        conn.execute(
            update(DELETION)
            .where(DELETION.c.record_key == key, DELETION.c.pipeline == pipeline)
            .values(seen_at=seen)
        )
        if done is not None:
            ids = DELETION.select().with_only_columns(DELETION.c.id)
            conn.execute(
                update(DELIVERY)
                .where(
                    DELIVERY.c.deletion_id.in_(
                        ids.where(DELETION.c.record_key == key, DELETION.c.pipeline == pipeline)
                    ),
                    DELIVERY.c.status == "done",
                )
                .values(finished_at=done)
            )


def seeded(store: Store) -> Store:
    """One deletion per outcome in crm -> erp, a held one in crm -> audit, the done one
    carried on by two chained hops, and an echo of it."""
    keys = ["done", "dead", "dropped", "VIP-1", "failed", "in-flight", "pending", ODD]
    store.journal(
        "crm", "Customer", [NewRecord(k, {"id": k, "email": f"{k}@example.com"},
                                      origin=f"crm:{k}") for k in keys],
        cursor={}, targets=["erp"], run_id=None,
    )  # fmt: skip
    store.journal("crm", "Site", [NewRecord("held", {})], cursor={}, targets=["audit"], run_id=None)
    claimed = {c.key: c.id for c in store.claim("crm", "erp", 100, "r1", screen=Guard("VIP-1"))}
    assert "VIP-1" not in claimed, "the legal hold makes it dead at the claim"
    store.record_outcomes(
        [
            OutcomeRecord(claimed["done"], "done", detail="deleted", effect="erp:done"),
            OutcomeRecord(claimed[ODD], "done", detail="deleted", effect="erp:odd"),
            OutcomeRecord(claimed["dead"], "dead", reason="404 on purge"),
            OutcomeRecord(claimed["dropped"], "dead", reason="refused: locked"),
            OutcomeRecord(claimed["failed"], "retry", reason="503 busy"),
        ],
        RULE,
    )
    store.release([claimed["pending"]])
    assert store.drop_dead([claimed["dropped"]]) == 1
    assert store.claim("crm", "audit", 100, "r2", screen=Guard(hold=True)) == []
    upstream = next(d.id for d, e in store.deliveries(pipeline="crm") if e.record_key == "done")
    assert upstream is not None
    store.journal(
        "erp_chain", "Customer", [NewRecord("done", {"id": "done"}, origin_delivery_id=upstream)],
        cursor={}, targets=["twins"], run_id=None,
    )  # fmt: skip
    [hop2] = store.claim("erp_chain", "twins", 10, "r3")
    store.record_outcomes([OutcomeRecord(hop2.id, "done", detail="deleted", effect="")], RULE)
    store.journal(
        "third", "Customer", [NewRecord("done", {"id": "done"}, origin_delivery_id=hop2.id)],
        cursor={}, targets=["lake"], run_id=None,
    )  # fmt: skip
    store.journal(
        "back", "T", [NewRecord("done-echo", {}, origin="erp:done")], cursor={}, targets=["x"],
        run_id=None,
    )  # fmt: skip
    at(store, "done", "crm", T0, T0 + timedelta(seconds=30))
    at(store, "done", "erp_chain", T0 + timedelta(seconds=40), T0 + timedelta(seconds=90))
    at(store, "done", "third", T0 + timedelta(seconds=95))
    at(store, "held", "crm", T0 + timedelta(days=1))
    at(store, "done-echo", "back", T0 + timedelta(days=2))
    return store


def rows(store: Store, **where: Any) -> list[EvidenceRow]:
    return list(Evidence(store.engine).rows(EvidenceFilter(**where), page=3))


def by(found: list[EvidenceRow]) -> dict[tuple[str, str, str | None], EvidenceRow]:
    return {(r.pipeline, r.key, r.delivery and r.delivery.target): r for r in found}


def test_each_outcome_is_told_apart(store: Store) -> None:
    found = by(rows(seeded(store)))
    kinds = {key: outcome(row) for (pipe, key, _), row in found.items() if pipe == "crm"}
    assert kinds == {
        "done": "done",
        ODD: "done",
        "dead": "dead",
        "dropped": "dropped",
        "VIP-1": "legal_hold",
        "failed": "failed",
        "in-flight": "in_flight",
        "pending": "pending",
        "held": "held",
    }
    legal = flat(found[("crm", "VIP-1", "erp")])
    assert legal["reason"].startswith("legal hold: key matches") and legal["deleted_at"] is None
    dead = flat(found[("crm", "dead", "erp")])
    assert (dead["reason"], dead["deleted_at"], dead["lag_s"]) == ("404 on purge", None, None)
    assert flat(found[("crm", "held", "audit")])["reason"].startswith("guard: ")
    assert flat(found[("crm", "dropped", "erp")])["reason"] == "refused: locked"
    done = flat(found[("crm", "done", "erp")])
    assert done["deleted_at"] == (T0 + timedelta(seconds=30)).isoformat()
    assert (done["lag_s"], done["detail"], done["effect"]) == (30.0, "deleted", "erp:done")
    assert done["fields"] == {"id": "done", "email": "done@example.com"}, "raw, not redacted"


def test_chained_hops_name_their_upstream_delivery_and_first_source(store: Store) -> None:
    found = by(rows(seeded(store)))
    first, second, third = (
        flat(found[("crm", "done", "erp")]),
        flat(found[("erp_chain", "done", "twins")]),
        flat(found[("third", "done", "lake")]),
    )
    assert (first["hop"], second["hop"], third["hop"]) == (1, 2, 3)
    assert first["upstream_delivery_id"] is None
    assert (second["upstream_delivery_id"], second["upstream_pipeline"]) == (
        first["delivery_id"],
        "crm",
    )
    assert (third["upstream_delivery_id"], third["upstream_target"]) == (
        second["delivery_id"],
        "twins",
    )
    for row in (second, third):
        assert (row["source_deletion_id"], row["source_key"], row["source_origin"]) == (
            first["deletion_id"],
            "done",
            "crm:done",
        )
    assert (second["lag_s"], second["hop_lag_s"]) == (90.0, 50.0), "from the first report"
    assert third["outcome"] == "pending"


def test_a_chain_is_resolved_across_pages_and_from_the_cache(store: Store) -> None:
    seeded(store)
    evidence = Evidence(store.engine)
    for page in (1, 2, 500):
        hops = {
            (r.pipeline, r.ancestry.hop)
            for r in evidence.rows(EvidenceFilter(key="done"), page=page)
        }
        assert hops == {("crm", 1), ("erp_chain", 2), ("third", 3)}, page


def test_an_echo_is_labelled_with_the_delivery_it_repeats(store: Store) -> None:
    found = by(rows(seeded(store)))
    echo = flat(found[("back", "done-echo", None)])
    done = flat(found[("crm", "done", "erp")])
    assert (echo["outcome"], echo["target"], echo["echo_of_delivery_id"]) == (
        "echo",
        None,
        done["delivery_id"],
    )
    assert "reported back" in echo["reason"] and "crm -> erp" in echo["reason"]


def test_the_period_is_on_the_sources_report(store: Store) -> None:
    seeded(store)
    day1 = rows(store, since=T0 + timedelta(hours=1), until=T0 + timedelta(days=1, hours=1))
    assert [(r.pipeline, r.key) for r in day1] == [("crm", "held")]
    early = rows(store, until=T0 + timedelta(seconds=41))
    assert {r.pipeline for r in early} == {"crm", "erp_chain"}
    assert all(r.seen_at < T0 + timedelta(seconds=41) for r in early)
    assert [r.seen_at for r in rows(store)] == sorted(r.seen_at for r in rows(store))


def test_pipeline_target_and_key_filters(store: Store) -> None:
    seeded(store)
    assert {r.pipeline for r in rows(store, pipeline="erp_chain")} == {"erp_chain"}
    audit = rows(store, target="audit")
    assert [(r.key, r.delivery and r.delivery.target) for r in audit] == [("held", "audit")]
    assert {r.key for r in rows(store, key="VIP-*")} == {"VIP-1"}
    assert {r.key for r in rows(store, key="vip-?")} == {"VIP-1"}, "ASCII case ignored"
    assert {r.key for r in rows(store, key="crm:dea*")} == {"dead"}, "origins match too"
    assert rows(store, key="d_ne") == [], "LIKE's own wildcards are literal"
    assert {r.key for r in rows(store, key="*mario*")} == {ODD}


def test_like_pattern_escapes_what_like_would_read() -> None:
    assert like_pattern("a%b_c\\d*e?") == "a\\%b\\_c\\\\d%e_"


def test_csv_has_the_header_and_carries_odd_keys_intact(store: Store) -> None:
    out = io.StringIO(newline="")
    count = write_csv(Evidence(store.engine).rows(EvidenceFilter()), out)
    assert count == 0 and out.getvalue() == ",".join(COLUMNS) + "\r\n"
    seeded(store)
    out = io.StringIO(newline="")
    count = write_csv(Evidence(store.engine).rows(EvidenceFilter(pipeline="crm")), out)
    parsed = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert count == len(parsed) == 9
    odd = next(r for r in parsed if r["key"] == ODD)
    assert odd["origin"] == f"crm:{ODD}" and odd["outcome"] == "done"
    assert json.loads(odd["fields"]) == {"id": ODD, "email": f"{ODD}@example.com"}
    assert next(r for r in parsed if r["key"] == "dead")["deleted_at"] == ""


def test_json_lines_parse_one_row_each(store: Store) -> None:
    seeded(store)
    out = io.StringIO()
    count = write_jsonl(Evidence(store.engine).rows(EvidenceFilter()), out)
    lines = out.getvalue().splitlines()
    assert count == len(lines) == 12
    parsed = [json.loads(line) for line in lines]
    assert all(list(p) == list(COLUMNS) for p in parsed)
    assert ODD in {p["key"] for p in parsed}


def test_summary_counts_and_oldest_pending(store: Store) -> None:
    seeded(store)
    now = T0 + timedelta(days=3)
    summary = summarize(Evidence(store.engine).rows(EvidenceFilter()), None, None, now).as_json()
    assert (summary["deletions"], summary["rows"]) == (12, 12)
    groups = {(t["hop"], t["pipeline"], t["target"]): t for t in summary["targets"]}
    erp = groups[(1, "crm", "erp")]
    assert erp["counts"] == {
        "done": 2, "legal_hold": 1, "dead": 1, "dropped": 1, "pending": 1, "failed": 1,
        "in_flight": 1,
    }  # fmt: skip
    assert groups[(1, "crm", "audit")]["counts"] == {"held": 1}
    assert groups[(1, "back", None)]["counts"] == {"echo": 1}
    assert groups[(3, "third", "lake")]["oldest_pending"]["key"] == "done"
    assert groups[(2, "erp_chain", "twins")]["lag"] == {
        "count": 1, "p50_s": 90.0, "p95_s": 90.0, "max_s": 90.0, "exact": True,
    }  # fmt: skip


def test_summary_percentiles_on_a_seeded_store(store: Store) -> None:
    """1,000 deletions deleted 1..1000 s after they were reported: the nearest-rank
    p50 is 500 s, p95 950 s, max 1000 s, exactly."""
    store.journal(
        "p", "S", [NewRecord(f"k{i}", {}) for i in range(1, 1001)], cursor={}, targets=["t"],
        run_id=None,
    )  # fmt: skip
    claimed = store.claim("p", "t", 2000, "r")
    store.record_outcomes([OutcomeRecord(c.id, "done") for c in claimed], RULE)
    with store.engine.begin() as conn:
        conn.execute(update(DELETION).values(seen_at=T0))
        for c in claimed:
            lag = int(c.key[1:])
            conn.execute(
                update(DELIVERY)
                .where(DELIVERY.c.id == c.id)
                .values(finished_at=T0 + timedelta(seconds=lag))
            )
    summary = summarize(Evidence(store.engine).rows(EvidenceFilter()), None, None, T0)
    [target] = summary.as_json()["targets"]
    assert target["lag"] == {
        "count": 1000, "p50_s": 500.0, "p95_s": 950.0, "max_s": 1000.0, "exact": True,
    }  # fmt: skip


def test_past_the_exact_limit_the_digest_stays_within_one_percent() -> None:
    rng = random.Random(7)
    lags = [rng.lognormvariate(3, 2) for _ in range(EXACT * 5)] + [0.0, 0.0004]
    digest = LagDigest()
    for lag in lags:
        digest.add(lag)
    assert not digest.is_exact and len(digest.buckets) < 2000
    ordered = sorted(lags)
    for p in (1, 50, 90, 95, 99, 99.9):
        true = ordered[max(1, math.ceil(p / 100 * len(lags))) - 1]
        got = digest.percentile(p)
        assert got is not None and abs(got - true) <= 0.01 * true + 0.001, p
    assert digest.high == max(lags) and digest.percentile(100) == max(lags)


def test_times_are_iso_or_ages() -> None:
    now = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
    assert parse_when("30d", now) == now - timedelta(days=30)
    assert parse_when("90m", now) == now - timedelta(minutes=90)
    assert parse_when("2025-01-31", now) == datetime(2025, 1, 31, tzinfo=UTC)
    assert parse_when("2025-01-31 08:00:00", now) == datetime(2025, 1, 31, 8, tzinfo=UTC)
    assert parse_when("2025-01-31T08:00:00+01:00", now) == datetime(2025, 1, 31, 7, tzinfo=UTC)
    assert parse_when("2025-01-31T08:00:00Z", now) == datetime(2025, 1, 31, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="write an ISO time"):
        parse_when("last tuesday", now)


# --- the command ------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Iterator[tuple[Path, Store]]:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""
state: {{url: "sqlite:///{tmp_path / "s.db"}"}}
connections:
  goose: {{type: goose, url: "http://127.0.0.1:9/deleted/", code: C, key: kkkkkkkk,
           timezone: UTC}}
  erp: {{type: mongoose, url: "http://127.0.0.1:9/IDORequestService/MGRESTService.svc",
         config: DEMO, user: u, password: pppppppp}}
pipelines:
  crm:
    schedule: {{every: 60s}}
    source: {{connection: goose, tables: [CUST], from: latest}}
    targets:
      erp: {{connection: erp, ido: UserNames, key: "{{id}}"}}
""",
        encoding="utf-8",
    )
    store = seeded(Store.open(f"sqlite:///{tmp_path / 's.db'}"))
    yield path, store
    store.close()


def test_the_command_streams_csv_and_writes_a_private_file(
    config: tuple[Path, Store], tmp_path: Path
) -> None:
    path, _ = config
    runner = CliRunner()
    shown = runner.invoke(app, ["report", "-c", str(path), "-o", "csv", "-p", "crm", "-t", "erp"])
    assert shown.exit_code == 0, shown.output
    parsed = list(csv.DictReader(io.StringIO(shown.stdout, newline="")))
    assert len(parsed) == 8 and {r["target"] for r in parsed} == {"erp"}
    target = tmp_path / "evidence.jsonl"
    written = runner.invoke(
        app, ["report", "-c", str(path), "-o", "jsonl", "--key", "done", "--file", str(target)]
    )
    assert written.exit_code == 0, written.output
    assert target.stat().st_mode & 0o777 == 0o600, "it names people: owner only"
    assert not (tmp_path / "evidence.jsonl.partial").exists()
    hops = sorted(json.loads(line)["hop"] for line in target.read_text("utf-8").splitlines())
    assert hops == [1, 2, 3]


def test_the_command_summarises_as_text_and_json(config: tuple[Path, Store]) -> None:
    path, _ = config
    runner = CliRunner()
    text = runner.invoke(app, ["report", "-c", str(path)])
    assert text.exit_code == 0, text.output
    assert "what became of each deletion" in text.stdout and "legal hold" in text.stdout
    data = json.loads(runner.invoke(app, ["report", "-c", str(path), "-o", "json"]).stdout)
    assert data["deletions"] == 12
    ranged = runner.invoke(
        app, ["report", "-c", str(path), "-o", "json", "--since", "2025-03-02", "--until", "2d"]
    )
    assert json.loads(ranged.stdout)["deletions"] == 2, ranged.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since 'yesterday': write an ISO time"),
        (["--until", "1x"], "--until '1x': write an ISO time"),
        (["--since", "1d", "--until", "2d"], "is not before --until"),
        (["-o", "xml"], "use csv, jsonl, text or json"),
    ],
)
def test_the_command_refuses_what_it_cannot_read(
    config: tuple[Path, Store], args: list[str], message: str
) -> None:
    path, _ = config
    result = CliRunner().invoke(app, ["report", "-c", str(path), *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
