"""The connector contract: what the engine and the connectors exchange.

Connectors never touch the store. A source turns a cursor (plain JSON the
engine keeps for it) into a planned call, performs it and hands back records
plus the cursor that follows them; the engine journals both in one
transaction. A target receives deliveries and answers one outcome per
delivery; the engine records them. Everything here is plain data so both
sides can be tested alone.
"""

from __future__ import annotations

import builtins
import enum
import importlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, Protocol, runtime_checkable

JSON = dict[str, Any]


@dataclass(frozen=True)
class SourceRecord:
    """One deleted record as a source reported it.

    `key` identifies the record within its stream; the journal de-duplicates
    on (pipeline, stream, key) within overlapping read windows (see `SourceCall`),
    so a source may hand the same record twice.
    """

    stream: str
    key: str
    fields: Mapping[str, Any]
    origin: str = ""
    """The record's name in its own system, written exactly as a target deleting there
    names its `Outcome.effect` (e.g. `goose:DEV001:CON_TRO:0-1`), so the journal can
    recognise a deletion this engine itself caused and not propagate it again."""


@dataclass(frozen=True)
class InFlightCall:
    """A call the engine recorded as started but whose answer was never journaled."""

    started_at: datetime
    params: Mapping[str, Any]


@dataclass(frozen=True)
class SourceCall:
    """One planned request to a source, described before it is sent.

    `params` are recorded in the store as the in-flight marker and shown in
    logs and `status`, so they must never hold a secret. `recovery` says that
    this call re-reads a window after an interrupted call.

    `window_start` and `window_end` bound the source time the answer can cover,
    as a half-open span [start, end) of aware instants, None being unbounded.
    The journal takes a record for a duplicate only when the same key was
    journaled from a read whose window overlaps this one (a recovery re-read, a
    timestamp overlap, a backfill), so a record deleted again later is a new
    deletion. Two reads that can never return the same deletion (successive
    calls of a server-side cursor) must get windows that do not overlap; a
    source that cannot tell leaves both None: every re-read then overlaps.
    `cursor` is the durable cursor the call was planned from, for `fetch` to
    carry forward what the next cursor still needs.
    """

    stream: str
    params: Mapping[str, Any]
    started_at: datetime
    recovery: bool = False
    window_start: datetime | None = None
    window_end: datetime | None = None
    cursor: JSON | None = None


@dataclass(frozen=True)
class RejectedRecord:
    """A record in a source's answer that cannot be used (no key, a malformed row).

    Handed back instead of raising, so one bad row does not stop its stream: the
    engine journals it as a dead letter with its fields (redacted) and `reason`,
    and the rest of the answer and the cursor go on as usual.
    """

    stream: str
    fields: Mapping[str, Any]
    reason: str


@dataclass(frozen=True)
class SourcePage:
    """What one call produced: the records and the cursor that follows them.

    `more` asks the engine to call again in the same run (a recovery read is
    followed by a return to the server-side cursor, or a source pages).
    """

    records: Sequence[SourceRecord]
    cursor: JSON
    more: bool = False
    rejected: Sequence[RejectedRecord] = ()
    """Records of this answer the source could not use, each with the reason."""
    problem: str = ""
    """What this page could not tell, for the operator (an execution that ended in
    error, a task that names no entities); the records still count and the cursor
    still moves, the engine records the message on the stream and logs it."""
    partial: bool = False
    """More of the same answer follows (see `StreamingSource`): the engine journals these
    records but leaves the call in flight and the cursor where it was; `cursor`,
    `more` and `problem` count only on the answer's last page."""


@runtime_checkable
class StreamingSource(Protocol):
    """A source whose answers can be too large to hold: it hands one over in pages.

    Every page but the last is `partial` and holds at most `CHUNK_RECORDS` records;
    the last one carries the cursor. The engine journals each page as it comes,
    under the call's one in-flight marker, so memory stays constant in the size
    of the answer, and an answer that breaks off part-way (an `AmbiguousError`
    raised by the iterator) is recovered like any lost answer.
    """

    def fetch_pages(self, call: SourceCall) -> AsyncGenerator[SourcePage, None]: ...


CHUNK_RECORDS = 5000
"""Records per page of a streamed answer: what the engine holds of it at once."""


