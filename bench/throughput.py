"""Goose -> Mongoose at scale: syncengine against a bare httpx loop, in the same run.

    python -m bench.throughput [--sizes 2000,20000,100000] [--rounds 3] [--max-seconds 900]
                               [--latency 0.02] [--set concurrency=4] [--memory]

The emulators run in a process of their own; each contender runs as a child
process (syncengine as the real `syncengine run --once` with a fresh SQLite
state, the bare loop as `python -m bench.bare`), against emulators reset and
seeded the same way before each run, in an order rotated every round. What a
child cost comes from `wait4`; what it asked for, from the emulators' request
logs. `--set name=value` adds a contender: syncengine with that setting in its
target (shown "n/a (setting not supported)" while the configuration refuses
it). Mongoose holds a row for every record, so every run really deletes.
`--memory`: one round at 20,000, 200,000 and 1,000,000 deletions, and each
contender's peak RSS at the largest size over its peak at the smallest: what a
run keeps per delivery shows as a ratio above 1.

Figures to compare within one run on one machine; never a threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.child import ChildResult, run_child
from bench.figures import (
    BARE,
    LEGEND,
    Measurement,
    Row,
    estimate_round,
    importtime_seconds,
    render_flatness,
    render_table,
    rotate,
    summarize,
)
from bench.scenario import config_text, parse_setting

ROOT = Path(__file__).resolve().parent.parent
SYNCENGINE = "syncengine"
DEFAULT_SIZES = (2000, 20000, 100000)
MEMORY_SIZES = (20_000, 200_000, 1_000_000)
IMPORT_RUN_RECORDS = 100
VALIDATE_TIMEOUT = 120.0


class BenchError(Exception):
    """The harness itself cannot go on (the emulators did not start)."""


@dataclass(frozen=True)
class Contender:
    name: str
    settings: dict[str, Any] | None = None
    """Target settings for a syncengine contender; None for the bare loop."""
    unsupported: str = ""


@dataclass(frozen=True)
class Urls:
    goose: str
    mongoose: str
    control: str


@dataclass
class Report:
    rows: list[Row]
    imports: list[tuple[str, float]]
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def child_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SYNCENGINE_") and k != "PYTHONPROFILEIMPORTTIME"
    }


def syncengine_argv() -> list[str]:
    """The installed console script next to this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name(SYNCENGINE)
    return [str(script)] if script.exists() else [sys.executable, "-m", SYNCENGINE]


