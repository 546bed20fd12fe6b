"""The `syncengine` command.

Exit codes: 0 success; 1 a pipeline run failed (or was stopped by a fatal
error), or a target that had work got none of it through; 2 a problem the
user can fix (configuration, store URL, ports). User errors end in one
message naming the place and the fix, never a traceback.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer
from rich.console import Console

from syncengine.helptext import FlowingTyper

# Each command imports the engine, the store and the connectors it needs in its own
# body: `--help` and `validate` load none of the store, and `run --once` none of the
# daemon's scheduler or metrics server (tests/unit/test_startup.py holds this).
if TYPE_CHECKING:
    from state import Store
    from syncengine.api import RunSummary
    from syncengine.config import Config
    from syncengine.engine import RunReport, Runtime, StopToken
    from syncengine.engine.runtime import PipelineRuntime

app = FlowingTyper(
    add_completion=True,
    no_args_is_help=True,
    help="Keep deletions consistent across business systems.",
    pretty_exceptions_enable=False,
)
PIPE_WIDTH = 120  # rich would squeeze tables to 80 columns when output is piped
out = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
err = Console(stderr=True, width=None if sys.stderr.isatty() else PIPE_WIDTH)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="the YAML file", show_default=True)
]
PipelineOption = Annotated[str | None, typer.Option("--pipeline", "-p", help="only this pipeline")]
OutputOption = Annotated[str, typer.Option("--output", "-o", help="text or json")]
TargetOption = Annotated[str, typer.Option("--target", "-t", help="the target's name")]
RequiredPipeline = Annotated[str, typer.Option("--pipeline", "-p", help="the pipeline's name")]


def _print_version(asked: bool) -> None:
    """The installed distribution's version, read from its metadata, so a wheel, an
    editable install and a container all answer what pip installed."""
    if not asked:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("syncengine")
    except PackageNotFoundError:
        installed = "unknown (not installed: run from a source tree without pip install)"
    out.print(f"syncengine {installed}", highlight=False)
    raise typer.Exit(0)


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="print the version and exit", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    """Keep deletions consistent across business systems."""


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


LARGEST = 2**63 - 1
"""The store's integers are 64-bit: a larger job number or count names nothing."""


def within(low: float, high: float, what: str) -> Callable[[typer.CallbackParam, Any], Any]:
    """The one rule of every number a command takes (seconds, counts, job numbers): a
    finite number from `low` to `high`, or one line naming the option and `what` to
    write, and exit 2. `nan` compares false with everything, so it is refused too."""

    def check(param: typer.CallbackParam, value: Any) -> Any:
        if value is None or (math.isfinite(value) and low <= value <= high):
            return value
        name = param.opts[0] if param.opts[0].startswith("-") else str(param.name).upper()
        raise fail(f"{name} {value}: write {what}")

    return check


SECONDS = within(0, math.inf, "a number of seconds, 0 or more")


def load(path: Path, moved_ports: Mapping[int, int] | None = None) -> Config:
    """The configuration at `path`; `moved_ports` (old -> new) points its loopback URLs at
    emulators the demo started elsewhere, so the demo's config follows its sandbox."""
    from syncengine.config import ConfigError, load_config
    from syncengine.logs import remember_secrets

    try:
        config = load_config(path, moved_ports=moved_ports)
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(
                f"[red]error:[/red] {issue.render(exc.file)}", highlight=False, soft_wrap=True
            )
        raise typer.Exit(2) from None
    remember_secrets(config.secrets)
    return config


def open_store(config: Config) -> Store:
    from syncengine import api

    try:
        return api.open_store(config)
    except api.StoreUnavailable as exc:
        raise fail(str(exc)) from None


@contextmanager
def opened(
    config: Path, pipeline: str | None = None, target: str | None = None
) -> Iterator[tuple[Config, Store]]:
    """The config, checked for the named pipeline and target, and its store, closed after."""
    cfg = load(config)
    if target is not None and pipeline is not None:
        check_target(cfg, pipeline, target)
    else:
        check_pipeline(cfg, pipeline)
    store = open_store(cfg)
    try:
        yield cfg, store
    finally:
        store.close()


def emit(data: Any, output: str, render: Callable[[], None]) -> None:
    """JSON for scripts, or the human rendering."""
    if output == "json":
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif output == "text":
        render()
    else:
        raise fail(f"--output {output!r}: use text or json")


def check_pipeline(config: Config, pipeline: str | None) -> None:
    if pipeline is not None and pipeline not in config.pipelines:
        known = ", ".join(config.pipelines)
        raise fail(f"{config.path}: no pipeline named {pipeline!r}; defined: {known}")


@app.command()
def validate(config: ConfigOption = Path("config.yaml")) -> None:
    """Check a configuration file; exit 2 with every problem if it is wrong."""
    cfg = load(config)
    for warning in cfg.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    out.print(f"{config}: OK")
    for name, pipe in cfg.pipelines.items():
        targets = ", ".join(f"{t} ({spec.connection})" for t, spec in pipe.targets.items())
        state = "" if pipe.enabled else " [disabled]"
        out.print(
            f"  pipeline {name}{state}: {pipe.source.describe()} -> {targets}; "
            f"{pipe.schedule.describe()}",
            highlight=False,
        )


