"""Chained pipelines through the real CLI: what Reltio really deleted flows on to the
next hop, what it refused does not, and `trace` shows a record's whole path."""

from __future__ import annotations

import json
from pathlib import Path

from syncengine.sandbox import (
    GOOSE_CODE,
    PEOPLE,
)
from tests.e2e.conftest import Env

CONTACTS = [f"0-{n}" for n in range(1, 7)]
REFUSED = "0-4"


def chain_config(e2e: Env) -> Path:
    return e2e.compose(
        ["goose", "mdm", "erp", "twins"],
        """
        people:
          schedule: {every: 1s}
          source: {pipeline: contacts, target: mdm_people}
          targets:
            erp_users:
              connection: erp
              ido: UserNames
              key: "{SYKEY}"
              lookup: {property: Username}
            person_twins: {connection: twins, kind: twins, twin_id: "{RECORD_ID}"}
        contacts:
          schedule: {every: 1s}
          source: {connection: goose, tables: [CON_TRO], from: latest}
          targets:
            mdm_people:
              connection: mdm
              crosswalk: {type: GOOSE, value: "{RECORD_ID}"}
              poll_interval: 0.1s
              retry: {max_attempts: 2, backoff: 0.1s, max_backoff: 0.2s}
        """,
    )


def entity_with_goose_id(e2e: Env, record_id: str) -> str:
    return next(
        str(e["uri"])
        for e in e2e.admin("reltio", "/_admin/entities")
        if {"type": "configuration/sources/GOOSE", "value": record_id} in e["crosswalks"]
    )


def test_goose_to_reltio_to_mongoose_and_twins_stops_at_what_reltio_refused(e2e: Env) -> None:
    chain_config(e2e)
    refused_uri = entity_with_goose_id(e2e, REFUSED)
    e2e.admin_post("reltio", "/_admin/protect", {"uris": [refused_uri]})
    users_before = e2e.users()
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)

    counts = e2e.settle()

    assert counts[("contacts", "mdm_people")]["done"] == 5
    assert counts[("contacts", "mdm_people")]["dead"] == 1
    assert counts[("people", "erp_users")]["done"] == 5
    assert counts[("people", "person_twins")]["done"] == 5
    gone_users = users_before - e2e.users()
    refused_user = PEOPLE[int(REFUSED.split("-")[1]) - 1][0]
    assert gone_users == {PEOPLE[n - 1][0] for n in range(1, 7)} - {refused_user}
    twins_left = {t["$dtId"] for t in e2e.admin("adt", "/_admin/twins")}
    assert REFUSED in twins_left
    assert not twins_left & (set(CONTACTS) - {REFUSED})
    dead = json.loads(e2e.cli("dlq", "list", "-c", str(e2e.config), "-o", "json").stdout)
    assert [(r["pipeline"], r["key"]) for r in dead] == [("contacts", REFUSED)]
    assert "objectsFailedToDelete" in dead[0]["reason"]

    again = e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "5")
    assert again.returncode == 0
    assert e2e.counts() == counts, "a second run hands nothing over twice"


def test_trace_shows_one_records_whole_path(e2e: Env) -> None:
    chain_config(e2e)
    e2e.box.delete_in_goose("CON_TRO", ["0-1"])
    e2e.settle()
    result = e2e.cli("trace", "0-1", "-c", str(e2e.config), "-o", "json")
    assert result.returncode == 0, result.stderr
    [root] = json.loads(result.stdout)
    assert (root["pipeline"], root["stream"], root["key"]) == ("contacts", "CON_TRO", "0-1")
    assert root["origin"] == f"goose:{GOOSE_CODE}:CON_TRO:0-1"
    [mdm] = root["deliveries"]
    assert mdm["target"] == "mdm_people" and mdm["status"] == "done"
    assert mdm["job"]["kind"] == "reltio_delete" and mdm["job"]["state"] == "succeeded"
    [hop] = mdm["continued"]
    assert hop["pipeline"] == "people"
    assert {(d["target"], d["status"]) for d in hop["deliveries"]} == {
        ("erp_users", "done"),
        ("person_twins", "done"),
    }
    text = e2e.cli("trace", "0-1", "-c", str(e2e.config)).stdout
    for expected in ("seen in contacts CON_TRO 0-1", "-> mdm_people: done", "carried on by people",
                     "-> erp_users: done", "-> person_twins: done"):  # fmt: skip
        assert expected in text, text
    missing = e2e.cli("trace", "nope", "-c", str(e2e.config))
    assert missing.returncode == 1 and "no deletion with key or origin 'nope'" in missing.stderr
