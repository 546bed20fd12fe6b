"""LoadCollection filters fit the server's query-string limit, as httpx sends them."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, quote_plus

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from connectors.contract import Delivery, OutcomeKind
from connectors.kit.http import HttpClient
from connectors.kit.serving import serve
from connectors.kit.sql import literal_problem
from connectors.mongoose import MongooseConnection, MongooseTarget, MongooseTargetSettings
from connectors.mongoose.emulator import DEFAULT_BASE_PATH, DEFAULT_V2_BASE_PATH, MongooseEmulator
from connectors.mongoose.filters import (
    FilterBudget,
    encoded_length,
    in_filter,
    quote_literal,
)

USER, PASSWORD = "sync", "pw-filters-secret"
SHORT = [f"u0-{12345 + i}" for i in range(100)]
HEAVY = [
    "o'brien",
    "a b+c&d=e#f%g/h?i",
    "Zoë 中文 ' ''",
    "'" * 40,
    "é" * 120,
    "%27%2C" * 20,
    "x" * 500,
    "semi;colon,comma (paren)",
]
"""Keys whose encoded form is much longer than their text: quotes doubled then %27,
multi-byte characters at 6 bytes each, reserved characters, long runs."""


class Recording(httpx.AsyncBaseTransport):
    """Sends to the real emulator and keeps every request as httpx sent it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def loads(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith(("/adv", "/ido/load/UserNames"))]


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[MongooseEmulator, str]]:
    emulator = MongooseEmulator(users={USER: PASSWORD})
    with serve(emulator.app) as running:
        yield emulator, running.url


MakeTarget = Callable[..., tuple[MongooseTarget, Recording]]


@pytest.fixture
async def make_target(
    shared: tuple[MongooseEmulator, str],
) -> AsyncIterator[MakeTarget]:
    emulator, root = shared
    emulator.reset()
    made: list[MongooseTarget] = []

    def make(
        keys: list[str], *, api: str = "v1", lookup: bool = True, **conn: Any
    ) -> tuple[MongooseTarget, Recording]:
        emulator.reset()
        emulator.seed({"UserNames": [{"Username": k} for k in keys]})
        base = root + (DEFAULT_BASE_PATH if api == "v1" else DEFAULT_V2_BASE_PATH)
        connection = MongooseConnection.model_validate(
            {
                "type": "mongoose",
                "url": base,
                "config": "DEMO",
                "user": USER,
                "password": PASSWORD,
                "api": api,
                "retry": {"max_attempts": 1},
                **conn,
            }
        )
        settings = MongooseTargetSettings.model_validate(
            {"ido": "UserNames", "key": "{SYKEY}"}
            | ({"lookup": {"property": "Username"}} if lookup else {})
        )
        recording = Recording()
        http = HttpClient(connection="erp", base_url=base, transport=recording)
        target = MongooseTarget("erp", connection, settings, http=http)
        made.append(target)
        return target, recording

    yield make
    for target in made:
        await target.aclose()


def batch(keys: list[str]) -> list[Delivery]:
    return [Delivery(i, "T", f"0-{i}", {"SYKEY": key}) for i, key in enumerate(keys, 1)]


def looked_up(request: httpx.Request) -> list[str]:
    """The keys one LoadCollection's IN filter names, read back as the server would."""
    (where,) = parse_qs(request.url.query.decode())["filter"]
    inner = where[where.index("(") + 1 : -1]
    keys, current, i = [], "", 0
    while i < len(inner):  # 'a''b','c'
        assert inner[i] == "'"
        i += 1
        while True:
            if inner[i] == "'" and inner[i + 1 : i + 2] == "'":
                current, i = current + "'", i + 2
            elif inner[i] == "'":
                i += 1
                break
            else:
                current, i = current + inner[i], i + 1
        keys.append(current)
        current = ""
        i += 1  # the separator
    return keys


# --- encoding ----------------------------------------------------------------------


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_encoded_length_is_what_httpx_sends(text: str) -> None:
    assert encoded_length(text) == len(quote_plus(text, safe=""))
    sent = httpx.Request("GET", "http://h/p", params={"f": text}).url.query
    assert len(sent) == len("f=") + encoded_length(text)


def test_budget_counts_the_whole_query_string() -> None:
    def params(where: str) -> dict[str, str]:
        return {"props": "_ItemId,Username", "filter": where, "recordcap": "0"}

    budget = FilterBudget.of(params, in_filter("Username", []), 2048)
    literals = {k: quote_literal(k) for k in HEAVY}
    chunks, too_long = budget.split(literals)
    assert [k for chunk in chunks for k in chunk] + list(too_long) == HEAVY
    for chunk in chunks:
        sent = httpx.Request(
            "GET", "http://h/p", params=params(in_filter("Username", [literals[k] for k in chunk]))
        ).url.query
        assert len(sent) <= 2048
    for key, needed in too_long.items():
        alone = params(in_filter("Username", [literals[key]]))
        assert needed == len(httpx.Request("GET", "http://h/p", params=alone).url.query) > 2048