@app.command()
def check(
    config: ConfigOption = Path("config.yaml"),
    connection: Annotated[
        str | None, typer.Option("--connection", help="only this connection")
    ] = None,
    output: OutputOption = "text",
) -> None:
    """Prove each connection usable, read-only: reach, TLS, credentials and the
    configured object (table, IDO, tenant, instance); exit 1 if any step fails."""
    if output not in ("text", "json"):
        raise fail(f"--output {output!r}: use text or json")
    from syncengine.check import as_json, check_connections, exit_code, render

    cfg = load(config)
    if connection is not None and connection not in cfg.connections:
        known = ", ".join(cfg.connections)
        raise fail(f"{cfg.path}: no connection named {connection!r}; defined: {known}")
    probes = asyncio.run(check_connections(cfg, connection))
    emit(as_json(probes), output, lambda: render(probes, out))
    raise typer.Exit(exit_code(probes))


DEFAULT_JOB_WAIT = 120.0


async def run_once(
    runtime: Runtime, stop: StopToken | None = None, job_wait: float = DEFAULT_JOB_WAIT
) -> list[RunReport]:
    """Each pipeline once. A first SIGTERM/SIGINT stops the runs at their next stop
    point; a second cancels the run under way, which then reports itself cancelled."""
    from syncengine.api import run_pipelines
    from syncengine.engine import StopToken
    from syncengine.engine.stop import Shutdown

    stop = stop or StopToken()
    with Shutdown(stop) as shutdown:
        running: list[tuple[str, asyncio.Task[RunReport]]] = []

        def started(pipeline: str, task: asyncio.Task[RunReport]) -> None:
            shutdown.tasks.add(task)
            running.append((pipeline, task))

        try:
            return await run_pipelines(runtime, stop, job_wait, started)
        except asyncio.CancelledError:
            pipeline, task = running[-1]
            if not shutdown.cut(task):
                raise
            return [*(t.result() for _, t in running[:-1]), cancelled_report(pipeline)]


def cancelled_report(pipeline: str) -> RunReport:
    from state.models import RunOutcome
    from syncengine.engine import RunReport

    return RunReport(
        pipeline,
        RunOutcome.INTERRUPTED,
        error="cancelled by a second signal; what was being sent goes back to pending",
        cancelled=True,
    )


def _plan(config: Path, pipeline: str | None, output: str, since: str | None = None) -> None:
    from syncengine.engine import build_runtime
    from syncengine.engine.plan import plan_pipeline
    from syncengine.logs import configure
    from syncengine.status import render_plans

    cfg = load(config)
    check_pipeline(cfg, pipeline)
    if output not in ("text", "json"):
        raise fail(f"--output {output!r}: use text or json")
    configure(cfg.logging.level, cfg.logging.format)
    store = open_store(cfg)
    runtime = build_runtime(cfg, store, only=pipeline)
    if since is not None and pipeline is not None:
        check_since(runtime.pipelines[pipeline], since)

    async def main() -> list[Any]:
        try:
            return [await plan_pipeline(store, pipe, since) for pipe in runtime.pipelines.values()]
        finally:
            await runtime.aclose()

    plans = asyncio.run(main())
    if output == "json":
        sys.stdout.write(json.dumps([p.as_json() for p in plans], indent=2, default=str) + "\n")
    else:
        render_plans(plans, out)


def check_since(pipe: PipelineRuntime, since: str) -> None:
    """`--from` as the source reads it, tried before anything is read or planned. A
    time its zone cannot place (before year 1 or after 9999 once in UTC) overflows."""
    from connectors.contract import Backfillable
    from state.models import utcnow

    if not isinstance(pipe.source, Backfillable):
        return
    try:
        pipe.source.plan_backfill(pipe.source.streams()[0], since, utcnow())
    except ValueError as exc:
        raise fail(f"--from {exc}") from None
    except OverflowError:
        raise fail(
            f"--from {since!r}: in the source connection's time zone this falls before year 1 "
            "or after 9999 in UTC; write a time within them"
        ) from None


