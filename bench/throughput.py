"""Throughput of one pipeline run, Goose -> Mongoose, against the emulators on loopback.

Prints deletions per second for the pull (journal) and push (delete) phases,
for a few batch sizes, and the ratio between them: figures to compare within
one run on one machine, never thresholds.

    .venv/bin/python bench/throughput.py [--records 2000] [--batch 1 --batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from connectors.emulator_kit import serve
from connectors.goose.emulator import GooseEmulator
from connectors.mongoose.emulator import MongooseEmulator
from state import Store
from syncengine.config import parse_config
from syncengine.engine import StopToken, build_runtime, run_pipeline
from syncengine.logs import configure

KEY = "bench-key-000000"
PASSWORD = "bench-password"


@dataclass
class Result:
    records: int
    batch: int
    seconds: float
    delivered: int

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds else float("inf")


def config_text(goose: str, mongoose: str, db: Path, batch: int) -> str:
    return f"""
state: {{url: "sqlite:///{db}"}}
connections:
  goose: {{type: goose, url: "{goose}/deleted/", code: B01, key: "{KEY}", calls_per_second: 1000}}
  erp: {{type: mongoose, url: "{mongoose}/IDORequestService/MGRESTService.svc", config: DEMO,
        user: sync, password: "{PASSWORD}"}}
pipelines:
  bench:
    schedule: {{every: 60s}}
    source: {{connection: goose, tables: [CON_TRO], from: latest}}
    targets:
      erp: {{connection: erp, ido: UserNames, key: "{{SYKEY}}", lookup: {{property: Username}},
             batch_size: {batch}}}
"""


def measure(records: int, batch: int) -> Result:
    goose = GooseEmulator(timezone="UTC")
    mongoose = MongooseEmulator(config="DEMO", users={"sync": PASSWORD})
    ids = [f"0-{i}" for i in range(records)]
    goose.seed({"B01": [KEY]}, {"CON_TRO": [{"RECORD_ID": i, "SYKEY": f"u{i}"} for i in ids]})
    mongoose.seed({"UserNames": [{"Username": f"u{i}"} for i in ids]})
    goose.delete("CON_TRO", ids)
    with (
        serve(goose.app) as g,
        serve(mongoose.app) as m,
        tempfile.TemporaryDirectory() as tmp,
    ):
        config = parse_config(config_text(g.url, m.url, Path(tmp) / "s.db", batch), "bench", {})
        store = Store.open(config.state.url)
        runtime = build_runtime(config, store)

        async def go() -> int:
            try:
                report = await run_pipeline(store, runtime.pipelines["bench"], StopToken())
                return sum(t.done for t in report.targets.values())
            finally:
                await runtime.aclose()

        began = time.perf_counter()
        delivered = asyncio.run(go())
        took = time.perf_counter() - began
    return Result(records, batch, took, delivered)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--batch", type=int, action="append")
    args = parser.parse_args(argv)
    configure("error", "console")
    results = [measure(args.records, batch) for batch in (args.batch or [1, 20, 100])]
    print(f"{'records':>8} {'batch':>6} {'seconds':>8} {'deletions/s':>12} {'delivered':>10}")
    for r in results:
        print(
            f"{r.records:>8} {r.batch:>6} {r.seconds:>8.2f} {r.per_second:>12.1f} {r.delivered:>10}"
        )
    base = results[0]
    for r in results[1:]:
        print(f"batch {r.batch} is {r.per_second / base.per_second:.1f}x batch {base.batch}")
    return results


if __name__ == "__main__":
    main()