@dataclass(frozen=True)
class ServerCursor:
    """A cursor the remote system keeps for its caller ("what changed since my last call").

    Two pipelines reading one such cursor split its answers between them: each
    call moves it for both, so the second reader gets nothing, forever, and
    reports success. Sources declare the ones they consume so `validate` can
    refuse a second reader.
    """

    identity: tuple[str, ...]
    """Compared for equality only, never shown (it may hold a digest of a key)."""
    description: str
    """What the user reads, e.g. "Goose's `latest` cursor of table CON_TRO ..."; no secret."""
    instead: str
    """The source's other way to read the same data, offered in the refusal."""


@runtime_checkable
class ConsumesServerCursors(Protocol):
    """Source settings that read cursors kept by the server, on a connection's settings."""

    def server_cursors(self, connection: Any) -> Sequence[ServerCursor]: ...


@runtime_checkable
class Source(Protocol):
    """A source of deletions, split into streams (a Goose table, a task...)."""

    def streams(self) -> Sequence[str]: ...

    def plan(
        self,
        stream: str,
        cursor: JSON | None,
        interrupted: InFlightCall | None,
        now: datetime,
    ) -> SourceCall:
        """Decide the next call from the durable cursor; pure, no I/O."""
        ...

    async def fetch(self, call: SourceCall) -> SourcePage:
        """Perform the call. Raises a `ConnectorError` subclass on failure."""
        ...

    async def aclose(self) -> None: ...


class OutcomeKind(enum.StrEnum):
    DONE = "done"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True)
class Delivery:
    """One deletion to propagate to one target, as handed to the target."""

    delivery_id: int
    stream: str
    key: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Outcome:
    """A target's verdict on one delivery.

    DONE also covers "already absent in the target": deleting what is gone
    is success. RETRY carries an optional server-given wait (Retry-After).
    DEAD is for what no retry can fix (no key could be mapped, ambiguous
    match); the reason is kept for the operator.
    """

    delivery_id: int
    kind: OutcomeKind
    reason: str = ""
    retry_after: float | None = None
    detail: str = ""
    effect: str = ""
    """On DONE, the deleted (or absent) record's name in the target's system, in the
    form a source reading that system gives as `SourceRecord.origin`; empty when no
    source can observe the target."""

    @classmethod
    def done(cls, delivery_id: int, detail: str = "", effect: str = "") -> Outcome:
        return cls(delivery_id, OutcomeKind.DONE, detail=detail, effect=effect)

    @classmethod
    def retry(cls, delivery_id: int, reason: str, retry_after: float | None = None) -> Outcome:
        return cls(delivery_id, OutcomeKind.RETRY, reason=reason, retry_after=retry_after)

    @classmethod
    def dead(cls, delivery_id: int, reason: str) -> Outcome:
        return cls(delivery_id, OutcomeKind.DEAD, reason=reason)


@dataclass(frozen=True)
class KeyMatch:
    """How a target compares a key it is given with the keys of the records it holds.

    A target whose lookup runs in a database with SQL Server's default
    collation finds row 'sa' for key 'SA ' and deletes it; a check of that
    key (the legal hold) must see the two as the same key, or it protects
    nothing. `fold` is that comparison as a function: two keys match exactly
    when their folds are equal. The same object serves the target's own
    matching and every guard, so they cannot drift apart.
    """

    ignore_case: bool = False
    ignore_trailing_spaces: bool = False

    def fold(self, key: str) -> str:
        if self.ignore_trailing_spaces:
            key = key.rstrip(" ")
        return key.casefold() if self.ignore_case else key

    def matches(self, key: str, pattern: str) -> bool:
        """Whether `key` matches a glob `pattern` (`admin*`) as the target compares text."""
        return fnmatchcase(self.fold(key), self.fold(pattern))

    def describe(self) -> str:
        rules = [
            rule
            for rule, on in (
                ("case-insensitive", self.ignore_case),
                ("trailing spaces ignored", self.ignore_trailing_spaces),
            )
            if on
        ]
        return ", ".join(rules) or "exact"


EXACT_KEYS = KeyMatch()
"""Keys are equal only when their text is (an id in a URL, a JSON value)."""


def sql_server_keys(case_sensitive: bool = False) -> KeyMatch:
    """SQL Server text comparison: trailing spaces never count (ANSI padding), case only
    under a case-sensitive (`_CS_`) collation; the default collations ignore it."""
    return KeyMatch(ignore_case=not case_sensitive, ignore_trailing_spaces=True)