@app.command()
def backfill(
    pipeline: RequiredPipeline,
    since: Annotated[
        str,
        typer.Option("--from", help='"yyyy-mm-dd hh:mm:ss" in the source connection\'s time zone'),
    ],
    config: ConfigOption = Path("config.yaml"),
    until: Annotated[
        str | None, typer.Option("--to", help="end of the range, where the source can bound it")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the plan only")] = False,
    wait: Annotated[
        float,
        typer.Option(
            help="seconds to wait for a run of the pipeline in progress", callback=SECONDS
        ),
    ] = 300.0,
    job_wait: Annotated[
        float, typer.Option(help="seconds to follow asynchronous jobs", callback=SECONDS)
    ] = DEFAULT_JOB_WAIT,
) -> None:
    """Re-read a source from a time and propagate what it finds, without moving the
    daemon's cursor. Safe while the daemon runs; run it again to resume."""
    from connectors.contract import Backfillable
    from syncengine.engine import StopToken, build_runtime, run_pipeline
    from syncengine.engine.stop import Shutdown
    from syncengine.logs import configure
    from syncengine.progress import BackfillProgress
    from syncengine.status import render_summary

    cfg = load(config)
    check_pipeline(cfg, pipeline)
    source_type = cfg.pipelines[pipeline].source.connection_type
    if until is not None:
        raise fail(
            f"--to: the {source_type} source of pipeline {pipeline} reads from a time onward "
            "and cannot stop at an end; leave --to out (what is already journaled is skipped)"
        )
    if dry_run:
        _plan(config, pipeline, "text", since=since)
        return
    configure(cfg.logging.level, cfg.logging.format)
    store = open_store(cfg)
    runtime = build_runtime(cfg, store, only=pipeline)
    pipe = runtime.pipelines[pipeline]
    if not isinstance(pipe.source, Backfillable):
        raise fail(f"the {source_type} source of pipeline {pipeline} cannot be backfilled")
    check_since(pipe, since)

    async def main() -> RunReport:
        stop = StopToken()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        try:
            with Shutdown(stop) as shutdown, BackfillProgress(store, pipe, out):
                while True:
                    task = asyncio.create_task(
                        run_pipeline(
                            store,
                            pipe,
                            stop,
                            job_wait=job_wait,
                            artifacts_dir=cfg.state.artifacts,
                            backfill_from=since,
                        )
                    )
                    shutdown.tasks.add(task)
                    try:
                        report = await task
                    except asyncio.CancelledError:
                        if not shutdown.cut(task):
                            raise
                        return cancelled_report(pipeline)
                    if report.run_id is not None or loop.time() > deadline or stop.is_set():
                        return report
                    await asyncio.sleep(1.0)
        finally:
            await runtime.aclose()

    settle_start_up()
    report = asyncio.run(main())
    render_summary([report], store, out)
    if report.cancelled:
        raise typer.Exit(1)
    if report.run_id is None:
        raise fail(f"pipeline {pipeline} stayed busy for {wait:g}s ({report.error}); try again")
    raise typer.Exit(1 if report.failed else 0)


@app.command()
def plan(
    config: ConfigOption = Path("config.yaml"),
    pipeline: PipelineOption = None,
    output: OutputOption = "text",
) -> None:
    """Show what a run would delete, per target, changing nothing anywhere."""
    _plan(config, pipeline, output)


@app.command()
def run(
    config: ConfigOption = Path("config.yaml"),
    once: Annotated[
        bool, typer.Option("--once", help="one cycle of every pipeline, then exit")
    ] = False,
    pipeline: PipelineOption = None,
    job_wait: Annotated[
        float,
        typer.Option(
            help="with --once: seconds to follow asynchronous jobs before exiting",
            callback=SECONDS,
        ),
    ] = DEFAULT_JOB_WAIT,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show the plan; no mutating call, nothing journaled")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="serve /metrics, /healthz and /readyz on this port, whatever the file says (two "
            "daemons on one host each need their own)",
            envvar="SYNCENGINE_METRICS_PORT",
            callback=within(1, 65535, "a port from 1 to 65535"),
        ),
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="with --once or --dry-run: text or json")
    ] = "text",
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            help="with --once: write the run's metrics and the store's gauges to this file, "
            "in Prometheus text format, for node_exporter's textfile collector",
            envvar="SYNCENGINE_METRICS_FILE",
        ),
    ] = None,
) -> None:
    """Run the daemon (every pipeline on its schedule), or one cycle with --once."""
    if output not in ("text", "json") or (output == "json" and not once and not dry_run):
        raise fail(f"--output {output!r}: use text, or json with --once or --dry-run")
    if metrics_file is not None and not once:
        raise fail(
            "--metrics-file goes with --once; the daemon serves its metrics on "
            "/metrics (set metrics.port)"
        )
    if metrics_file is not None and not metrics_file.parent.is_dir():
        raise fail(
            f"--metrics-file {metrics_file}: no directory {metrics_file.parent}; create it "
            "or name a file in node_exporter's --collector.textfile.directory"
        )
    if dry_run:
        _plan(config, pipeline, output)
        return
    from syncengine.engine import build_runtime
    from syncengine.logs import configure

    cfg = load(config)
    if metrics_port is not None:
        cfg = with_metrics_port(cfg, metrics_port)
    check_pipeline(cfg, pipeline)
    configure(cfg.logging.level, cfg.logging.format)
    store = open_store(cfg)
    runtime = build_runtime(cfg, store, only=pipeline)
    serve = (
        _once(runtime, store, job_wait, output, metrics_file, cfg.health.stall_after)
        if once
        else _daemon(runtime, store, cfg, _reloader(config, metrics_port), pipeline)
    )
    settle_start_up()
    raise typer.Exit(asyncio.run(serve))


def with_metrics_port(config: Config, port: int) -> Config:
    """The file's metrics block on another port (or the default block, if it has none)."""
    from syncengine.config.models import MetricsSettings

    metrics = (config.metrics or MetricsSettings()).model_copy(update={"port": port})
    return config.model_copy(update={"metrics": metrics})


def settle_start_up() -> None:
    """What start-up built (modules, the configuration, connectors, the store's
    engine) lives as long as the process: frozen, the cyclic collector no longer
    walks it at every full collection of a long run (about 0.1 s of CPU at 20,000
    deletions)."""
    gc.freeze()


