"""The benchmark's arithmetic and its table: pure functions, no clock, no process.

Ratios are taken within one round (both contenders ran minutes apart on the
same machine under the same load), then the median of those ratios is
reported: on a shared machine a ratio of medians taken at different times
would mix in whatever else was running.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

BARE = "bare"
KINDS = ("goose", "token", "load", "delete")
"""Request kinds in the table's order: Goose `deleted`, Mongoose security token,
LoadCollection, DeleteItems."""
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+\d+\s+\|")

T = TypeVar("T")


def request_kind(path: str) -> str:
    if path.rstrip("/").endswith("/deleted"):
        return "goose"
    if "/token/" in path:
        return "token"
    if path.endswith("/adv"):
        return "load"
    if path.endswith("/deleteitems"):
        return "delete"
    return "other"


def rotate(items: Sequence[T], turn: int) -> list[T]:
    """Round `turn`'s running order: each contender goes first in turn, so none is
    always the one running on a machine warmed (or loaded) by the other."""
    if not items:
        return []
    shift = turn % len(items)
    return [*items[shift:], *items[:shift]]


def importtime_seconds(stderr: str) -> float:
    """The total of `python -X importtime`: the sum of every module's own time."""
    micros = sum(int(m.group(1)) for line in stderr.splitlines() if (m := _IMPORT_LINE.match(line)))
    return micros / 1e6


GROWTH = 1.5
"""What a round costs beyond linear when the size grows: the journal's indexes and
the emulators' tables are bigger (the Mongoose emulator indexes its lookups, so a
lookup no longer costs more at a larger size; 200,000 records took about 8x as long
as 20,000 on 2 cores)."""


def estimate_round(size: int, seconds: Mapping[int, Sequence[float]]) -> float | None:
    """How long a round at `size` should take: the slowest round already run at that
    size, else the nearest smaller size's slowest scaled linearly plus GROWTH; None
    with nothing to go on. Each child also gets what is left of the budget as its
    timeout, so a wrong guess costs a killed run, never an overrun."""
    if seconds.get(size):
        return max(seconds[size])
    smaller = [s for s in seconds if s < size and seconds[s]]
    if not smaller:
        return None
    nearest = max(smaller)
    return max(seconds[nearest]) * size / nearest * GROWTH


@dataclass(frozen=True)
class Measurement:
    """One contender's run in one round."""

    contender: str
    size: int
    turn: int
    process_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    requests: Mapping[str, int]
    job_seconds: float | None = None
    ok: bool = True
    note: str = ""

    @property
    def job_rate(self) -> float | None:
        return self.size / self.job_seconds if self.job_seconds else None

    @property
    def process_rate(self) -> float:
        return self.size / self.process_seconds if self.process_seconds else 0.0


@dataclass
class Row:
    """One line of the table: a contender at a size, medians over its good rounds."""

    contender: str
    size: int
    rounds: str
    job_rate: float | None = None
    process_rate: float | None = None
    cpu_seconds: float | None = None
    peak_rss_mb: float | None = None
    requests: dict[str, int] = field(default_factory=dict)
    vs_bare_process: float | None = None
    vs_bare_job: float | None = None
    vs_bare_cpu: float | None = None
    note: str = ""


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(measurements: Sequence[Measurement], contender: str, size: int, planned: int) -> Row:
    """Medians of `contender`'s good rounds at `size`, each ratio against bare taken
    within the same round. With no good round, the last failed one is shown as it was
    (a timed-out run still has a peak RSS so far and the requests it made)."""
    mine = [m for m in measurements if m.contender == contender and m.size == size]
    good = [m for m in mine if m.ok]
    rounds = f"{len(good)}" if len(good) == planned else f"{len(good)} of {planned}"
    if not good:
        last = mine[-1] if mine else None
        return Row(
            contender,
            size,
            rounds,
            cpu_seconds=last.cpu_seconds if last else None,
            peak_rss_mb=last.peak_rss_mb if last else None,
            requests=dict(last.requests) if last else {},
            note=last.note if last else "not run",
        )
    row = Row(
        contender,
        size,
        rounds,
        job_rate=_median(m.job_rate for m in good),
        process_rate=_median(m.process_rate for m in good),
        cpu_seconds=_median(m.cpu_seconds for m in good),
        peak_rss_mb=_median(m.peak_rss_mb for m in good),
        requests={
            k: round(statistics.median(m.requests.get(k, 0) for m in good)) for k in _kinds(good)
        },
        note="; ".join(dict.fromkeys(m.note for m in mine if m.note)),
    )
    if contender != BARE:
        bare = {m.turn: m for m in measurements if m.contender == BARE and m.size == size and m.ok}
        pairs = [(m, bare[m.turn]) for m in good if m.turn in bare]
        row.vs_bare_process = _median(_ratio(m.process_rate, b.process_rate) for m, b in pairs)
        row.vs_bare_job = _median(_ratio(m.job_rate, b.job_rate) for m, b in pairs)
        row.vs_bare_cpu = _median(_ratio(m.cpu_seconds, b.cpu_seconds) for m, b in pairs)
    return row


