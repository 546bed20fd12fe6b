"""Hostile answers run through the parsers in a child process, whose peak memory is
measured: a row nested 100,000 deep, strings and numbers of tens of megabytes, a row
of millions of tiny values. Each is a rejected row; the rows around them come through,
and the child's peak RSS stays under 300 MB (it used to grow to 23 GB and be killed)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PEAK_RSS_BYTES = 300 * 1024 * 1024
VM_HWM = (
    "def vm_hwm():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            return int(line.split()[1]) * 1024\n"
    "    raise RuntimeError('no VmHWM')\n"
)
"""The child's own peak RSS. Not getrusage's ru_maxrss: Linux keeps across exec the
high-water mark of the image it replaced, which for a child spawned (vfork) by a
pytest worker is the worker's own peak, hundreds of MB after a long run."""
ADDRESS_SPACE = 2 * 1024 * 1024 * 1024
"""Cap on the child's memory, so code that runs away fails fast instead of taking
down the machine."""

GOOSE_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
    {vm_hwm}
    from connectors.goose.answer import AnswerParser, BadRow

    def good(n):
        return b'{{"RECORD_ID":"ok-%d"}}' % n

    def body():
        mega = 1024 * 1024
        yield b'{{"status":"OK","result":{{"total":8,"data":[' + good(1) + b","
        yield b'{{"RECORD_ID":"deep","v":' + b"[" * 100_000 + b"]" * 100_000 + b"}},"
        yield good(2) + b',{{"RECORD_ID":"string","v":"'
        for _ in range(60):
            yield b"x" * mega
        yield b'"}},' + good(3) + b',{{"RECORD_ID":"number","v":'
        for _ in range(60):
            yield b"7" * mega
        yield b"}}," + good(4) + b',{{"RECORD_ID":"tiny","v":['
        for _ in range(20):
            yield b"{{}}," * (mega // 3)
        yield b"0]}}]}}}}"

    parser = AnswerParser()
    rows = []
    for part in body():
        for start in range(0, len(part), 65536):
            rows += parser.feed(part[start : start + 65536])
    rows += parser.close()
    out = [
        {{"bad": row.fields.get("RECORD_ID"), "reason": row.reason}}
        if isinstance(row, BadRow) else row
        for row in rows
    ]
    peak = vm_hwm()
    print(json.dumps({{"rows": out, "peak": peak}}))
    """
)


def run_child(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", code.format(cap=ADDRESS_SPACE, vm_hwm=VM_HWM)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_hostile_goose_answer_is_read_in_bounded_memory_with_its_good_rows() -> None:
    result = run_child(GOOSE_CHILD)
    rows = result["rows"]
    assert isinstance(rows, list)
    assert [row.get("RECORD_ID") or row["bad"] for row in rows] == [
        "ok-1",
        "deep",
        "ok-2",
        "string",
        "ok-3",
        "number",
        "ok-4",
        "tiny",
    ]
    reasons = {row["bad"]: row["reason"] for row in rows if "bad" in row}
    assert "nested more than" in reasons["deep"]
    assert "a string longer than" in reasons["string"]
    assert "a number written with more than" in reasons["number"]
    assert "a row larger than" in reasons["tiny"]
    peak = result["peak"]
    assert isinstance(peak, int) and peak < PEAK_RSS_BYTES, peak


DMM_CHILD = textwrap.dedent(
    """
    import json, resource
    resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
    {vm_hwm}
    from connectors.kit.spooled_json import Spooled, SpoolingParser

    mega = 1024 * 1024

    def read(parts):
        parser = SpoolingParser()
        try:
            for part in parts:
                for start in range(0, len(part), 65536):
                    parser.feed(part[start : start + 65536])
            value = parser.close()
            return {{k: "spooled" if isinstance(v, Spooled) else v for k, v in value.items()}}
        except ValueError as exc:
            return str(exc)
        finally:
            parser.discard()

    head = b'{{"Status":"Complete","Success":true,'
    out = {{
        "deep": read([head + b'"Report":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"]),
        "small": read([head + b'"Report":[', *[b"1," * (mega // 2)] * 60, b"1]}}"]),
        "logs": read([head + b'"Logs":"', *[b"QUJD" * (mega // 4)] * 150, b'"}}']),
    }}
    out["peak"] = vm_hwm()
    print(json.dumps(out))
    """
)


def test_a_hostile_dmm_answer_is_refused_in_bounded_memory_and_a_long_log_still_read() -> None:
    result = run_child(DMM_CHILD)
    assert "nested more than 64 levels" in str(result["deep"])
    assert "bytes of small fields" in str(result["small"])
    assert result["logs"] == {"Status": "Complete", "Success": True, "Logs": "spooled"}
    peak = result["peak"]
    assert isinstance(peak, int) and peak < PEAK_RSS_BYTES, peak
