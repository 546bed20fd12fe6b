"""What is wrong now, each trouble with the command that unsticks it.

`evaluate` judges the store against the configuration and returns the conditions
found (`state.Condition`): a pipeline failing or stopped, a target stalled, a
source read beyond its retention, an SLO breached, deliveries held or dead, and
(in a daemon) a pipeline overdue. It reads the same few queries whatever the
number of pipelines. `readiness` turns them into /readyz's answer;
`check_conditions` records them in the store, which opens and resolves each
condition once across every process (and queues its alerts).
"""

from __future__ import annotations

import shlex
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from state import Condition, QueueAge, Store, Transition
from state.alerts import OPENED
from state.health import Parked
from state.models import Cursor, Run, RunOutcome, TargetHealth, utcnow
from syncengine.config import Config
from syncengine.config.models import MetricsSettings, PipelineConfig
from syncengine.logs import get_logger

PIPELINE_FAILING = "pipeline_failing"
PIPELINE_STOPPED = "pipeline_stopped"
TARGET_STALLED = "target_stalled"
SOURCE_BEYOND_RETENTION = "source_beyond_retention"
SLO_BREACHED = "slo_breached"
DELIVERIES_HELD = "deliveries_held"
DEAD_LETTERS = "dead_letters"
PIPELINE_OVERDUE = "pipeline_overdue"
STORE_UNWRITABLE = "store_unwritable"
STORE_UNREADABLE = "store_unreadable"

CRON_PERIOD = 3600.0
"""The period a cron schedule is taken to have when judging a pipeline overdue."""
LONGEST_ERROR = 200
"""A run's or a send's error quoted in a one-line message is cut at this length."""
BACKFILL_FORMAT = "%Y-%m-%d %H:%M:%S"


def human(seconds: float) -> str:
    """A duration as an operator reads it: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86400:
        hours, minutes = divmod(whole // 60, 60)
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days, hours = divmod(whole // 3600, 24)
    return f"{days} d" + (f" {hours} h" if hours else "")


def period_of(config: Config, pipeline: str) -> float:
    schedule = config.pipelines[pipeline].schedule
    return schedule.every if schedule.every is not None else CRON_PERIOD


def _key(kind: str, pipeline: str, target: str | None = None) -> str:
    return f"{kind}:{pipeline}" if target is None else f"{kind}:{pipeline}/{target}"


def _short(error: str) -> str:
    line = " ".join(error.split())
    return line if len(line) <= LONGEST_ERROR else line[: LONGEST_ERROR - 3] + "..."


class _Commands:
    """The exact command lines an operator runs, for the configuration file in use."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.file = shlex.quote(config.path)

    def line(self, command: str, *args: str) -> str:
        """`command` as written ("dlq list"), then `-c FILE` and the quoted `args`."""
        return " ".join(["syncengine", command, "-c", self.file, *map(shlex.quote, args)])

    def status(self, pipeline: str) -> str:
        return self.line("status", "-p", pipeline)

    def waiting(self, pipeline: str, target: str) -> str:
        return self.line("deliveries list", "-p", pipeline, "-t", target, "--status", "pending")

    def check(self, connection: str | None) -> str:
        return (
            self.line("check")
            if connection is None
            else self.line("check", "--connection", connection)
        )


def evaluate(
    store: Store,
    config: Config,
    *,
    pipelines: Collection[str] | None = None,
    now: datetime | None = None,
    daemon_started: datetime | None = None,
) -> list[Condition]:
    """Every condition found now in `pipelines` (None: every pipeline of `config`);
    disabled pipelines have none. `daemon_started` (a daemon's start) adds the
    pipelines overdue, which only a process that runs them on schedule can judge."""
    now = now or utcnow()
    names = [
        name
        for name, pipe in config.pipelines.items()
        if pipe.enabled and (pipelines is None or name in pipelines)
    ]
    if not names:
        return []
    wanted = set(names)
    commands = _Commands(config)
    runs = store.recent_runs(config.health.failing_runs)
    health = {(h.pipeline, h.target): h for h in store.target_health() if h.pipeline in wanted}
    ages = {(q.pipeline, q.target): q for q in store.queue_ages() if q.pipeline in wanted}
    parked = [p for p in store.parked() if p.pipeline in wanted]
    cursors = [c for c in store.cursors() if c.pipeline in wanted and c.last_success_at]
    found: list[Condition] = []
    for name in names:
        found.extend(_runs(config, commands, name, runs.get(name, []), now))
        found.extend(_retention(config, commands, name, cursors, now))
    found.extend(_stalled(config, commands, health.values(), now))
    found.extend(_slo(config, commands, ages.values(), health, now))
    found.extend(_parked(config, commands, parked, ages, now))
    if daemon_started is not None:
        good = store.last_good_runs()
        found.extend(
            _overdue(config, commands, name, good.get(name), daemon_started, now)
            for name in names
            if _is_overdue(config, name, good.get(name), daemon_started, now)
        )
    return found