@contextmanager
def emulators() -> Iterator[Urls]:
    with subprocess.Popen(
        [sys.executable, "-m", "bench.serve"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise BenchError("the emulator process (python -m bench.serve) did not start")
            urls = json.loads(line)
            yield Urls(urls["goose"], urls["mongoose"], urls["control"])
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


class Bench:
    def __init__(
        self, urls: Urls, workdir: Path, batch: int, latency: float, rows: bool = True
    ) -> None:
        """`rows`: Mongoose holds a row for every record (else one no lookup finds, for
        a harness that only needs the Goose answer)."""
        self.urls = urls
        self.workdir = workdir
        self.batch = batch
        self.latency = latency
        self.rows = rows
        self.control = httpx.Client(base_url=urls.control, timeout=1800)
        self._runs = 0

    def close(self) -> None:
        self.control.close()

    def new_round(self, records: int) -> None:
        body = {"records": records, "rows": self.rows, "latency": self.latency}
        self.control.post("/round", json=body).raise_for_status()

    def tally(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.control.get("/tally").raise_for_status().json()
        return answer

    def write_config(self, settings: dict[str, Any] | None) -> Path:
        self._runs += 1
        where = self.workdir / f"run-{self._runs}"
        where.mkdir()
        config = where / "config.yaml"
        text = config_text(
            self.urls.goose, self.urls.mongoose, where / "state.db", self.batch, settings
        )
        config.write_text(text)
        return config

    def supported(self, contender: Contender) -> Contender:
        """A setting the configuration refuses makes its contender "n/a", not a crash."""
        config = self.write_config(contender.settings)
        result = run_child(
            [*syncengine_argv(), "validate", "-c", str(config)],
            VALIDATE_TIMEOUT,
            cwd=ROOT,
            env=child_env(),
        )
        if result.returncode == 0:
            return contender
        errors = [line.strip() for line in result.stderr.splitlines() if "error" in line]
        reason = errors[0] if errors else f"validate exited {result.returncode}"
        return Contender(contender.name, contender.settings, reason)

    def run(self, contender: Contender, size: int, turn: int, timeout: float) -> Measurement:
        self.new_round(size)
        if contender.settings is None:
            return self._bare(size, turn, timeout)
        return self._syncengine(contender, size, turn, timeout)

    def _bare(self, size: int, turn: int, timeout: float) -> Measurement:
        argv = [sys.executable, "-m", "bench.bare", "--goose", self.urls.goose]
        argv += ["--mongoose", self.urls.mongoose, "--batch", str(self.batch)]
        result = run_child(argv, timeout, cwd=ROOT, env=child_env())
        tally = self.tally()
        job: float | None = None
        handled = 0
        problems = self._problems(result, tally)
        if not result.timed_out and result.returncode == 0:
            answer = json.loads(result.stdout.strip().splitlines()[-1])
            job = float(answer["job_seconds"])
            handled = int(answer["deleted"]) + int(answer["absent"])
            if handled != size:
                problems.append(f"handled {handled} of {size}")
        return self._measurement(BARE, size, turn, result, tally, job, problems)

    def _syncengine(
        self, contender: Contender, size: int, turn: int, timeout: float
    ) -> Measurement:
        config = self.write_config(contender.settings)
        argv = [*syncengine_argv(), "run", "--once", "-c", str(config)]
        result = run_child(argv, timeout, cwd=ROOT, env=child_env())
        tally = self.tally()
        problems = self._problems(result, tally)
        job: float | None = None
        if not result.timed_out:
            run = last_run(config.parent / "state.db")
            if run is None:
                problems.append("no run in its store")
            else:
                job = run["seconds"]
                if run["delivered"] != size or run["outcome"] != "ok":
                    problems.append(f"run {run['outcome']}, delivered {run['delivered']}")
        return self._measurement(contender.name, size, turn, result, tally, job, problems)

    def _problems(self, result: ChildResult, tally: dict[str, Any]) -> list[str]:
        if result.timed_out:
            return []
        problems = []
        if result.returncode != 0:
            tail = result.stderr.strip().splitlines()[-1:] or [""]
            problems.append(f"exit {result.returncode}: {tail[0][:200]}")
        left, expected = tally["rows_left"], 0 if self.rows else 1
        if left != expected:
            problems.append(f"{left - expected} Mongoose rows left")
        failed = tally["requests"].get("failed", 0)
        if failed:
            problems.append(f"{failed} requests failed")
        return problems

    def _measurement(
        self,
        name: str,
        size: int,
        turn: int,
        result: ChildResult,
        tally: dict[str, Any],
        job: float | None,
        problems: list[str],
    ) -> Measurement:
        requests = {k: v for k, v in tally["requests"].items() if k != "failed"}
        if result.timed_out:
            note = (
                f"timed out after {result.seconds:.0f} s, "
                f"peak RSS so far {result.peak_rss_mb:.0f} MB"
            )
        else:
            note = "; ".join(problems)
        return Measurement(
            contender=name,
            size=size,
            turn=turn,
            process_seconds=result.seconds,
            cpu_seconds=result.cpu_seconds,
            peak_rss_mb=result.peak_rss_mb,
            requests=requests,
            job_seconds=job,
            ok=not result.timed_out and not problems,
            note=note,
        )

    def import_times(self, repeats: int) -> list[tuple[str, float]]:
        """Start-up as `python -X importtime` counts it (the sum of every module's own
        time), and the wall time of `syncengine --help`; medians of `repeats` (0: none)."""
        if repeats < 1:
            return []
        env = {**child_env(), "PYTHONPROFILEIMPORTTIME": "1"}
        cli, once, helps = [], [], []
        for _ in range(repeats):
            result = run_child(
                [sys.executable, "-c", "import syncengine.cli"], 120, cwd=ROOT, env=env
            )
            cli.append(importtime_seconds(result.stderr))
            self.new_round(IMPORT_RUN_RECORDS)
            config = self.write_config({})
            result = run_child(
                [*syncengine_argv(), "run", "--once", "-c", str(config)], 300, cwd=ROOT, env=env
            )
            once.append(importtime_seconds(result.stderr))
            helps.append(run_child([*syncengine_argv(), "--help"], 120, cwd=ROOT).seconds)
        return [
            ('import time, python -X importtime -c "import syncengine.cli"', median(cli)),
            (
                f"import time, every import of a real `syncengine run --once` "
                f"({IMPORT_RUN_RECORDS} deletions)",
                median(once),
            ),
            ("wall time, syncengine --help", median(helps)),
        ]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def last_run(db: Path) -> dict[str, Any] | None:
    """The engine's own account of its run: start and finish as the store recorded them."""
    if not db.exists():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        found = conn.execute(
            "SELECT started_at, finished_at, delivered, outcome FROM run "
            "WHERE kind = 'run' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    if found is None or found[1] is None:
        return None
    started, finished = (datetime.fromisoformat(str(v)) for v in found[:2])
    return {
        "seconds": (finished - started).total_seconds(),
        "delivered": found[2],
        "outcome": found[3],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument(
        "--sizes",
        help="records per run, comma-separated (default 2000,20000,100000; with --memory "
        "20000,200000,1000000)",
    )
    parser.add_argument("--rounds", type=int, help="rounds per size (default 3; --memory 1)")
    parser.add_argument("--batch", type=int, default=100, help="the target's batch_size")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=900.0,
        help="budget for the whole benchmark; rounds that would exceed it are skipped, and said so",
    )
    parser.add_argument(
        "--child-timeout",
        type=float,
        help="seconds one contender may run (default: what is left of the "
        "budget); a child past it is killed and reported with its peak RSS "
        "so far",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds every Goose and Mongoose call waits in the emulators",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="adds the contender 'syncengine NAME=VALUE': that setting in its "
        "target block (repeat to combine settings)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="one round per size (default 20000,200000,1000000) and each contender's "
        "peak RSS at the largest size over its peak at the smallest",
    )
    parser.add_argument(
        "--import-repeats",
        type=int,
        default=3,
        help="start-up measurements, medians of this many (0 skips them)",
    )
    args = parser.parse_args(argv)
    try:
        args.settings = dict(parse_setting(text) for text in args.set)
        default = MEMORY_SIZES if args.memory else DEFAULT_SIZES
        args.size_list = [int(s) for s in args.sizes.split(",")] if args.sizes else list(default)
    except ValueError as exc:
        parser.error(str(exc))
    if args.rounds is None:
        args.rounds = 1 if args.memory else 3
    if args.rounds < 1 or args.batch < 1 or any(s < 1 for s in args.size_list):
        parser.error("--rounds, --batch and every size must be at least 1")
    return args


def contenders(settings: dict[str, Any]) -> list[Contender]:
    found = [Contender(SYNCENGINE, {}), Contender(BARE)]
    if settings:
        label = " ".join(f"{k}={json.dumps(v)}" for k, v in settings.items())
        found.append(Contender(f"{SYNCENGINE} {label}", settings))
    return found


def measure(args: argparse.Namespace, bench: Bench, deadline: float) -> Report:
    report = Report(rows=[], imports=bench.import_times(args.import_repeats))
    everyone = [c if not c.settings else bench.supported(c) for c in contenders(args.settings)]
    for c in everyone:
        if c.unsupported:
            report.notes.append(f"{c.name}: n/a, the configuration refuses it: {c.unsupported}")
    active = [c for c in everyone if not c.unsupported]
    measurements: list[Measurement] = []
    seconds: dict[int, list[float]] = {}
    for size in args.size_list:
        for turn in range(args.rounds):
            left = deadline - time.monotonic()
            guess = estimate_round(size, seconds)
            if left <= 0 or (guess is not None and guess > left):
                which = "no round" if turn == 0 else f"rounds {turn + 1}-{args.rounds} not"
                report.notes.append(
                    f"{size:,}: {which} run: a round takes about {guess or 0:.0f} s and "
                    f"{max(left, 0):.0f} s are left of --max-seconds {args.max_seconds:.0f}"
                )
                break
            began = time.monotonic()
            timed_out = False
            for contender in rotate(active, turn):
                timeout = deadline - time.monotonic()
                if args.child_timeout is not None:
                    timeout = min(timeout, args.child_timeout)
                if timeout < 1:
                    report.notes.append(
                        f"{size:,}: {contender.name} not run in round {turn + 1}, "
                        "the budget is spent"
                    )
                    timed_out = True
                    continue
                m = bench.run(contender, size, turn, timeout)
                measurements.append(m)
                timed_out = timed_out or "timed out" in m.note
                print(
                    f"  {size:,} round {turn + 1}/{args.rounds}: {m.contender} "
                    f"{m.process_seconds:.1f} s{' (' + m.note + ')' if m.note else ''}",
                    file=sys.stderr,
                    flush=True,
                )
                if m.note and not m.ok and "timed out" not in m.note:
                    report.failures.append(f"{m.contender} at {size:,}, round {turn + 1}: {m.note}")
            seconds.setdefault(size, []).append(time.monotonic() - began)
            if timed_out and args.child_timeout is None:
                report.notes.append(f"{size:,}: the budget ran out during round {turn + 1}")
                break
    for size in args.size_list:
        for c in everyone:
            if c.unsupported:
                row = Row(c.name, size, "0", note="n/a (setting not supported)")
            else:
                row = summarize(measurements, c.name, size, args.rounds)
            report.rows.append(row)
    return report


def render(args: argparse.Namespace, report: Report) -> str:
    mode = "every record's row is in Mongoose"
    lines = [
        f"Goose -> Mongoose, batch {args.batch}, emulator latency {args.latency * 1000:g} ms, "
        f"{args.rounds} round(s) per size, order rotated each round; {mode}",
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        "",
    ]
    lines += [f"{what}: {value:.2f} s" for what, value in report.imports]
    lines += ["", render_table(report.rows), "", LEGEND]
    if args.memory:
        lines += ["", *render_flatness(report.rows)]
    if report.notes:
        lines += ["", *report.notes]
    if report.failures:
        lines += ["", "FAILED (not counted in the figures):", *report.failures]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> Report:
    args = parse_args(argv)
    deadline = time.monotonic() + args.max_seconds
    with emulators() as urls, tempfile.TemporaryDirectory(prefix="syncengine-bench-") as tmp:
        bench = Bench(urls, Path(tmp), args.batch, args.latency)
        try:
            report = measure(args, bench, deadline)
        finally:
            bench.close()
    print(render(args, report), flush=True)
    return report


if __name__ == "__main__":
    sys.exit(1 if main().failures else 0)