async def _once(
    runtime: Runtime,
    store: Store,
    job_wait: float,
    output: str,
    metrics_file: Path | None = None,
    stall_after: float = 900.0,
) -> int:
    """The summary as a table, or as the JSON `syncengine.api.run_once` returns; with
    `metrics_file`, the run's metrics written there too."""
    from syncengine.api import summarize
    from syncengine.status import render_summary

    try:
        reports = await run_once(runtime, job_wait=job_wait)
    finally:
        await runtime.aclose()
    summary = summarize(reports, store)
    if output == "json":
        sys.stdout.write(summary.to_json() + "\n")
    else:
        render_summary(reports, store, out)
    for line in summary.nothing_through():  # plain: a reason may hold rich markup
        sys.stderr.write(f"syncengine: {line}\n")
    if metrics_file is not None:
        _write_metrics(metrics_file, store, reports, summary, stall_after)
    return summary.exit_code


def _write_metrics(
    path: Path, store: Store, reports: list[RunReport], summary: RunSummary, stall_after: float
) -> None:
    """Prometheus is loaded only here, when a file is asked for. A file that cannot be
    written is an error of its own (exit 2): the cron user's alerts read that file."""
    from syncengine.metrics import write_run_file

    ok = {result.pipeline: result.ok for result in summary.pipelines}
    try:
        write_run_file(path, store, reports, ok, stall_after)
    except OSError as exc:
        raise fail(
            f"--metrics-file {path}: cannot write it ({exc.strerror or exc}); "
            "check the directory's permissions"
        ) from None


def _reloader(path: Path, metrics_port: int | None) -> Callable[[], Config]:
    """How the daemon reads its file again on SIGHUP: validated as at start (ConfigError
    when wrong), its secrets registered for redaction, the command line's overrides
    applied again."""
    from syncengine.config import load_config
    from syncengine.logs import remember_secrets

    def reload() -> Config:
        config = load_config(path)
        remember_secrets(config.secrets)
        return config if metrics_port is None else with_metrics_port(config, metrics_port)

    return reload


async def _daemon(
    runtime: Runtime,
    store: Store,
    cfg: Config,
    reload: Callable[[], Config],
    only: str | None,
) -> int:
    """The scheduler and the metrics server are the daemon's alone: `run --once`
    never imports them."""
    from syncengine.daemon import Daemon
    from syncengine.observe import ObservabilityError, serve_observability

    try:
        with serve_observability(store, cfg, only, live=lambda: runtime.config) as metrics:
            on_report = metrics.record_run if metrics is not None else None
            daemon = Daemon(runtime, on_report=on_report, reload=reload, only=only)
            return await daemon.serve()
    except ObservabilityError as exc:
        raise fail(str(exc)) from None
    finally:
        await runtime.aclose()


@app.command()
def status(
    config: ConfigOption = Path("config.yaml"),
    pipeline: PipelineOption = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json")] = "text",
) -> None:
    """Per pipeline and target: cursors, recoveries, pending/done/failed/dead, last run."""
    from syncengine.status import collect_status, render_status

    with opened(config, pipeline) as (cfg, store):
        data = collect_status(store, cfg, pipeline)
    emit(data, output, lambda: render_status(data, out))


def check_target(config: Config, pipeline: str, target: str) -> None:
    check_pipeline(config, pipeline)
    targets = config.pipelines[pipeline].targets
    if target not in targets:
        raise fail(
            f"{config.path}: pipeline {pipeline} has no target {target!r}; "
            f"its targets: {', '.join(targets)}"
        )


@app.command()
def held(
    config: ConfigOption = Path("config.yaml"),
    pipeline: PipelineOption = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json")] = "text",
) -> None:
    """Deliveries a guard held back: not sent, not lost, waiting for approve or reject."""
    from syncengine.status import collect_deliveries, render_deliveries

    with opened(config, pipeline) as (_, store):
        rows = collect_deliveries(store, pipeline=pipeline, status="held")
    emit(rows, output, lambda: render_deliveries(rows, out, "held deliveries"))


@app.command()
def approve(
    pipeline: RequiredPipeline,
    target: TargetOption,
    count: Annotated[
        int,
        typer.Option(
            "--count",
            "-n",
            help="how many are held: must match",
            callback=within(0, LARGEST, f"a count from 0 to {LARGEST}"),
        ),
    ],
    config: ConfigOption = Path("config.yaml"),
) -> None:
    """Release exactly COUNT held deliveries of a target (refused if the number differs)."""
    from state import HeldCountMismatch

    with opened(config, pipeline, target) as (_, store):
        try:
            released = store.approve_held(pipeline, target, count)
        except HeldCountMismatch as exc:
            raise fail(
                f"refused: {exc.held} deliveries are held for {pipeline}/{target}, not {count}; "
                f"look at them with `syncengine held -c {config}` and approve that number"
            ) from None
    out.print(
        f"approved {released} held deliveries of {pipeline}/{target}; the next run sends them"
    )


@app.command()
def reject(
    pipeline: RequiredPipeline,
    target: TargetOption,
    reason: Annotated[str, typer.Option("--reason", "-r", help="kept with each delivery")],
    config: ConfigOption = Path("config.yaml"),
) -> None:
    """Mark every held delivery of a target dead, with the operator's reason."""
    with opened(config, pipeline, target) as (_, store):
        rejected = store.reject_held(pipeline, target, reason)
    out.print(f"rejected {rejected} held deliveries of {pipeline}/{target}: now dead ({reason})")


state_app = FlowingTyper(
    help="The store itself: what it holds, its schema, a backup, pruning its history."
)
app.add_typer(state_app, name="state")