@given(
    st.lists(st.text().filter(lambda k: literal_problem(k) is None), unique=True),
    st.integers(min_value=0, max_value=400),
)
def test_split_is_greedy_and_every_list_fits_whether_or_not_the_batch_fits_whole(
    keys: list[str], room: int
) -> None:
    """Over and under the limit: a batch that fits whole is one list, taken in one
    measure; one that does not is cut where the next key would not fit."""

    def query(where: str) -> str:
        params = {"props": "_ItemId,Username", "filter": where, "recordcap": "0"}
        return str(httpx.QueryParams(params))

    empty = in_filter("Username", [])
    limit = len(query(empty)) + room
    budget = FilterBudget(len(query(empty)), limit)
    literals = {k: quote_literal(k) for k in keys}
    chunks, too_long = budget.split(literals)

    def length(chunk: list[str]) -> int:
        return len(query(in_filter("Username", [literals[k] for k in chunk])))

    assert [k for chunk in chunks for k in chunk] == [k for k in keys if k not in too_long]
    assert all(length(chunk) <= limit for chunk in chunks)
    assert all(length([key]) == needed > limit for key, needed in too_long.items())
    for first, then in itertools.pairwise(chunks):
        assert length([*first, then[0]]) > limit
    if keys and length(keys) <= limit:
        assert chunks == [keys]


# --- against the emulator ----------------------------------------------------------


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_a_batch_of_100_short_keys_is_one_load_collection(
    make_target: MakeTarget, api: str
) -> None:
    target, recording = make_target(SHORT, api=api)
    outcomes = await target.send(batch(SHORT))
    assert {o.kind for o in outcomes} == {OutcomeKind.DONE}
    assert [o.detail for o in outcomes] == ["deleted"] * 100
    (load,) = recording.loads()
    assert looked_up(load) == SHORT
    assert len(load.url.query) <= 2048


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("limit", [512, 2048])
async def test_every_load_collection_fits_for_adversarial_keys(
    make_target: MakeTarget, api: str, limit: int
) -> None:
    keys = [*HEAVY, *SHORT[:40]]
    target, recording = make_target(keys, api=api, max_query_string=limit)
    outcomes = await target.send(batch(keys))
    loads = recording.loads()
    assert loads and all(len(r.url.query) <= limit for r in loads)
    sent = [k for r in loads for k in looked_up(r)]
    assert len(sent) == len(set(sent))
    by_key = dict(zip(keys, outcomes, strict=True))
    for key, outcome in by_key.items():
        if key in sent:
            assert (outcome.kind, outcome.detail) == (OutcomeKind.DONE, "deleted"), key
        else:
            assert outcome.kind is OutcomeKind.DEAD, key
            assert outcome.reason.startswith("key too long: ")
            assert f"connections.erp.max_query_string ({limit}" in outcome.reason
    # Greedy: no load could have carried the first key of the next one.
    for first, then in itertools.pairwise(loads):
        both = [*looked_up(first), looked_up(then)[0]]
        params = dict(first.url.params) | {
            "filter": in_filter("Username", [quote_literal(k) for k in both])
        }
        assert len(httpx.Request("GET", "http://h/p", params=params).url.query) > limit


async def test_a_key_over_the_limit_alone_is_dead_and_never_sent(make_target: MakeTarget) -> None:
    huge = "k" * 3000
    target, recording = make_target(["ok-1", huge, "ok-2"])
    outcomes = await target.send(batch(["ok-1", huge, "ok-2"]))
    assert [o.kind for o in outcomes] == [OutcomeKind.DONE, OutcomeKind.DEAD, OutcomeKind.DONE]
    assert outcomes[1].reason.startswith(f"key too long: a LoadCollection for {'k' * 60 + '...'!r}")
    assert "shorten the key or raise both limits" in outcomes[1].reason
    (load,) = recording.loads()
    assert looked_up(load) == ["ok-1", "ok-2"]


async def test_only_keys_over_the_limit_make_no_call(make_target: MakeTarget) -> None:
    huge = "é" * 400
    target, recording = make_target([huge])
    (outcome,) = await target.send(batch([huge]))
    assert outcome.kind is OutcomeKind.DEAD
    assert recording.loads() == []


async def test_an_item_id_whose_recheck_would_not_fit_is_dead(make_target: MakeTarget) -> None:
    item_id = "PBT=[UserNames] UserNames.DT=[2024-01-01] UserNames.ID=[" + "r" * 2100 + "]"
    target, recording = make_target([], lookup=False)
    (outcome,) = await target.send(batch([item_id]))
    assert outcome.kind is OutcomeKind.DEAD
    assert outcome.reason.startswith("key too long: ")
    assert [r for r in recording.requests if "/token/" not in r.url.path] == []


@pytest.mark.parametrize("value", [511, 2_000_000, "big"])
def test_max_query_string_is_validated(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        MongooseConnection.model_validate(
            {
                "type": "mongoose",
                "url": "http://h/IDORequestService/MGRESTService.svc",
                "config": "DEMO",
                "user": USER,
                "password": PASSWORD,
                "max_query_string": value,
            }
        )
    assert "max_query_string" in str(info.value)
