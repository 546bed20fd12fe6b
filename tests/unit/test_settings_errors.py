"""A settings error names the place and the problem, never the value it refused: what
was pasted in the wrong place (a password as a timeout, a token in a URL) must not reach
a terminal or a CI log. Tried on every field of every connector in the shipped
configuration, and on the engine's own settings, with values of several shapes."""

from __future__ import annotations

import copy
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from connectors import load_registry
from syncengine.config import ConfigError, parse_config
from syncengine.config.models import (
    AlertSettings,
    DeliveryRetry,
    GuardSettings,
    JobSettings,
    LegalHold,
    LoggingSettings,
    MetricsSettings,
    Schedule,
    StateSettings,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED: dict[str, Any] = yaml.safe_load((ROOT / "config.yaml").read_text())
SECRET = "Zq9SuperSecret77"
SHAPES: list[Any] = [
    SECRET,
    f"{{{SECRET}",  # breaks a key template
    f"http://user:{SECRET}@host:99999/x",  # a URL with a password and a port out of range
    f"ftp://{SECRET}.example/path?q=1",
    f"{SECRET} * * * *",  # a cron parser quotes the field it cannot read
    f"{SECRET} days",
    [SECRET],
    {"some_key": SECRET},
    {"key": f"{{{SECRET}", "patterns": [SECRET]},
]


def issues(tree: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    text = yaml.safe_dump(tree, default_flow_style=True, width=1 << 20)  # quicker to read
    try:
        parse_config(text, "my.yaml", env or {})
    except ConfigError as exc:
        return [issue.render("my.yaml") for issue in exc.issues]
    return []


def with_value(path: tuple[str, ...], value: Any, *more: tuple[str, ...]) -> dict[str, Any]:
    """The shipped tree with `value` at `path` (and at each of `more`)."""
    tree = copy.deepcopy(SHIPPED)
    paths = {path, *more}
    for where in paths:
        if any(where[:n] in paths for n in range(1, len(where))):
            continue  # the block holding it takes the value
        node = tree
        for part in where[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[where[-1]] = copy.deepcopy(value)
    return tree


def field_names(model: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every setting of a model, nested models' settings included."""
    for name, field in getattr(model, "model_fields", {}).items():
        if name == "root":
            continue
        path = (*prefix, field.alias or name)
        yield path
        for inner in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                yield from field_names(inner, path)


ENGINE_TARGET = [
    *(("retry", *p) for p in field_names(DeliveryRetry)),
    *(("jobs", *p) for p in field_names(JobSettings)),
    *(("guard", *p) for p in field_names(GuardSettings)),
    *(("guard", "legal_hold", *p) for p in field_names(LegalHold)),
    ("concurrency",),
]


def every_setting() -> Iterator[tuple[str, ...]]:
    """Each setting once per connector type and role (the engine's own once): the same
    field of a second target of one type adds nothing but time."""
    registry = load_registry()
    yield from (("state", *p) for p in field_names(StateSettings))
    yield from (("logging", *p) for p in field_names(LoggingSettings))
    yield from (("metrics", *p) for p in field_names(MetricsSettings))
    for name, block in SHIPPED["connections"].items():
        info = registry.get(block["type"])
        yield from (("connections", name, *p) for p in field_names(info.connection_settings))
    seen: set[tuple[Any, ...]] = set()
    for name, pipe in SHIPPED["pipelines"].items():
        where = ("pipelines", name)
        blocks: list[tuple[tuple[str, ...], str, set[tuple[str, ...]]]] = [
            ((*where, "schedule"), "schedule", set(field_names(Schedule))),
            ((*where, "alerts"), "alerts", set(field_names(AlertSettings))),
        ]
        source = pipe["source"]
        if "connection" in source:
            kind = SHIPPED["connections"][source["connection"]]["type"]
            fields = {(k,) for k in source} | set(field_names(registry.get(kind).source_settings))
            blocks.append(((*where, "source"), f"{kind} source", fields))
        for target_name, target in pipe["targets"].items():
            kind = SHIPPED["connections"][target["connection"]]["type"]
            fields = {(k,) for k in target} | set(field_names(registry.get(kind).target_settings))
            role = f"{kind} {target.get('kind', '')} target"
            blocks.append(((*where, "targets", target_name), role, fields))
            blocks.append(((*where, "targets", target_name), "target", set(ENGINE_TARGET)))
        for block_path, role, fields in blocks:
            for field in sorted(fields):
                if (role, field) not in seen:
                    seen.add((role, field))
                    yield (*block_path, *field)


SETTINGS = sorted(set(every_setting()))


def block_of(path: tuple[str, ...]) -> tuple[str, ...]:
    if path[0] == "connections":
        return path[:2]
    if path[0] == "pipelines":
        return path[: 4 if path[2] == "targets" else 3]
    return path[:1]


BLOCKS = sorted({block_of(p) for p in SETTINGS})


def test_the_shipped_configuration_is_the_valid_starting_point() -> None:
    assert issues(SHIPPED) == []
    assert len(SETTINGS) > 100, "every connector's fields, and the engine's"


@pytest.mark.parametrize("path", SETTINGS, ids=".".join)
def test_no_settings_error_shows_the_value_it_refused(path: tuple[str, ...]) -> None:
    for value in SHAPES[:3]:
        found = issues(with_value(path, value))
        leaked = [line for line in found if SECRET in line]
        assert leaked == [], f"{'.'.join(path)} = {value!r}"


@pytest.mark.parametrize("block", BLOCKS, ids=".".join)
def test_no_value_of_any_shape_shows_in_a_blocks_errors(block: tuple[str, ...]) -> None:
    """Each shape at once in every setting of one block (each field is still checked on
    its own; a model's checks of the block as a whole run once its fields are valid)."""
    paths = [p for p in SETTINGS if block_of(p) == block]
    for value in SHAPES:
        found = issues(with_value(paths[0], value, *paths[1:]))
        assert found, f"{'.'.join(block)} = {value!r} was accepted everywhere"
        leaked = [line for line in found if SECRET in line]
        assert leaked == [], f"{'.'.join(block)} = {value!r}"


PLACES = [
    (("connections", "erp", "timeout"), SECRET, "connections.erp.timeout: this value is not a"),
    (("connections", "erp", "retry", "base_delay"), SECRET, "erp.retry.base_delay: this value"),
    (("connections", "erp", "retry", "max_attempts"), SECRET, "retry.max_attempts: Input should"),
    (("connections", "erp", "url"), f"ftp://{SECRET}/x", "connections.erp.url: this value is"),
    (
        ("connections", "erp", "url"),
        f"http://{SECRET}:99999/x",
        "connections.erp.url: this URL's port is not a number from 1 to 65535; write e.g. https",
    ),
    (("connections", "twins", "url"), f"https://h/{SECRET}", "connections.twins.url: ***: the"),
    (("connections", "erp", "api"), SECRET, "connections.erp.api: Input should be 'v1' or 'v2'"),
    (("connections", "goose", "timezone"), SECRET, "connections.goose.timezone: unknown time"),
    (("connections", "erp", "type"), SECRET, "connections.erp.type: unknown connection type;"),
    (("logging", "level"), SECRET, "logging.level: Input should be 'debug', 'info'"),
    (("state", "url"), f"mysql://u:{SECRET}@h/db", "state.url: 'mysql' is not supported"),
    (("pipelines", "people", "schedule", "cron"), f"{SECRET} * * * *", "cron: bad cron"),
    (("pipelines", "people", "targets", "erp_users", "key"), f"{{{SECRET}", "erp_users.key: key"),
    (
        ("pipelines", "people", "targets", "erp_users", "guard", "legal_hold"),
        {"key": f"{{{SECRET}", "patterns": ["x"]},
        "erp_users.guard.legal_hold.key:",
    ),
    (("pipelines", "people", "targets", "crm_customers", "poll_interval"), SECRET, "this value"),
]


@pytest.mark.parametrize(("path", "value", "expected"), PLACES, ids=lambda p: str(p)[:40])
def test_the_message_still_names_the_place_and_the_problem(
    path: tuple[str, ...], value: Any, expected: str
) -> None:
    found = issues(with_value(path, value))
    assert any(expected in line for line in found), found
    assert not any(SECRET in line for line in found), found


def secret_fields() -> Iterator[tuple[str, str]]:
    registry = load_registry()
    for name, block in SHIPPED["connections"].items():
        model = registry.get(block["type"]).connection_settings
        for field, info in model.model_fields.items():
            if SecretStr is info.annotation or SecretStr in typing.get_args(info.annotation):
                yield name, info.alias or field


@pytest.mark.parametrize(("connection", "key"), sorted(secret_fields()), ids=".".join)
def test_an_empty_secret_is_refused_naming_the_setting_and_its_variable(
    connection: str, key: str
) -> None:
    """(Another auth mode's settings may be reported beside it: the shipped block uses
    one mode, and the test sets a secret of each.)"""
    tree = with_value(("connections", connection, key), "${EMPTY_SECRET}")
    found = [line.split(": ", 1)[1] for line in issues(tree, {"EMPTY_SECRET": ""})]
    assert (
        f"connections.{connection}.{key}: this secret is empty: environment variable "
        + ("EMPTY_SECRET gives an empty value; export it with the secret")
        in found
    )
    assert [line for line in found if "empty" in line] == found[:1]
    written = with_value(("connections", connection, key), "  ")
    found = [line.split(": ", 1)[1] for line in issues(written)]
    assert (
        f"connections.{connection}.{key}: this secret is empty; write it, or "
        + ("${NAME} to read it from the environment")
        in found
    )
    assert [line for line in found if "empty" in line] == found[:1]


def test_an_empty_secret_does_not_hide_the_blocks_other_problems() -> None:
    tree = with_value(("connections", "erp", "password"), "")
    tree["connections"]["erp"]["timeout"] = "soon"
    found = issues(tree)
    assert len(found) == 2
    assert "connections.erp.password: this secret is empty" in found[0]
    assert "connections.erp.timeout: this value is not a duration" in found[1]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u@h/db", None),
        ("postgresql://u@h/db", None),
        ("postgresql+psycopg://u@h/db", None),
        ("sqlite:///data/x.db", None),
        (f"mysql://u:{SECRET}@h/db", "state.url: 'mysql' is not supported: the store runs on"),
        ("mariadb+pymysql://h/db", "state.url: 'mariadb' is not supported"),
        (f"postgresql+psycopg2://u:{SECRET}@h/db", "driver 'psycopg2' is not supported"),
        (f"{SECRET}.db", "state.url: this value is not a database URL; write sqlite:///"),
    ],
)
def test_the_store_url_names_a_database_the_store_runs_on(url: str, expected: str | None) -> None:
    found = issues(with_value(("state", "url"), url))
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found
        assert SECRET not in found[0]