@runtime_checkable
class Target(Protocol):
    """A target of deletions. `send` answers exactly one outcome per delivery;
    `key_match` says how it compares keys with its records."""

    batch_size: int
    key_match: KeyMatch

    async def send(self, batch: Sequence[Delivery]) -> list[Outcome]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Unscoped(Protocol):
    """A target whose delete reaches beyond the delivered key (an ADT delete job wipes
    the whole instance). `unscoped` says how, for the operator.

    No guard that weighs keys can hold on it: a legal hold cannot spare a record the
    delete wipes anyway, and a limit counting deliveries cannot bound what one
    delivery deletes. Nor can what it deleted be listed for a chained pipeline. So
    `validate` refuses those guards and chains on such a target, rather than letting
    them promise what they cannot keep.
    """

    unscoped: str


@runtime_checkable
class Backfillable(Protocol):
    """A source that can re-read its history from a point in time (a backfill).

    `since` is written in the source's own format and time zone; a bad one
    raises ValueError with a message for the operator.
    """

    def plan_backfill(self, stream: str, since: str, now: datetime) -> SourceCall: ...


@runtime_checkable
class TaskSource(Protocol):
    """A source whose streams are remote tasks that finish (a DMM delete execution, a
    Reltio delete task), each read once it has ended.

    Besides the tasks its settings list (`streams()`), the engine gives it tasks an
    operator registers and tasks this engine's own targets started, by asking for
    their stream name. `fetch` on a task still running returns no records and a
    cursor for which `finished` is false; once `finished` is true the engine never
    reads that stream again.
    """

    def task_stream(self, task_id: str) -> str: ...

    def finished(self, cursor: JSON | None) -> bool: ...


@runtime_checkable
class Previewable(Protocol):
    """A target that can tell, read-only, what `send` would do (for plan and dry run).

    Outcomes mean: DONE with detail "would delete <key in the target>" or
    "absent"; DEAD with the reason nothing would be sent; RETRY when the
    target could not be asked.
    """

    async def preview(self, batch: Sequence[Delivery]) -> list[Outcome]: ...


@runtime_checkable
class Countable(Protocol):
    """A target that can count the records it could delete (for `max_fraction`).

    None, or an error, means the count is unknown: the guard then holds what
    is due rather than let it pass unguarded. Declared on the registry entry
    too (`ConnectorInfo.countable`), so a configuration is checked without
    building a target.
    """

    async def population(self) -> int | None: ...


# --- asynchronous targets: submit a fixed batch as a job, poll it ----------


class JobState(enum.StrEnum):
    """A small set every API's statuses map onto; `terminal` says polling ends."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobSpec:
    """The job as recorded before submission: its id, the client-chosen id and the
    batch it carries. The batch never changes once the row is written."""

    job_id: int
    client_id: str
    items: Sequence[Delivery]
    resolved: Mapping[str, Any] = field(default_factory=dict)
    """What `Resolving.resolve` kept for this job, by look-up key, still fresh enough to
    use: `submit` and `find` take these instead of looking the keys up again."""


@dataclass(frozen=True)
class JobHandle:
    """What identifies the remote job once it exists."""

    remote_id: str
    state: JobState = JobState.QUEUED
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobProgress:
    """One poll. `outcomes` is set once the job is terminal: one per item."""

    state: JobState
    outcomes: Sequence[Outcome] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)
    poll_after: float | None = None
    message: str = ""
    artifacts: Mapping[str, bytes] = field(default_factory=dict)
    """Files worth keeping with the job (a DMM log zip); the engine stores them
    beside the state and records a pointer, connectors never write files."""


class CannotCancel(Exception):
    """The API offers no way to cancel this kind of job; the message says why."""


@runtime_checkable
class Cancellable(Protocol):
    """An `AsyncTarget` whose API can stop a job it started (declared as
    `Capabilities.cancel` on the registry entry)."""

    async def cancel(self, handle: JobHandle) -> None:
        """Ask the API to stop the job; what it already deleted stays deleted."""
        ...


@runtime_checkable
class AsyncTarget(Protocol):
    """A target whose API deletes in jobs: the engine records each job before `submit`
    and polls it to its end (see connectors.kit.jobs for the helpers)."""

    batch_size: int
    kind: str
    key_match: KeyMatch

    async def submit(self, job: JobSpec) -> JobHandle:
        """Start the remote job. Raises AmbiguousError when the answer was lost."""
        ...

    async def find(self, job: JobSpec) -> JobHandle | None:
        """After an interrupted submit: the remote job this spec started, if any."""
        ...

    async def poll(self, job: JobSpec, handle: JobHandle) -> JobProgress: ...

    async def aclose(self) -> None: ...


Keep = Callable[[str, Any], Awaitable[None]]
"""Hands one look-up's result (plain JSON) to the engine; it returns once the result is
stored with the job."""


@runtime_checkable
class Resolving(Protocol):
    """An `AsyncTarget` that must read the target before it can say what a job deletes
    (Reltio: the entity holding each crosswalk).

    Those reads cost most of a submission under faults, so the engine runs them
    as a step of their own before the job is submitted, stores each result with
    the job as it arrives, and gives the fresh ones back in `JobSpec.resolved`
    to every later `resolve`, `submit` and `find` of that job: a failed key is
    looked up again alone, and a restart looks up only what was never resolved.
    A result is used for that job only, and for `resolved_for` seconds at most,
    so it cannot outlive the job or grow stale beyond that bound.
    """

    resolved_for: float
    """Seconds a look-up's result may be used after it was read."""

    async def resolve(self, job: JobSpec, keep: Keep) -> None:
        """Look up the keys of `job` not in `job.resolved`, reads only, calling
        `keep(key, result)` as each one succeeds. Raises RetriableError once the keys
        under way are done when some could not be looked up now (their results kept
        stay kept), FatalError as anywhere; a key the API answers with an error is left
        for `submit` to judge."""
        ...


