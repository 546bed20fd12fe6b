"""Client CPU and memory of reading one Goose `deleted` answer, against `json.loads`.

    python -m bench.goose_parse [--sizes 20000 200000] [--rounds 5] [--chunk 65536]

The answer is written as the Goose emulator writes it (compact JSON, rows of
TABLE, RECORD_ID and SYKEY, the benchmark's ids) and read from memory, so only
the client's work is measured:

- `stream`: the source's reader (`connectors.goose.source.Answer`) fed the body in
  chunks as `aiter_bytes` hands them over: parsing, row checks, records, pages.
- `stream parse`: the parser alone (`AnswerParser`), no records.
- `json.loads`: the whole body parsed at once, then the same row -> record
  conversion and pages (what the bare contender's loop does, plus the records).
- `json.loads parse`: `json.loads` alone.

Prints, per size, the median of `--rounds` timed rounds in CPU microseconds per row
and each contender's ratio to `json.loads`, and the peak memory traced
(tracemalloc, a separate untimed round: tracing slows everything down) beyond the
body itself, which every contender is given already in memory. No thresholds:
figures to compare between two commits on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from bench.scenario import GOOSE_CODE, GOOSE_KEY, TABLE, natural_key, record_id
from connectors.goose.answer import AnswerParser
from connectors.goose.settings import GooseConnection, GooseSourceSettings
from connectors.goose.source import Answer, GooseSource
from connectors.kit.source import Pages

Contender = Callable[[bytes, int], int]
"""Reads a body in chunks of the given size; returns the rows (or records) it got."""


def answer_body(count: int) -> bytes:
    """A DELETED answer of `count` rows, byte for byte what the emulator sends."""
    rows = [
        {"TABLE": TABLE, "RECORD_ID": record_id(n), "SYKEY": natural_key(n)} for n in range(count)
    ]
    answer = {"status": "OK", "result": {"total": count, "data": rows}}
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()


def goose_source() -> GooseSource:
    connection = GooseConnection.model_validate(
        {
            "type": "goose",
            "url": "http://127.0.0.1:9/deleted/",
            "code": GOOSE_CODE,
            "key": GOOSE_KEY,
        }
    )
    settings = GooseSourceSettings.model_validate({"tables": [TABLE], "from": "latest"})
    return GooseSource("goose", connection, settings)


def contenders(source: GooseSource) -> dict[str, Contender]:
    def stream(body: bytes, chunk: int) -> int:
        answer = Answer(source, "bench", TABLE)
        records = 0
        for start in range(0, len(body), chunk):
            records += sum(len(page.records) for page in answer.feed(body[start : start + chunk]))
        records += sum(len(page.records) for page in answer.close(len(body)))
        if answer.error() is not None:
            raise RuntimeError(f"the answer was refused: {answer.error()}")
        records += sum(len(page.records) for page in answer.held())
        return records + len(answer.pages.records)

    def stream_parse(body: bytes, chunk: int) -> int:
        parser = AnswerParser()
        rows = 0
        for start in range(0, len(body), chunk):
            rows += len(parser.feed(body[start : start + chunk]))
        return rows + len(parser.close())

    def loads(body: bytes, chunk: int) -> int:
        pages = Pages()
        records = 0
        for row in json.loads(body)["result"]["data"]:
            page = pages.add(source._record(TABLE, row))
            records += len(page.records) if page is not None else 0
        return records + len(pages.records)

    def loads_parse(body: bytes, chunk: int) -> int:
        return len(json.loads(body)["result"]["data"])

    return {
        "stream": stream,
        "stream parse": stream_parse,
        "json.loads": loads,
        "json.loads parse": loads_parse,
    }


def timed(read: Contender, body: bytes, chunk: int, count: int) -> float:
    """CPU microseconds per row of one reading: the process's CPU time, not the wall
    clock, so other work on a shared machine weighs less on the figure."""
    started = time.process_time()
    got = read(body, chunk)
    elapsed = time.process_time() - started
    if got != count:
        raise RuntimeError(f"read {got} rows of {count}")
    return elapsed / count * 1e6


def traced_peak(read: Contender, body: bytes, chunk: int) -> int:
    """Peak bytes allocated while reading, beyond what was allocated before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        read(body, chunk)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="bytes per feed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[int, dict[str, tuple[float, int]]]:
    """Prints the table; returns {size: {contender: (median µs/row, peak bytes)}}."""
    args = parse_args(argv)
    source = goose_source()
    reads = contenders(source)
    figures: dict[int, dict[str, tuple[float, int]]] = {}
    started = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"goose_parse {started}: chunk {args.chunk} bytes, {args.rounds} rounds, medians")
    try:
        for size in args.sizes:
            body = answer_body(size)
            times: dict[str, list[float]] = {name: [] for name in reads}
            for _ in range(args.rounds):
                for name, read in reads.items():
                    times[name].append(timed(read, body, args.chunk, size))
            figures[size] = {
                name: (statistics.median(times[name]), traced_peak(read, body, args.chunk))
                for name, read in reads.items()
            }
            reference = figures[size]["json.loads"][0]
            print(f"\n{size:,} rows, body {len(body) / 2**20:.1f} MiB")
            print(f"  {'contender':<18} {'us/row':>8} {'vs json.loads':>14} {'peak MiB':>9}")
            for name, (per_row, peak) in figures[size].items():
                ratio = per_row / reference if reference else float("nan")
                print(f"  {name:<18} {per_row:>8.2f} {ratio:>13.2f}x {peak / 2**20:>9.2f}")
    finally:
        asyncio.run(source.aclose())
    return figures


if __name__ == "__main__":
    main()
