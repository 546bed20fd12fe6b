"""The benchmark's emulators in a process of their own, so a contender's CPU and memory are its own.

    python -m bench.serve

Serves the Goose and Mongoose emulators and a control app on free loopback
ports, prints one JSON line with their URLs once all three listen, and runs
until SIGTERM. The control app (benchmark only, never faulted):

    POST /round {"records": n, "rows": true, "latency": 0.0}
        reset both emulators and seed them the same way every time: Goose holds
        n records of CON_TRO, all deleted by a user; Mongoose holds a UserNames
        row per record (or, with "rows": false, one row no lookup finds); every
        vendor route waits `latency` seconds; request logs empty.
    GET  /tally -> {"requests": {kind: count}, "rows_left": n}
        the vendor requests made since the last /round, by kind, and the
        UserNames rows still there.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections import Counter
from types import FrameType
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.figures import request_kind
from bench.scenario import (
    GOOSE_CODE,
    GOOSE_KEY,
    IDO,
    MONGOOSE_CONFIG,
    MONGOOSE_PASSWORD,
    MONGOOSE_USER,
    SENTINEL,
    TABLE,
    natural_key,
    record_id,
)
from connectors.goose.emulator import GooseEmulator
from connectors.kit.serving import RunningServer
from connectors.mongoose.emulator import MongooseEmulator


class Emulators:
    def __init__(self) -> None:
        self.goose = GooseEmulator(timezone="UTC")
        self.mongoose = MongooseEmulator(
            config=MONGOOSE_CONFIG, users={MONGOOSE_USER: MONGOOSE_PASSWORD}
        )

    def new_round(self, records: int, rows: bool, latency: float) -> None:
        ids = [record_id(n) for n in range(records)]
        self.goose.reset()
        self.mongoose.reset()
        self.goose.seed(
            {GOOSE_CODE: [GOOSE_KEY]},
            {TABLE: [{"RECORD_ID": i, "SYKEY": natural_key(n)} for n, i in enumerate(ids)]},
        )
        self.goose.delete(TABLE, ids)
        wanted = [natural_key(n) for n in range(records)] if rows else [SENTINEL]
        self.mongoose.seed({IDO: [{"Username": key} for key in wanted]})
        for emulator in (self.goose, self.mongoose):
            emulator.faults.update({"latency": latency})
            emulator.log.clear()

    def tally(self) -> dict[str, Any]:
        kinds: Counter[str] = Counter()
        for entry in self.goose.log.as_json() + self.mongoose.log.as_json():
            kinds[request_kind(entry["path"])] += 1
            if entry["status"] >= 400:
                kinds["failed"] += 1
        return {"requests": dict(kinds), "rows_left": len(self.mongoose.rows(IDO))}

    def control(self) -> Starlette:
        async def new_round(request: Request) -> Response:
            body = await request.json()
            self.new_round(
                int(body["records"]), bool(body.get("rows", True)), float(body.get("latency", 0))
            )
            return JSONResponse({"ok": True})

        async def tally(request: Request) -> Response:
            return JSONResponse(self.tally())

        return Starlette(
            routes=[
                Route("/round", new_round, methods=["POST"]),
                Route("/tally", tally, methods=["GET"]),
            ]
        )


def main() -> None:
    emulators = Emulators()
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    servers = [
        RunningServer(app).start()
        for app in (emulators.goose.app, emulators.mongoose.app, emulators.control())
    ]
    try:
        goose, mongoose, control = (s.url for s in servers)
        print(json.dumps({"goose": goose, "mongoose": mongoose, "control": control}), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        for server in servers:
            server.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