@state_app.command("info")
def state_info(config: ConfigOption = Path("config.yaml"), output: OutputOption = "text") -> None:
    """Schema revision, size, deliveries per status, open jobs and who holds each lease;
    it never migrates (an old store is shown as it is)."""
    from dataclasses import asdict

    from state import StoreError
    from state.admin import store_info
    from state.db import make_engine
    from syncengine.status import render_store_info

    cfg = load(config)
    try:
        engine = make_engine(cfg.state.url)
        try:
            info = store_info(engine)
        finally:
            engine.dispose()
    except StoreError as exc:
        raise fail(f"{cfg.path}: {exc}") from None
    emit(asdict(info) | {"behind": info.behind}, output, lambda: render_store_info(info, out))


@state_app.command("migrate")
def state_migrate(config: ConfigOption = Path("config.yaml")) -> None:
    """Upgrade the store's schema to this version's (what every command does by itself
    unless `state.migrate: manual`). Back the store up first."""
    from state import StoreError
    from state.admin import revision
    from state.db import make_engine, upgrade

    cfg = load(config)
    try:
        engine = make_engine(cfg.state.url)
        try:
            before = revision(engine)
            upgrade(engine)
            after = revision(engine)
        finally:
            engine.dispose()
    except StoreError as exc:
        raise fail(f"{cfg.path}: {exc}") from None
    if before == after:
        out.print(f"schema already at revision {after}: nothing to do", highlight=False)
    else:
        out.print(f"schema migrated: {before or 'new store'} -> {after}", highlight=False)


@state_app.command("backup")
def state_backup(
    destination: Annotated[Path, typer.Argument(help="a new file for the copy")],
    config: ConfigOption = Path("config.yaml"),
) -> None:
    """A consistent copy of a SQLite store, safe while a daemon runs (SQLite's online
    backup). For PostgreSQL it says which tool to use instead."""
    from state import StoreError
    from state.admin import backup
    from state.db import make_engine

    cfg = load(config)
    try:
        engine = make_engine(cfg.state.url)
        try:
            size = backup(engine, destination)
        finally:
            engine.dispose()
    except StoreError as exc:
        raise fail(f"{cfg.path}: {exc}") from None
    out.print(f"backed up to {destination} ({size:,} bytes)", highlight=False)


@state_app.command("prune")
def state_prune(
    config: ConfigOption = Path("config.yaml"),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="count what would go; remove nothing")
    ] = False,
    vacuum: Annotated[
        bool,
        typer.Option(
            "--vacuum",
            help="then rewrite a SQLite file so it shrinks from now on (once, for a store "
            "made before this version; stop the daemons first); PostgreSQL: VACUUM",
        ),
    ] = False,
    output: OutputOption = "text",
) -> None:
    """Remove finished history by `state.retention` (what is still needed always stays),
    in short batches, safe while a daemon runs; prints what went and the store's size."""
    from dataclasses import asdict

    from state import StoreError
    from state.retention import Retention
    from syncengine.prune import policy

    cfg = load(config)
    rules = policy(cfg)
    if rules is None:
        raise fail(
            f"{cfg.path}: state.retention is not set, so nothing may be pruned; add e.g. "
            "`retention: {keep_done: 400d, keep_runs: 90d}` under state:"
        )
    store = open_store(cfg)
    try:
        retention = Retention(store.engine)
        report = retention.prune(rules, dry_run=dry_run)
        if vacuum and not dry_run:
            retention.vacuum()
            report.size_after = retention.size()
    except StoreError as exc:
        raise fail(f"{cfg.path}: {exc}") from None
    finally:
        store.close()
    data = asdict(report) | {"setting": rules.setting}
    emit(data, output, lambda: _render_prune(data))


def _render_prune(data: dict[str, Any]) -> None:
    verb = "would prune" if data["dry_run"] else "pruned"
    out.print(
        f"{verb} under {data['setting']}: {data['deletions']:,} deletions, "
        f"{data['deliveries']:,} deliveries, {data['jobs']:,} jobs, {data['runs']:,} runs, "
        f"{data['notices']:,} alert notices ({data['batches']:,} batches, "
        f"{data['seconds']:.1f} s)",
        highlight=False,
    )
    before, after = data["size_before"], data["size_after"]
    if before is not None and after is not None:
        out.print(f"store size: {before:,} -> {after:,} bytes", highlight=False)


dlq_app = FlowingTyper(help="Dead letters: deliveries that gave up, kept with their reason.")
app.add_typer(dlq_app, name="dlq")
ErrorFilter = Annotated[
    str | None, typer.Option("--error", "-e", help="only those whose reason contains this")
]
TargetFilter = Annotated[str | None, typer.Option("--target", "-t", help="only this target")]


@contextmanager
def _dead_letters(
    config: Path, pipeline: str | None, target: str | None, error: str | None
) -> Iterator[tuple[Store, list[dict[str, Any]]]]:
    from syncengine.status import delivery_rows

    with opened(config, pipeline) as (_, store):
        yield (
            store,
            delivery_rows(store.dead_letters(pipeline=pipeline, target=target, error=error)),
        )


def _show(rows: list[dict[str, Any]], output: str, title: str) -> None:
    from syncengine.status import render_deliveries

    emit(rows, output, lambda: render_deliveries(rows, out, title))