# --- errors, grouped by what the caller should do -------------------------


class ConnectorError(Exception):
    """Base of every error a connector raises; the message is safe to show."""

    def __init__(self, message: str, *, connection: str = "") -> None:
        super().__init__(message)
        self.connection = connection


class FatalError(ConnectorError):
    """Configuration or credentials are wrong: stop the pipeline, tell the operator."""


class RetriableError(ConnectorError):
    """Transient (rate limit, 5xx, timeout) and the request was not applied."""

    def __init__(
        self, message: str, *, connection: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message, connection=connection)
        self.retry_after = retry_after


class AmbiguousError(RetriableError):
    """The request may or may not have been applied (timeout after sending, 5xx,
    truncated answer). Never blindly re-send a non-idempotent call after this."""


class RemoteError(ConnectorError):
    """The API answered with an error about this request (unknown table, SQL error)."""

    def __init__(self, message: str, *, connection: str = "", code: str = "") -> None:
        super().__init__(message, connection=connection)
        self.code = code


class MalformedAnswer(RemoteError):
    """The answer breaks the API's own form or contradicts itself (an envelope key
    given twice, a status that reads OK before the rows and an error after them).

    Nothing more of such an answer may be journaled or sent, in this run or a later
    one: the engine withdraws what it journaled from it and has not sent, and fails
    the run naming how many of its deliveries had already gone out. Raised from a
    streamed answer's iterator; a malformed single row is a `RejectedRecord` instead.
    """


# --- check: is each connection usable, read-only ---------------------------


@dataclass(frozen=True)
class Probe:
    """One step of `syncengine check` for one connection: `step` is reach, tls, auth or
    object (the configured table, IDO, tenant, instance or connection); `detail` says
    what was proven, or why it failed, in one line with no secret in it."""

    connection: str
    step: str
    ok: bool
    detail: str


Checker = Callable[[str, Any, Sequence[Any]], AsyncIterator[Probe]]
"""(connection name, connection settings, the source and target blocks of the config that
use it) -> its probes, in order, each as soon as it is known (so a connection that stops
answering still shows how far it got). Only read-only calls: a check never deletes,
starts a job or moves a server-side cursor."""


# --- registry ---------------------------------------------------------------


SourceFactory = Callable[[str, Any, Any], Source]
"""(connection name, connection settings, source settings) -> Source"""
TargetFactory = Callable[[str, Any, Any], Target | AsyncTarget]
"""(connection name, connection settings, target settings) -> Target or AsyncTarget"""


@dataclass(frozen=True)
class Capabilities:
    """What a connector's targets can do beyond `send`, declared rather than probed.

    The engine and the config loader read these instead of looking for methods on
    an object, and a unit test holds every registered target to what its entry says.
    """

    preview: bool = False
    """Its targets implement `Previewable` (plan and dry run show what would happen)."""
    count: bool = False
    """Its targets implement `Countable`, so `guard.max_fraction` can guard them."""
    cancel: bool = False
    """Its job targets implement `Cancellable`: `jobs cancel` can stop a remote job."""
    no_cancel: str = ""
    """When `cancel` is false: why the API cannot stop a job, for the operator."""


