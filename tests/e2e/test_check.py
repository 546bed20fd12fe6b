"""`syncengine check` through the real CLI against the sandbox: every shipped connection
passes, read-only (the emulators' request logs hold no mutating call, and Goose's
DELETED service, whose `latest` cursor a call would move, is never called); a wrong
secret fails that connection's auth line without printing it; an unknown table, IDO or
property fails its object line; a closed port fails the reach line."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import httpx

from syncengine.sandbox import (
    ADT_TOKEN,
    DMM_TOKEN,
    GOOSE_CODE,
    GOOSE_ENGINE_KEY,
    MONGOOSE_PASSWORD,
    RELTIO_SECRET,
)
from tests.e2e.conftest import Env

CONNECTIONS = ["goose", "erp", "mdm", "twins", "crm"]
EMULATORS = ["goose", "mongoose", "reltio", "adt", "dmm"]


def pipelines(
    e2e: Env, *, goose_table: str = "CON_TRO", ido: str = "UserNames", prop: str = "Username"
) -> str:
    host = e2e.box.url("adt").removeprefix("http://")
    return f"""
    contacts:
      schedule: {{every: 60s}}
      source: {{connection: goose, tables: [{goose_table}, ANA_DIP], from: latest}}
      targets:
        mdm_people:
          connection: mdm
          crosswalk: {{type: GOOSE, value: "{{RECORD_ID}}"}}
        erp_users:
          connection: erp
          ido: {ido}
          key: "{{SYKEY}}"
          lookup: {{property: {prop}}}
        crm_customers:
          connection: crm
          entity: {{name: Customer}}
          key_attribute: ExternalId
          key: "{{RECORD_ID}}"
    sites:
      schedule: {{every: 5m}}
      source: {{connection: goose, tables: [ANA_SED], from: latest}}
      targets:
        twin_instance_purge:
          connection: twins
          kind: purge
          confirm_purge: "{host}"
          trigger_keys: ["SITE-HQ"]
    """


def compose(e2e: Env, **names: str) -> Path:
    return e2e.compose(CONNECTIONS, pipelines(e2e, **names))


def clear_request_logs(e2e: Env) -> None:
    for name in EMULATORS:
        httpx.delete(f"{e2e.box.url(name)}/_admin/requests", timeout=10).raise_for_status()


def check(e2e: Env, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """Exit code, the JSON lines, and everything the command printed (both streams,
    in text and in JSON)."""
    text = e2e.cli("check", "-c", str(e2e.config), *args)
    assert "Traceback" not in text.stderr, text.stderr
    as_json = e2e.cli("check", "-c", str(e2e.config), "-o", "json", *args)
    assert as_json.returncode == text.returncode, (text.stdout, as_json.stdout)
    probes: list[dict[str, Any]] = json.loads(as_json.stdout)
    printed = text.stdout + text.stderr + as_json.stdout + as_json.stderr
    return text.returncode, probes, printed


def lines(probes: list[dict[str, Any]], connection: str) -> dict[str, list[dict[str, Any]]]:
    by_step: dict[str, list[dict[str, Any]]] = {}
    for probe in probes:
        if probe["connection"] == connection:
            by_step.setdefault(probe["step"], []).append(probe)
    return by_step


def test_every_shipped_connection_passes_and_nothing_is_changed(e2e: Env) -> None:
    compose(e2e)
    e2e.box.delete_in_goose("CON_TRO", ["0-1"])
    clear_request_logs(e2e)
    result = e2e.cli("check", "-c", str(e2e.config))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = result.stdout.splitlines()
    assert rows and all(row.split()[2] == "ok" for row in rows), result.stdout
    for connection in CONNECTIONS:
        steps = {row.split()[1] for row in rows if row.split()[0] == connection}
        assert steps == {"reach", "auth", "object"}, (connection, result.stdout)
    assert "table CON_TRO exists" in result.stdout
    assert "IDO UserNames reads property Username" in result.stdout
    assert "not checkable: DestinationDBConnection" in result.stdout
    for name in EMULATORS:
        requests = e2e.admin(name, "/_admin/requests")
        vendor = [r for r in requests if not r["path"].startswith("/_admin")]
        assert vendor, f"{name}: the check never called it"
        assert [r for r in vendor if r["mutating"]] == [], (name, vendor)
    goose = [r["path"] for r in e2e.admin("goose", "/_admin/requests")]
    assert not [p for p in goose if p.startswith("/deleted")], goose
    # Goose's `latest` cursor did not move: the deletion made before the check is
    # still what the next read gets.
    answer = httpx.post(
        f"{e2e.box.goose_url}/deleted/",
        json={"code": GOOSE_CODE, "key": GOOSE_ENGINE_KEY, "table": "CON_TRO", "from": "latest"},
        timeout=10,
    ).json()
    assert [row["RECORD_ID"] for row in answer["result"]["data"]] == ["0-1"]


def test_json_is_the_same_lines_as_objects(e2e: Env) -> None:
    compose(e2e)
    code, probes, _ = check(e2e, "--connection", "goose")
    assert code == 0
    assert {p["connection"] for p in probes} == {"goose"}
    assert [p["step"] for p in probes] == ["reach", "auth", "object", "object", "object"]
    assert all(set(p) == {"connection", "step", "ok", "detail"} and p["ok"] for p in probes)


def test_a_wrong_secret_fails_that_auth_line_and_is_never_printed(e2e: Env) -> None:
    compose(e2e)
    text = e2e.config.read_text()
    wrong = {}
    for number, secret in enumerate(
        (GOOSE_ENGINE_KEY, MONGOOSE_PASSWORD, RELTIO_SECRET, ADT_TOKEN, DMM_TOKEN)
    ):
        assert secret in text
        wrong[secret] = f"wrong-secret-{number}-5f2c9e"
        text = text.replace(secret, wrong[secret])
    e2e.config.write_text(text)
    code, probes, printed = check(e2e)
    assert code == 1
    for connection in CONNECTIONS:
        steps = lines(probes, connection)
        assert [p["ok"] for p in steps["reach"]] == [True], (connection, probes)
        assert [p["ok"] for p in steps["auth"]] == [False], (connection, probes)
        assert "object" not in steps, (connection, probes)
        assert f"connections.{connection}." in steps["auth"][0]["detail"]
    for value in wrong.values():
        assert value not in printed


def test_an_unknown_table_ido_or_property_fails_its_object_line(e2e: Env) -> None:
    compose(e2e, goose_table="NO_TAB", ido="NoSuchIdo")
    code, probes, _ = check(e2e)
    assert code == 1
    goose = lines(probes, "goose")
    assert [p["ok"] for p in goose["auth"]] == [True]
    assert [(p["ok"], p["detail"].split(":")[0]) for p in goose["object"]] == [
        (False, "table NO_TAB"),
        (True, "table ANA_DIP exists (3 fields)"),
        (True, "table ANA_SED exists (3 fields)"),
    ]
    [ido] = lines(probes, "erp")["object"]
    assert not ido["ok"] and "NoSuchIdo" in ido["detail"]
    assert all(p["ok"] for c in ("mdm", "twins", "crm") for p in probes if p["connection"] == c)

    compose(e2e, prop="NoSuchProperty")
    code, probes, _ = check(e2e, "--connection", "erp")
    assert code == 1
    [prop] = lines(probes, "erp")["object"]
    assert not prop["ok"] and "NoSuchProperty" in prop["detail"]


def test_a_closed_port_fails_the_reach_line_in_one_line(e2e: Env) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    compose(e2e)
    e2e.config.write_text(
        e2e.config.read_text().replace(e2e.box.url("dmm"), f"http://127.0.0.1:{port}")
    )
    code, probes, _ = check(e2e, "--connection", "crm")
    assert code == 1
    assert probes == [
        {
            "connection": "crm",
            "step": "reach",
            "ok": False,
            "detail": f"connection refused on 127.0.0.1:{port}",
        }
    ]


def test_a_bad_option_or_connection_name_exits_2(e2e: Env) -> None:
    compose(e2e)
    unknown = e2e.cli("check", "-c", str(e2e.config), "--connection", "nope")
    assert unknown.returncode == 2
    assert "no connection named 'nope'; defined: goose, erp, mdm, twins, crm" in unknown.stderr
    output = e2e.cli("check", "-c", str(e2e.config), "-o", "xml")
    assert output.returncode == 2 and "use text or json" in output.stderr
