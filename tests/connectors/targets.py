"""One factory per registered target (and kind), for the target contract suite.

Each factory starts the connector's emulator on a free loopback port, seeds a present
key and builds the target with the same connection and settings helpers its own test
module uses, so the suite and the per-connector tests cannot drift apart. A case that
does not apply to a target is declared here, with the reason, in `not_applicable`:
the suite skips it naming that reason, never passes it silently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.adt import AdtTwinsTarget
from connectors.adt.emulator import AdtEmulator, demo_graph
from connectors.adt.purge import AdtPurgeTarget
from connectors.contract import (
    AsyncTarget,
    Delivery,
    JobHandle,
    JobSpec,
    Outcome,
    Previewable,
    Target,
)
from connectors.dmm import DmmDeleteTarget
from connectors.dmm.emulator import DmmEmulator, demo_entities
from connectors.emulator_kit import LoggedRequest, serve
from connectors.goose import GooseDeleteTarget
from connectors.goose.emulator import GooseEmulator
from connectors.mongoose import MongooseTarget
from connectors.mongoose.emulator import DEFAULT_BASE_PATH, MongooseEmulator, demo_rows
from connectors.reltio import ReltioDeleteTarget
from connectors.reltio.emulator import ReltioEmulator
from connectors.reltio.emulator import demo_entities as reltio_entities
from tests.connectors import (
    test_adt_purge as adt_purge,
)
from tests.connectors import (
    test_adt_twins as adt_twins,
)
from tests.connectors import (
    test_dmm_target as dmm,
)
from tests.connectors import (
    test_goose_target as goose,
)
from tests.connectors import (
    test_mongoose_target as mongoose,
)
from tests.connectors import (
    test_reltio_target as reltio,
)

KEYED = "keyed"
"""Cases about one record's key (absent, empty): a target that addresses records by key."""
UNSAFE = "unsafe"
"""Keys no request can carry safely."""
AMBIGUOUS = "ambiguous"
"""A key that matches several records."""
LOST = "lost"
"""A job whose start was applied but whose answer was lost."""
NO_JOBS = {LOST: "deletes record by record, each call idempotent; it starts no job"}


@dataclass
class Harness:
    """A built target, its emulator and what the suite needs to address it."""

    target: Target | AsyncTarget
    emulator: Any
    delivery: Callable[[int, str], Delivery]
    present: str
    absent: str = ""
    unsafe: Sequence[str] = ()
    """Keys this target can never send safely (they would change the request)."""
    step: float = 0.05
    secrets: Sequence[str] = ()
    """Every secret the connection holds, none of which may show in an error or a log."""
    revoke: Callable[[], None] = lambda: None
    """Makes the emulator refuse the connection's credentials from now on, fresh ones too."""
    token_path: str = ""
    """Where the connection fetches a token; empty for credentials it cannot renew."""
    hint: str = ""
    """The settings a refusal must name (`connections.<name>.<setting>`)."""
    jobs: Callable[[], int] | None = None
    """How many jobs the emulator has been asked to start (job targets)."""
    ambiguous: Callable[[], str] | None = None
    """Seeds a second record under one key and returns that key."""
    not_applicable: Mapping[str, str] = field(default_factory=dict)

    async def deliver(self, batch: Sequence[Delivery]) -> list[Outcome]:
        """`send`, or a job submitted and polled to its end, moving the emulator's clock."""
        if isinstance(self.target, Target):
            return await self.target.send(batch)
        job = self.job(batch)
        return await self.finish(job, await self.target.submit(job))

    def job(self, batch: Sequence[Delivery]) -> JobSpec:
        return JobSpec(job_id=1, client_id="contract-job-1", items=list(batch))

    async def finish(self, job: JobSpec, handle: JobHandle) -> list[Outcome]:
        """Polls the job to its end, moving the emulator's clock between polls."""
        assert isinstance(self.target, AsyncTarget)
        for _ in range(50):
            progress = await self.target.poll(job, handle)
            if progress.state.terminal:
                return list(progress.outcomes)
            self.emulator.step(self.step)
        raise AssertionError("the job never ended")

    async def preview(self, batch: Sequence[Delivery]) -> list[Outcome]:
        assert isinstance(self.target, Previewable)
        return await self.target.preview(batch)

    async def requests(self) -> list[LoggedRequest]:
        """The emulator logs a request just after answering it; let the last entry land."""
        await asyncio.sleep(0.05)
        return list(self.emulator.log.entries)