@dataclass(frozen=True)
class SandboxSpec:
    """How `syncengine sandbox`, the demo and the end-to-end tests run this connector's
    emulator. `emulator` is a "module:function" path, imported only when a sandbox
    starts, so a pipeline run never loads an emulator; the function takes the
    emulator's step in seconds (how fast its jobs advance) and returns a seeded
    `connectors.emulation.kit.SandboxEmulator`."""

    port: int
    """Its default loopback port in the sandbox."""
    emulator: str
    contract: str = ""
    """"module:function" giving its targets' cases for the target contract suite
    (`connectors.emulation.contract_cases.ContractCases`); empty for a connector without targets."""


@dataclass(frozen=True)
class ConnectorInfo:
    """What a connection `type` offers: its settings models, factories and capabilities.

    `connection_settings` validates the entry under `connections:`;
    `source_settings` / `target_settings` validate the `source:` / target
    blocks of a pipeline that uses a connection of this type.
    """

    name: str
    connection_settings: builtins.type[Any]
    source_settings: builtins.type[Any] | None = None
    target_settings: builtins.type[Any] | None = None
    build_source: SourceFactory | None = None
    build_target: TargetFactory | None = None
    task_source: bool = False
    """Its source is a `TaskSource` (streams are remote tasks), so a pipeline can make it
    follow the jobs a target on the same connection started."""
    capabilities: Capabilities = field(default_factory=Capabilities)
    sandbox: SandboxSpec | None = None
    """Its emulator in the sandbox; None for a connector that has none."""
    check: Checker | None = None
    """How `syncengine check` proves a connection of this type usable; None: not checkable."""

    @property
    def countable(self) -> bool:
        """Its targets can count their records (`guard.max_fraction` needs it)."""
        return self.capabilities.count


class UnknownConnectorType(KeyError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = sorted(known)

    def __str__(self) -> str:
        return f"unknown connection type {self.name!r}; known types: {', '.join(self.known)}"


class Registry:
    """Name -> connector. The error on a miss lists the valid names.

    A connector may be declared, by name and the module that registers it, instead
    of imported: the module is imported on the first lookup of the name, so a process
    loads only the connectors its configuration uses (each brings its HTTP client,
    settings models and validators).
    """

    def __init__(self) -> None:
        self._items: dict[str, ConnectorInfo] = {}
        self._declared: dict[str, str] = {}

    def declare(self, name: str, module: str) -> None:
        """`module` registers connector `name` when imported; done on first use."""
        self._declared[name] = module

    def register(self, info: ConnectorInfo) -> None:
        if info.name in self._items:
            raise ValueError(f"connector type {info.name!r} registered twice")
        self._items[info.name] = info

    def get(self, name: str) -> ConnectorInfo:
        if name not in self._items and name in self._declared:
            importlib.import_module(self._declared[name])
        try:
            return self._items[name]
        except KeyError:
            raise UnknownConnectorType(name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._items.keys() | self._declared.keys())

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._declared


registry = Registry()
"""The process-wide registry; each connector package registers itself on import."""


@dataclass(frozen=True)
class Side:
    """A connector's source or target: the model validating its block in a pipeline,
    and what builds it from (connection name, connection settings, that block)."""

    settings: builtins.type[Any]
    build: Callable[[str, Any, Any], Any]


def register(
    name: str,
    connection: builtins.type[Any],
    *,
    target: Side | None = None,
    source: Side | None = None,
    sandbox_port: int | None = None,
    task_source: bool = False,
    capabilities: Capabilities = Capabilities(),
    check: Checker | None = None,
) -> ConnectorInfo:
    """Register connector `name`, as its package's `__init__` does when imported.

    Its emulator, when it has a `sandbox_port`, is `connectors.<name>.sandbox:emulated`,
    and its targets' contract cases `...:contract_cases` there: every package keeps them
    in the same place, so the entry names only the port."""
    sandbox = None
    if sandbox_port is not None:
        module = f"connectors.{name}.sandbox"
        contract = f"{module}:contract_cases" if target else ""
        sandbox = SandboxSpec(sandbox_port, f"{module}:emulated", contract)
    info = ConnectorInfo(
        name=name,
        connection_settings=connection,
        source_settings=source.settings if source else None,
        target_settings=target.settings if target else None,
        build_source=source.build if source else None,
        build_target=target.build if target else None,
        task_source=task_source,
        capabilities=capabilities,
        sandbox=sandbox,
        check=check,
    )
    registry.register(info)
    return info