@dlq_app.command("list")
def dlq_list(
    config: ConfigOption = Path("config.yaml"),
    pipeline: PipelineOption = None,
    target: TargetFilter = None,
    error: ErrorFilter = None,
    output: OutputOption = "text",
) -> None:
    """Dead deliveries with their reasons."""
    with _dead_letters(config, pipeline, target, error) as (_, rows):
        _show(rows, output, "dead letters")


@dlq_app.command("retry")
def dlq_retry(
    config: ConfigOption = Path("config.yaml"),
    pipeline: PipelineOption = None,
    target: TargetFilter = None,
    error: ErrorFilter = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show, change nothing")] = False,
    output: OutputOption = "text",
) -> None:
    """Send matching dead deliveries again on the next run (guards apply again).
    Malformed records the source sent are never retried: no target can act on them."""
    with _dead_letters(config, pipeline, target, error) as (store, rows):
        malformed = store.malformed_of([row["id"] for row in rows])
        if dry_run:
            _show([r for r in rows if r["id"] not in malformed], output, "would retry (dry run)")
            _refuse_malformed(len(malformed), config)
            return
        count = store.retry_dead([row["id"] for row in rows])
    _refuse_malformed(len(malformed), config)
    if malformed and not count:
        raise typer.Exit(1)
    out.print(f"{count} dead deliveries back to pending; the next run sends them")


def _refuse_malformed(count: int, config: Path) -> None:
    if count:
        err.print(
            f"not retried: {count} dead letter(s) of malformed records the source sent "
            "(see their reason); no retry can make a target act on them. Correct or remove "
            "the record in the source, then acknowledge them with "
            f"`syncengine dlq drop --error malformed -c {config}`",
            highlight=False,
            soft_wrap=True,
        )


@dlq_app.command("drop")
def dlq_drop(
    config: ConfigOption = Path("config.yaml"),
    pipeline: PipelineOption = None,
    target: TargetFilter = None,
    error: ErrorFilter = None,
) -> None:
    """Acknowledge matching dead deliveries: kept as `dropped`, never retried."""
    with _dead_letters(config, pipeline, target, error) as (store, rows):
        count = store.drop_dead([row["id"] for row in rows])
    out.print(f"{count} dead deliveries dropped (kept for the record, never retried)")


DEFAULT_PAGE = 50
deliveries_app = FlowingTyper(
    help="Every delivery (one deletion for one target) and where it stands."
)
app.add_typer(deliveries_app, name="deliveries")


@deliveries_app.command("list")
def deliveries_list(
    config: ConfigOption = Path("config.yaml"),
    pipeline: PipelineOption = None,
    target: TargetFilter = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status", "-s", help="only this status: failed, pending, held, dead, in_flight, done"
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            "-n",
            help="deliveries per page",
            callback=within(1, LARGEST - 1, f"a count from 1 to {LARGEST - 1}"),
        ),
    ] = DEFAULT_PAGE,
    after: Annotated[
        int,
        typer.Option(
            "--after",
            help="start after this delivery id (the last of the previous page)",
            callback=within(0, LARGEST, f"a delivery id from 0 to {LARGEST}"),
        ),
    ] = 0,
    output: OutputOption = "text",
) -> None:
    """Deliveries with their status, attempts, next attempt and reason (a failure, the
    guard's reason when held, why it died), oldest first, a page at a time."""
    from state import DeliveryStatus
    from syncengine.status import DeliveryPage, render_delivery_page, write_delivery_page

    if output not in ("text", "json"):
        raise fail(f"--output {output!r}: use text or json")
    known = [s.value for s in DeliveryStatus]
    if status is not None and status not in known:
        raise fail(f"--status {status!r}: use one of {', '.join(known)}")
    with opened(config, pipeline, target) as (cfg, store):
        if target is not None and pipeline is None:
            check_some_target(cfg, target)
        page = DeliveryPage(
            store, pipeline=pipeline, target=target, status=status, after=after, limit=limit
        )
        if output == "json":
            write_delivery_page(page, sys.stdout.write)
            return

        def next_command(last: int) -> str:
            given = (("-c", str(config)), ("-p", pipeline), ("-t", target), ("--status", status))
            words = ["syncengine", "deliveries", "list"]
            words += [f"{flag} {shlex.quote(value)}" for flag, value in given if value is not None]
            words += [f"--limit {limit}"] if limit != DEFAULT_PAGE else []
            return " ".join([*words, f"--after {last}"])

        render_delivery_page(page, out, next_command)


def check_some_target(config: Config, target: str) -> None:
    """A target named without its pipeline: some pipeline must have it."""
    names = sorted({t for pipe in config.pipelines.values() for t in pipe.targets})
    if target not in names:
        raise fail(
            f"{config.path}: no pipeline has a target {target!r}; targets: {', '.join(names)}"
        )


@app.command()
def follow(
    pipeline: RequiredPipeline,
    task_ids: Annotated[list[str], typer.Argument(help="task or execution ids to read")],
    config: ConfigOption = Path("config.yaml"),
) -> None:
    """Have a task-output pipeline read these tasks (DMM executions, Reltio tasks) once
    they finish, besides those its YAML lists and the jobs it follows."""
    from syncengine.engine.runtime import follow_tasks

    with opened(config, pipeline) as (cfg, store):
        try:
            followed = asyncio.run(follow_tasks(cfg, pipeline, store, task_ids))
        except ValueError as exc:
            raise fail(str(exc)) from None
    for stream, added in followed:
        if added:
            out.print(f"{pipeline} will read {stream} on its next run", highlight=False)
        else:
            out.print(f"{pipeline} already reads {stream}", highlight=False)