Factory = Callable[[], contextlib.AbstractAsyncContextManager[Harness]]
PATH_UNSAFE = ("..", ".", "%2e%2e")


def second_jrossi(emulator: MongooseEmulator) -> str:
    emulator.seed({"UserNames": [{"Username": "jrossi", "UserDesc": "Another Rossi"}]})
    return "jrossi"


@contextlib.asynccontextmanager
async def mongoose_target() -> AsyncIterator[Harness]:
    emulator = MongooseEmulator(
        users={mongoose.USER: mongoose.PASSWORD}, bearer_tokens=[mongoose.ION_TOKEN]
    )
    emulator.seed(demo_rows())
    with serve(emulator.app) as running:
        url = running.url + DEFAULT_BASE_PATH
        async with contextlib.aclosing(
            MongooseTarget("erp", mongoose.connection(url), mongoose.target_settings())
        ) as target:
            yield Harness(
                target,
                emulator,
                lambda n, key: Delivery(n, "CON_TRO", f"0-{n}", {"SYKEY": key}),
                present="jrossi",
                secrets=(mongoose.PASSWORD, mongoose.ION_TOKEN),
                revoke=lambda: emulator.knobs.update({"refuse_tokens": True}),
                token_path="/json/token/",
                hint="connections.erp.",
                ambiguous=lambda: second_jrossi(emulator),
                not_applicable=NO_JOBS,
                absent="exemployee",
                unsafe=("a\x00b", "o\u02bcbrien"),
            )


@contextlib.asynccontextmanager
async def reltio_target() -> AsyncIterator[Harness]:
    emulator = ReltioEmulator(
        clients={reltio.CLIENT: reltio.SECRET},
        users={reltio.USER: reltio.PASSWORD},
        step_seconds=reltio.STEP,
    )
    entities = reltio_entities()
    emulator.seed(entities)
    with serve(emulator.app) as running:
        async with contextlib.aclosing(
            ReltioDeleteTarget("mdm", reltio.connection(running.url), reltio.settings())
        ) as target:
            yield Harness(
                target,
                emulator,
                lambda n, key: Delivery(n, "CON_TRO", f"0-{n}", {"RELTIO_ID": key}),
                present=str(entities[0]["id"]),
                secrets=(reltio.SECRET, reltio.PASSWORD),
                revoke=lambda: refuse_reltio_tokens(emulator),
                token_path="/oauth/token",
                hint="connections.mdm.",
                jobs=lambda: len(emulator.tasks()),
                not_applicable={AMBIGUOUS: "an entity id names one entity"},
                absent="nosuchentity",
                unsafe=PATH_UNSAFE,
                step=reltio.STEP,
            )


def refuse_reltio_tokens(emulator: ReltioEmulator) -> None:
    """Tokens issued from now on expire at once, and those held already are gone."""
    emulator.knobs.update({"token_lifetime": 1e-9})
    emulator.expire_tokens()


def refuse_adt_tokens(emulator: AdtEmulator) -> None:
    emulator.token_lifetime = 0
    emulator.expire_tokens()


def _adt_delivery(n: int, key: str) -> Delivery:
    return Delivery(n, "CON_TRO", key, {"RECORD_ID": key})


@contextlib.asynccontextmanager
async def adt_twins_target() -> AsyncIterator[Harness]:
    emulator = AdtEmulator(tokens=[adt_twins.STATIC], clients={adt_twins.CLIENT: adt_twins.SECRET})
    emulator.seed(demo_graph())
    with serve(emulator.app) as running:
        async with contextlib.aclosing(
            AdtTwinsTarget("twins", adt_twins.connection(running.url), adt_twins.twins_settings())
        ) as target:
            yield Harness(
                target,
                emulator,
                _adt_delivery,
                present="0-1",
                absent="no-such-twin",
                secrets=(adt_twins.SECRET, adt_twins.STATIC),
                revoke=lambda: refuse_adt_tokens(emulator),
                token_path="/oauth2/token",
                hint="connections.twins.client_id",
                not_applicable={AMBIGUOUS: "a twin id names one twin", **NO_JOBS},
                unsafe=PATH_UNSAFE,
            )


