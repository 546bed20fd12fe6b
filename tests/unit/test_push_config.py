"""`concurrency` on a target: from the YAML to the runtime, in range, and refused on
targets that run asynchronous jobs (it would be silently meaningless there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from state import Store
from syncengine.config import ConfigError, parse_config
from syncengine.engine.runtime import build_pipeline
from tests.unit.test_config import ENV, VALID

WITH_ALL = VALID.replace(
    "  erp: {type: mongoose,",
    """  crm: {type: dmm, url: "http://127.0.0.1:8705/DMM_API/rest/DMMAPI", token: t, otp: o}
  mdm: {type: reltio, tenant_url: "http://127.0.0.1:8703/reltio/api/T",
        auth_url: "http://127.0.0.1:8703/oauth/token", client_id: c, client_secret: s}
  twins: {type: adt, url: "https://twins.api.example.digitaltwins.azure.net", token: tok}
  erp: {type: mongoose,""",
)

JOB_TARGETS = {
    "dmm": "crm_customers: {connection: crm, entity: {name: Customer}, "
    'key_attribute: ExternalId, key: "{RECORD_ID}", concurrency: 2}',
    "reltio": 'mdm_people: {connection: mdm, crosswalk: {type: GOOSE, value: "{RECORD_ID}"}, '
    "concurrency: 2}",
    "adt": "purge: {connection: twins, kind: purge, trigger_keys: [PURGE-*], "
    "confirm_purge: twins.api.example.digitaltwins.azure.net, concurrency: 2}",
}


def issues_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "my.yaml", ENV)
    return [issue.render("my.yaml") for issue in info.value.issues]


def test_concurrency_reaches_the_target_runtime(tmp_path: Path) -> None:
    text = VALID.replace("batch_size: 100}", "batch_size: 100, concurrency: 4}")
    config = parse_config(text, "my.yaml", ENV)
    assert config.pipelines["contacts"].targets["erp_users"].concurrency == 4
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    try:
        pipe = build_pipeline(config, config.pipelines["contacts"], store)
        assert pipe.targets["erp_users"].concurrency == 4
    finally:
        store.close()


def test_concurrency_defaults_to_one() -> None:
    config = parse_config(VALID, "my.yaml", ENV)
    assert config.pipelines["contacts"].targets["erp_users"].concurrency == 1


@pytest.mark.parametrize(("value", "bound"), [(0, "greater than or equal to 1"), (33, "32")])
def test_concurrency_out_of_range_names_its_path(value: int, bound: str) -> None:
    text = VALID.replace("batch_size: 100}", f"batch_size: 100, concurrency: {value}}}")
    [message] = issues_of(text)
    assert "pipelines.contacts.targets.erp_users.concurrency" in message
    assert bound in message


@pytest.mark.parametrize("kind", sorted(JOB_TARGETS))
def test_concurrency_is_refused_on_a_target_that_runs_jobs(kind: str) -> None:
    block = JOB_TARGETS[kind]
    text = WITH_ALL + f"      {block}\n"
    name = block.split(":")[0]
    line = text.splitlines().index(f"      {block}") + 1
    assert issues_of(text) == [
        f"my.yaml:{line}: pipelines.contacts.targets.{name}.concurrency: a {kind} target of "
        "this kind runs asynchronous jobs, which are submitted without waiting for them; "
        "concurrency applies to synchronous targets only: remove it"
    ]


def test_concurrency_is_accepted_on_every_synchronous_target() -> None:
    text = WITH_ALL + (
        '      twin: {connection: twins, kind: twins, twin_id: "{RECORD_ID}", concurrency: 3}\n'
        '      back: {connection: goose, table: CON_TRO, id: "{RECORD_ID}", concurrency: 2}\n'
    )
    config = parse_config(text, "my.yaml", ENV)
    targets = config.pipelines["contacts"].targets
    assert (targets["twin"].concurrency, targets["back"].concurrency) == (3, 2)