def _runs(
    config: Config, commands: _Commands, name: str, runs: list[Run], now: datetime
) -> Iterable[Condition]:
    """Stopped (the last run was fatal) says more than failing: one condition, not two."""
    if not runs:
        return
    last = runs[0]
    ended = last.finished_at or last.started_at
    if last.fatal:
        yield Condition(
            _key(PIPELINE_STOPPED, name),
            PIPELINE_STOPPED,
            name,
            None,
            ended,
            f"pipeline {name} stopped {human((now - ended).total_seconds())} ago on a fatal "
            f"error: {_short(last.error)}; fix the configuration or credentials, then "
            "restart the daemon or reload it (SIGHUP)",
            commands.check(_named_connection(config.pipelines[name], last.error)),
        )
        return
    streak = config.health.failing_runs
    if len(runs) < streak or any(r.outcome == RunOutcome.OK for r in runs[:streak]):
        return
    first = runs[streak - 1]
    runs_word = "run" if streak == 1 else f"{streak} runs"
    yield Condition(
        _key(PIPELINE_FAILING, name),
        PIPELINE_FAILING,
        name,
        None,
        first.started_at,
        f"pipeline {name}: its last {runs_word} failed (the latest "
        f"{human((now - ended).total_seconds())} ago: {_short(last.error) or last.outcome})",
        commands.status(name),
    )


def _named_connection(pipe: PipelineConfig, error: str) -> str | None:
    """The one connection of the pipeline its error names, to check that one alone."""
    used = {pipe.source.connection, *(t.connection for t in pipe.targets.values())}
    named = [c for c in used if c is not None and c in error]
    if len(named) == 1:
        return named[0]
    return pipe.source.connection if not named and len(used - {None}) == 1 else None


def _retention(
    config: Config, commands: _Commands, name: str, cursors: list[Cursor], now: datetime
) -> Iterable[Condition]:
    """One condition per pipeline, from its stream read longest ago. Only the streams the
    source lists (`tables`) count when it lists them: a stream no longer configured is
    read by nobody and is no loss."""
    pipe = config.pipelines[name]
    horizon = pipe.alerts.cursor_retention
    if horizon is None:
        return
    listed = getattr(pipe.source.settings, "tables", None)
    late = [
        c
        for c in cursors
        if c.pipeline == name
        and (listed is None or c.stream in listed)
        and c.last_success_at is not None
        and (now - c.last_success_at).total_seconds() > horizon
    ]
    if not late:
        return
    oldest = min(late, key=lambda c: c.last_success_at or now)
    assert oldest.last_success_at is not None
    zone = _zone_of(config, pipe)
    since = oldest.last_success_at.astimezone(zone).strftime(BACKFILL_FORMAT)
    streams = ", ".join(sorted(c.stream for c in late))
    yield Condition(
        _key(SOURCE_BEYOND_RETENTION, name),
        SOURCE_BEYOND_RETENTION,
        name,
        None,
        oldest.last_success_at + timedelta(seconds=horizon),
        f"pipeline {name}: stream {streams} last read successfully "
        f"{human((now - oldest.last_success_at).total_seconds())} ago, beyond the source's "
        f"retention of {human(horizon)}; deletions made since may be gone from the source: "
        f"backfill from {since} ({zone}) once it reads again",
        commands.line("backfill", "-p", name, "--from", since),
    )


def _zone_of(config: Config, pipe: PipelineConfig) -> ZoneInfo:
    """`backfill --from` is written in the source connection's zone (UTC if it has none)."""
    connection = config.connections.get(pipe.source.connection or "")
    zone = getattr(connection, "zone", None)
    return zone if isinstance(zone, ZoneInfo) else ZoneInfo("UTC")