@app.command()
def trace(
    key: Annotated[str, typer.Argument(help="a record key, or a record's origin name")],
    config: ConfigOption = Path("config.yaml"),
    pipeline: PipelineOption = None,
    output: OutputOption = "text",
) -> None:
    """One record's whole path: where it was seen, what each target did with it, and
    the chained pipelines that carried it on."""
    from syncengine.status import collect_pruned, collect_trace, render_pruned, render_trace

    with opened(config, pipeline) as (_, store):
        trees = collect_trace(store, key, pipeline)
        pruned = collect_pruned(store, pipeline, trees)
    if not trees:
        if pruned and output == "json":
            emit({"found": [], "pruned": pruned}, output, lambda: None)
        elif pruned:
            out.print(f"no deletion with key or origin {key!r} in the journal", highlight=False)
            render_pruned(pruned, out, found=False)
        raise fail(f"no deletion with key or origin {key!r} in the journal", 1)

    def render() -> None:
        render_trace(trees, out)
        if pruned:
            render_pruned(pruned, out, found=True)

    emit([t.as_json() for t in trees], output, render)


def _report_names(config: Config, pipeline: str | None, target: str | None) -> None:
    """A pipeline or target no longer configured may still hold evidence in the store:
    reported, with a note, rather than refused."""
    if pipeline is not None and pipeline not in config.pipelines:
        err.print(f"note: {config.path} defines no pipeline {pipeline!r}; reporting what the "
                  "store holds for it", highlight=False, soft_wrap=True)  # fmt: skip
    pipes = [config.pipelines[pipeline]] if pipeline in config.pipelines else []
    if target is not None and not any(
        target in p.targets for p in pipes or config.pipelines.values()
    ):
        err.print(f"note: no configured pipeline has a target {target!r}; reporting what the "
                  "store holds for it", highlight=False, soft_wrap=True)  # fmt: skip


@contextmanager
def _report_stream(path: Path | None) -> Iterator[TextIO]:
    """UTF-8 text without newline translation (the CSV writer ends rows itself), to
    stdout or to `path`. A file is written beside it first and renamed when complete,
    so a report cut short is never taken for a whole one; it is created readable by
    its owner only (it holds personal identifiers)."""
    import io
    import os

    if path is None:
        stream = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
        try:
            yield stream
        finally:
            stream.flush()
            stream.detach()
        return
    partial = path.with_name(path.name + ".partial")
    try:
        handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise fail(f"--file {path}: cannot write it ({exc.strerror}); name a file in a "
                   "folder you can write to") from None  # fmt: skip
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            yield stream
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


@app.command()
def report(
    config: ConfigOption = Path("config.yaml"),
    since: Annotated[
        str | None,
        typer.Option(help="from this time (ISO 8601, UTC unless it names a zone) or age (30d)"),
    ] = None,
    until: Annotated[str | None, typer.Option(help="before this time or age; default: now")] = None,
    pipeline: PipelineOption = None,
    target: TargetFilter = None,
    key: Annotated[
        str | None,
        typer.Option("--key", "-k", help="a record key or origin, or a pattern with * and ?"),
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="csv or jsonl: a row per deletion and target, streamed; text or json: a "
            "summary per target",
        ),
    ] = "text",
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="write to this file (mode 600) instead of stdout"),
    ] = None,
) -> None:
    """Evidence of erasure: every deletion a source reported in a period and, per
    target, what became of it (deleted when and by which job, held, legal hold, dead,
    pending) with the lag from the report. It names people: handle it as personal data."""
    from state.evidence import Evidence, EvidenceFilter
    from state.models import utcnow
    from syncengine.report import parse_when, render_summary, summarize, write_csv, write_jsonl

    if output not in ("csv", "jsonl", "text", "json"):
        raise fail(f"--output {output!r}: use csv, jsonl, text or json")
    now = utcnow()
    bounds: list[datetime | None] = []
    for name, value in (("--since", since), ("--until", until)):
        try:
            bounds.append(None if value is None else parse_when(value, now))
        except ValueError as exc:
            raise fail(f"{name} {exc}") from None
    start, end = bounds
    if start is not None and end is not None and start >= end:
        raise fail(f"--since {since} is not before --until {until}: the period is empty; "
                   "swap them or widen it")  # fmt: skip
    cfg = load(config)
    _report_names(cfg, pipeline, target)
    store = open_store(cfg)
    try:
        rows = Evidence(store.engine).rows(EvidenceFilter(start, end, pipeline, target, key))
        with _report_stream(file) as stream:
            if output == "csv":
                write_csv(rows, stream)
            elif output == "jsonl":
                write_jsonl(rows, stream)
            else:
                summary = summarize(rows, start, end, now)
                if output == "json":
                    stream.write(json.dumps(summary.as_json(), indent=2) + "\n")
                else:
                    console = Console(file=stream, width=None if stream.isatty() else PIPE_WIDTH)
                    render_summary(summary, console)
    finally:
        store.close()
    if file is not None:
        err.print(f"report written to {file}", highlight=False)