def _kinds(measurements: Iterable[Measurement]) -> list[str]:
    seen = {k for m in measurements for k in m.requests}
    return [*KINDS, *sorted(seen - set(KINDS))]


def _ratio(mine: float | None, bare: float | None) -> float | None:
    return mine / bare if mine is not None and bare else None


def requests_text(requests: Mapping[str, int]) -> str:
    text = "/".join(str(requests.get(k, 0)) for k in KINDS)
    extra = [f"{n} {k}" for k, n in sorted(requests.items()) if k not in KINDS and n]
    return f"{text} ({', '.join(extra)})" if extra else text


HEADERS = (
    "contender",
    "size",
    "rounds",
    "rec/s job",
    "rec/s process",
    "client CPU s",
    "peak RSS MB",
    "requests g/t/l/d",
    "ratio process",
    "ratio job",
    "ratio CPU",
    "note",
)
LEGEND = (
    "rec/s job: records / the job's own time (syncengine: its run's start to finish in the "
    "store; bare: first call to last answer). rec/s process: records / the child's wall time, "
    "start-up included. client CPU s, peak RSS MB: the contender's process alone (wait4 "
    "rusage). requests g/t/l/d: Goose deleted / Mongoose token / LoadCollection / DeleteItems, "
    "from the emulators' logs. ratio: this contender / bare, taken within each round, median "
    "over rounds."
)
_LEFT = {0, 2, len(HEADERS) - 1}


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def row_cells(row: Row) -> list[str]:
    return [
        row.contender,
        f"{row.size:,}",
        row.rounds,
        _num(row.job_rate, ",.0f"),
        _num(row.process_rate, ",.0f"),
        _num(row.cpu_seconds, ".1f"),
        _num(row.peak_rss_mb, ".0f"),
        requests_text(row.requests) if row.requests else "-",
        _times(row.vs_bare_process),
        _times(row.vs_bare_job),
        _times(row.vs_bare_cpu),
        row.note,
    ]


def flatness(rows: Sequence[Row], contender: str) -> tuple[list[tuple[int, float]], float | None]:
    """`contender`'s peak RSS per size, smallest size first, and the peak at the largest
    size over the peak at the smallest (None with fewer than two sizes measured)."""
    peaks = sorted(
        (r.size, r.peak_rss_mb) for r in rows if r.contender == contender and r.peak_rss_mb
    )
    if len(peaks) < 2:
        return peaks, None
    return peaks, peaks[-1][1] / peaks[0][1]


def render_flatness(rows: Sequence[Row]) -> list[str]:
    """One line per contender: its peak RSS at each size and the flat-ness ratio, which
    is 1.00x when nothing is kept per delivery (a peak "so far" of a child killed at
    its timeout is shown as such: a lower bound)."""
    lines = ["peak RSS per size (flat-ness: peak at the largest size / peak at the smallest):"]
    for contender in dict.fromkeys(r.contender for r in rows):
        peaks, ratio = flatness(rows, contender)
        if not peaks:
            continue
        cut = {r.size for r in rows if r.contender == contender and "timed out" in r.note}
        sizes = ", ".join(
            f"{mb:.0f} MB at {size:,}{' (so far)' if size in cut else ''}" for size, mb in peaks
        )
        lines.append(f"  {contender}: {sizes}; flat-ness {_times(ratio)}")
    return lines


def render_table(rows: Sequence[Row]) -> str:
    """A plain table, one line per row; a row without figures says why in its note
    (not supported, timed out, incomplete)."""
    cells = [list(HEADERS), *(row_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    lines = []
    for line in cells:
        parts = [
            c.ljust(w) if i in _LEFT else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)