def send_state(row: TargetHealth | None, stall_after: float, now: datetime) -> str | None:
    """Whether a target's sends get through: `ok`; `failing` since a run got nothing
    through; `stalled` once that lasts longer than `stall_after`; None before any run
    had work for it. `status`, /readyz and the alerts all judge by this."""
    if row is None:
        return None
    if row.failing_since is None:
        return "ok"
    return "stalled" if (now - row.failing_since).total_seconds() > stall_after else "failing"


def _stalled(
    config: Config, commands: _Commands, health: Iterable[TargetHealth], now: datetime
) -> Iterable[Condition]:
    for row in health:
        target = config.pipelines[row.pipeline].targets.get(row.target)
        if target is None or send_state(row, config.health.stall_after, now) != "stalled":
            continue
        assert row.failing_since is not None
        failing = (now - row.failing_since).total_seconds()
        error = f"; last error: {_short(row.last_error)}" if row.last_error else ""
        yield Condition(
            _key(TARGET_STALLED, row.pipeline, row.target),
            TARGET_STALLED,
            row.pipeline,
            row.target,
            row.failing_since,
            f"target {row.pipeline}/{row.target}: no send has got through for "
            f"{human(failing)} ({row.failed_runs} runs in a row{error})",
            commands.check(target.connection),
        )


def max_lag(config: Config, pipeline: str, target: str) -> float | None:
    """The target's SLO, else its pipeline's (None: no SLO)."""
    pipe = config.pipelines[pipeline]
    own = pipe.targets[target].slo
    if own is not None and own.max_lag is not None:
        return own.max_lag
    return pipe.slo.max_lag


def _slo(
    config: Config,
    commands: _Commands,
    ages: Iterable[QueueAge],
    health: dict[tuple[str, str], TargetHealth],
    now: datetime,
) -> Iterable[Condition]:
    for age in ages:
        if age.oldest_waiting is None or age.target not in config.pipelines[age.pipeline].targets:
            continue
        allowed = max_lag(config, age.pipeline, age.target)
        waited = (now - age.oldest_waiting).total_seconds()
        if allowed is None or waited <= allowed:
            continue
        target = config.pipelines[age.pipeline].targets[age.target]
        row = health.get((age.pipeline, age.target))
        failing = row is not None and row.failing_since is not None
        why = "; its sends are failing" if failing else ""
        yield Condition(
            _key(SLO_BREACHED, age.pipeline, age.target),
            SLO_BREACHED,
            age.pipeline,
            age.target,
            age.oldest_waiting + timedelta(seconds=allowed),
            f"target {age.pipeline}/{age.target}: the oldest deletion still waiting was "
            f"journaled {human(waited)} ago, over its SLO of {human(allowed)}{why}",
            commands.check(target.connection)
            if failing
            else commands.waiting(age.pipeline, age.target),
        )


def _parked(
    config: Config,
    commands: _Commands,
    parked: Iterable[Parked],
    ages: dict[tuple[str, str], QueueAge],
    now: datetime,
) -> Iterable[Condition]:
    for row in parked:
        if row.target not in config.pipelines[row.pipeline].targets:
            continue
        where = f"{row.pipeline}/{row.target}"
        if row.held:
            age = ages.get((row.pipeline, row.target))
            since = age.oldest_held if age is not None and age.oldest_held is not None else now
            held_for = (now - since).total_seconds()
            reject = commands.line(
                "reject", "-p", row.pipeline, "-t", row.target, "--reason", "<why>"
            )
            why = f" ({_short(row.held_reason)})" if row.held_reason else ""
            yield Condition(
                _key(DELIVERIES_HELD, row.pipeline, row.target),
                DELIVERIES_HELD,
                row.pipeline,
                row.target,
                since,
                f"target {where}: {row.held} deliveries held by the mass-delete guard{why} "
                f"for {human(held_for)}, waiting for an operator; approve them, or drop "
                f"them with: {reject}",
                commands.line(
                    "approve", "-p", row.pipeline, "-t", row.target, "--count", str(row.held)
                ),
                blocks_ready=held_for > config.health.held_after,
            )
        if row.dead:
            since = row.oldest_dead or now
            retry = commands.line("dlq retry", "-p", row.pipeline, "-t", row.target)
            yield Condition(
                _key(DEAD_LETTERS, row.pipeline, row.target),
                DEAD_LETTERS,
                row.pipeline,
                row.target,
                since,
                f"target {where}: {row.dead} dead letters (the oldest gave up "
                f"{human((now - since).total_seconds())} ago; e.g. {_short(row.dead_reason)}); "
                "once the cause is fixed: "
                f"{retry} (or acknowledge them with dlq drop)",
                commands.line("dlq list", "-p", row.pipeline, "-t", row.target),
                blocks_ready=False,
            )