PURGE_IS_WHOLE_INSTANCE = (
    "the ADT purge deletes the whole instance on a trigger key; it addresses no record by key"
)


@contextlib.asynccontextmanager
async def adt_purge_target() -> AsyncIterator[Harness]:
    emulator = AdtEmulator(
        tokens=[adt_purge.TOKEN], step_seconds=adt_purge.STEP, clock=lambda: adt_purge.T0
    )
    emulator.seed(demo_graph())
    with serve(emulator.app) as running:
        settings = adt_purge.purge_settings(confirm_purge=adt_purge.host_of(running.url))
        async with contextlib.aclosing(
            AdtPurgeTarget("twinsprod", adt_purge.connection(running.url), settings)
        ) as target:
            yield Harness(
                target,
                emulator,
                _adt_delivery,
                present="PURGE-1",
                secrets=(adt_purge.TOKEN,),
                revoke=emulator.tokens.clear,
                hint="connections.twinsprod.token",
                jobs=lambda: len(emulator.jobs()),
                step=adt_purge.STEP,
                not_applicable=dict.fromkeys((UNSAFE, KEYED, AMBIGUOUS), PURGE_IS_WHOLE_INSTANCE),
            )


@contextlib.asynccontextmanager
async def dmm_target() -> AsyncIterator[Harness]:
    emulator = DmmEmulator(
        tokens=[dmm.TOKEN], otps=[dmm.OTP], step_seconds=dmm.STEP, clock=dmm.frozen
    )
    emulator.seed(demo_entities())
    with serve(emulator.app) as running:
        async with contextlib.aclosing(
            DmmDeleteTarget("dmm", dmm.connection(running.url), dmm.settings())
        ) as target:
            yield Harness(
                target,
                emulator,
                lambda n, key: Delivery(n, "T", key, {"RECORD_ID": key}),
                present="0-1",
                absent="9-99",
                secrets=(dmm.TOKEN, dmm.OTP),
                revoke=emulator.tokens.clear,
                hint="connections.dmm.token",
                not_applicable={
                    AMBIGUOUS: "DMM deletes every row its WhereClause matches",
                    LOST: "DMM takes no client id and lists no executions, so a lost start "
                    "cannot be found and the batch is started again (DmmDeleteTarget.find)",
                },
                unsafe=("o\u02bcbrien",),
                step=dmm.STEP,
            )


@contextlib.asynccontextmanager
async def goose_target() -> AsyncIterator[Harness]:
    emulator = GooseEmulator(timezone="Europe/Rome")
    emulator.seed(
        {goose.CODE: [goose.KEY, goose.USER_KEY]},
        {"CON_TRO": [{"RECORD_ID": "0-1", "SYKEY": "user1"}]},
    )
    with serve(emulator.app) as running:
        async with contextlib.aclosing(
            GooseDeleteTarget("goose", goose.connection(running.url), goose.target_settings())
        ) as target:
            yield Harness(
                target,
                emulator,
                lambda n, key: Delivery(n, "CON_TRO", key, {"RECORD_ID": key}),
                present="0-1",
                absent="0-99",
                secrets=(goose.KEY, goose.USER_KEY),
                revoke=lambda: emulator.seed({"ANOTHER": [goose.KEY]}, {}),
                hint="connections.goose.key",
                not_applicable={
                    UNSAFE: "Goose takes the id as a JSON value in the body; every text is safe",
                    AMBIGUOUS: "a RECORD_ID names one record of its table",
                    **NO_JOBS,
                },
            )


FACTORIES: dict[str, Factory] = {
    "mongoose": mongoose_target,
    "reltio": reltio_target,
    "adt-twins": adt_twins_target,
    "adt-purge": adt_purge_target,
    "dmm": dmm_target,
    "goose": goose_target,
}
"""Every registered target type, ADT once per kind; the suite checks none is missing."""