jobs_app = FlowingTyper(help="Asynchronous jobs on targets (Reltio tasks, ADT and DMM jobs).")
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list(
    config: ConfigOption = Path("config.yaml"),
    all_jobs: Annotated[bool, typer.Option("--all", help="finished jobs too")] = False,
) -> None:
    """Jobs the engine follows (open ones by default)."""
    from syncengine.status import collect_jobs, render_jobs

    with opened(config) as (_, store):
        render_jobs(collect_jobs(store, open_only=not all_jobs), out, "jobs")


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[
        int,
        typer.Argument(
            help="the job number shown by status",
            callback=within(1, LARGEST, "a job number shown by `syncengine jobs list`"),
        ),
    ],
    config: ConfigOption = Path("config.yaml"),
) -> None:
    """Ask the target's API to stop a job, where the API can (DMM StopExecution).

    What the job did not delete is not sent again on its own: it ends dead, with
    the reason, for `dlq retry`. A job not yet submitted is cancelled here alone.
    """
    from syncengine.engine.cancel import CancelRefused, cancel_job
    from syncengine.logs import configure

    cfg = load(config)
    configure(cfg.logging.level, cfg.logging.format)
    try:
        done = cancel_job(cfg, open_store(cfg), job_id, str(config))
    except CancelRefused as exc:
        raise fail(str(exc), 1 if exc.failed else 2) from None
    if not done.submitted:
        out.print(
            f"job #{job_id} was never submitted: cancelled here; its {done.released} deliveries "
            f"are dead (send them again with `syncengine dlq retry -c {config}`)"
        )
        return
    out.print(
        f"job #{job_id} ({done.kind} {done.remote_id}): cancel requested; the next run records "
        "what it had deleted, and what it had not is dead (dlq retry sends it again)"
    )


def _sandbox_ports(given: list[str]) -> dict[str, int]:
    """`--port NAME=PORT` options as a mapping; a malformed one fails with the form."""
    ports: dict[str, int] = {}
    for item in given:
        name, sep, port = item.partition("=")
        if not sep or not port.strip().isdigit() or not 0 < int(port) < 65536:
            raise fail(f"--port {item!r}: write it as NAME=PORT, e.g. --port goose=9701")
        ports[name.strip()] = int(port)
    return ports


@app.command()
def sandbox(
    port: Annotated[
        list[str] | None,
        typer.Option(
            help="move an emulator to another port, as NAME=PORT (repeatable), e.g. "
            "goose=9701; the others keep their own (8701 and up, shown at start)",
            metavar="NAME=PORT",
        ),
    ] = None,
) -> None:
    """Start the emulators with demo data in the foreground; Ctrl-C stops them."""
    from syncengine.sandbox import Sandbox, SandboxError

    try:
        with Sandbox(_sandbox_ports(port or [])) as box:
            for line in box.describe():
                out.print(line, highlight=False)
            out.print("Ctrl-C to stop.")
            box.wait()
    except SandboxError as exc:
        raise fail(str(exc)) from None


def _write_example(path: Path) -> None:
    """An installed tool has no source tree to find config.yaml in: the example ships
    inside the package, and the demo writes it out once, for the user to read and edit."""
    from importlib.resources import files

    try:
        path.write_text(files("syncengine").joinpath("demo.yaml").read_text("utf-8"), "utf-8")
    except OSError as exc:
        raise fail(
            f"{path}: cannot write the example configuration ({exc.strerror}); "
            "run the demo from a folder you can write to, or pass -c FILE"
        ) from None
    out.print(f"No {path} here: wrote the shipped example to {path.resolve()}", highlight=False)


@app.command()
def demo(
    config: ConfigOption = Path("config.yaml"),
    port: Annotated[
        list[str] | None,
        typer.Option(
            help="move an emulator as `sandbox --port` does, NAME=PORT (repeatable); the "
            "configuration's URLs on that emulator's shipped port follow it",
            metavar="NAME=PORT",
        ),
    ] = None,
) -> None:
    """Start the sandbox, delete some records in Goose, run every pipeline once,
    show what reached the targets, stop the sandbox."""
    from syncengine.demo import run_demo
    from syncengine.logs import configure
    from syncengine.sandbox import Sandbox, SandboxError, default_ports

    if config == Path("config.yaml") and not config.exists():
        _write_example(config)
    ports = _sandbox_ports(port or [])
    shipped = default_ports()
    moved = {shipped[name]: new for name, new in ports.items() if name in shipped}
    cfg = load(config, moved)
    # The demo tells its own story on stdout; only warnings and errors are logged.
    configure("warning", cfg.logging.format)
    try:
        code = run_demo(cfg, out, run_once_fn=run_once, sandbox=Sandbox(ports))
    except SandboxError as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> Any:
    try:
        return app(args=argv)
    except Exception as exc:
        # Found after opening (a damaged page read mid-command): still one line, exit 2.
        # Only a command that loaded the store can raise it, so it is looked up, not
        # imported: `--help` stays free of the store.
        store_error = getattr(sys.modules.get("state.db"), "StoreError", None)
        if store_error is None or not isinstance(exc, store_error):
            raise
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    finally:
        # The process is about to end and free everything: a last walk of every
        # object by the collector at exit would take 0.1 s for nothing.
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