def _allowed_quiet(config: Config, name: str) -> float:
    # Loaded only here, in the daemon, which alone judges a pipeline overdue: the
    # daemon module brings the scheduler, which `run --once` never loads.
    from syncengine.daemon import job_wait_for

    periods = (config.metrics or MetricsSettings()).stale_after_periods
    return periods * period_of(config, name) + job_wait_for(config.pipelines[name].schedule)


def _quiet_since(last_good: datetime | None, started: datetime) -> datetime:
    return max(last_good, started) if last_good is not None else started


def _is_overdue(
    config: Config, name: str, last_good: datetime | None, started: datetime, now: datetime
) -> bool:
    quiet = (now - _quiet_since(last_good, started)).total_seconds()
    return quiet > _allowed_quiet(config, name)


def _overdue(
    config: Config,
    commands: _Commands,
    name: str,
    last_good: datetime | None,
    started: datetime,
    now: datetime,
) -> Condition:
    quiet_since = _quiet_since(last_good, started)
    allowed = _allowed_quiet(config, name)
    return Condition(
        _key(PIPELINE_OVERDUE, name),
        PIPELINE_OVERDUE,
        name,
        None,
        quiet_since + timedelta(seconds=allowed),
        f"pipeline {name}: no good run for {human((now - quiet_since).total_seconds())} "
        f"(scheduled {config.pipelines[name].schedule.describe()}; overdue after "
        f"{human(allowed)})",
        commands.status(name),
    )


def _reason(condition: Condition) -> dict[str, Any]:
    return {
        "kind": condition.kind,
        "pipeline": condition.pipeline,
        "target": condition.target,
        "since": condition.since.isoformat(),
        "message": condition.message,
        "command": condition.command,
    }


def readiness(
    store: Store,
    config: Config,
    started: datetime,
    *,
    pipelines: Collection[str] | None = None,
    now: datetime | None = None,
) -> tuple[bool, dict[str, Any]]:
    """Whether this daemon does its job: the store takes writes and no condition that
    blocks readiness is found; the body names each reason and each warning."""
    now = now or utcnow()
    reasons: list[dict[str, Any]] = []
    try:
        store.check_writable()
    except Exception as exc:
        reasons.append(
            {
                "kind": STORE_UNWRITABLE,
                "pipeline": None,
                "target": None,
                "since": now.isoformat(),
                "message": f"store not writable: {type(exc).__name__}",
                "command": _Commands(config).line("state info"),
            }
        )
    try:
        found = evaluate(store, config, pipelines=pipelines, now=now, daemon_started=started)
    except Exception as exc:
        found = []
        reasons.append(
            {
                "kind": STORE_UNREADABLE,
                "pipeline": None,
                "target": None,
                "since": now.isoformat(),
                "message": f"cannot read the store to judge health: {type(exc).__name__}",
                "command": _Commands(config).line("state info"),
            }
        )
    reasons.extend(_reason(c) for c in found if c.blocks_ready)
    ok = not reasons
    return ok, {
        "ok": ok,
        "checked_at": now.isoformat(),
        "reasons": reasons,
        "warnings": [_reason(c) for c in found if not c.blocks_ready],
    }


def check_conditions(
    store: Store, config: Config, pipelines: Collection[str] | None = None
) -> list[Transition]:
    """Record what is wrong now in `pipelines` (None: all): the store opens each new
    condition and resolves each one gone, once across every process, and queues their
    alerts. Each opening and resolution is also a log event, for log-based alerting."""
    scope = list(config.pipelines) if pipelines is None else list(pipelines)
    found = evaluate(store, config, pipelines=scope)
    transitions = store.sync_conditions(found, pipelines=scope, sinks=config.alerts.sink_names())
    commands = {c.key: c.command for c in found}
    log = get_logger("syncengine.health")
    for change in transitions:
        fields = {
            "kind": change.kind,
            "pipeline": change.pipeline,
            "target": change.target,
            "message": change.message,
            "command": commands.get(change.key, ""),
        }
        if change.event == OPENED:
            log.warning("alert_opened", **fields)
        else:
            log.info("alert_resolved", **fields)
    return transitions
