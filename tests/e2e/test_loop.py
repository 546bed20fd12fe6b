"""A loop Goose -> Reltio -> Goose must not echo.

Two Goose contacts mirror each other (each one's SYKEY is the other's RECORD_ID).
A user deletes one; it flows to Reltio, then a chained pipeline deletes its mirror
in Goose through the OPERATION service. Goose then reports that second deletion,
made with the engine's own key: `imc: false` keeps it out of the read, and with
`imc: true` the journal recognises it as the engine's own and propagates nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from syncengine.sandbox import GOOSE_CODE, GOOSE_ENGINE_KEY
from tests.e2e.conftest import Env

MIRRORS = [
    {"RECORD_ID": "0-90", "SYKEY": "0-91", "CORAS": "Ada Lovelace (CRM copy)"},
    {"RECORD_ID": "0-91", "SYKEY": "0-90", "CORAS": "Ada Lovelace (web copy)"},
]


def loop_config(e2e: Env, imc: bool) -> Path:
    return e2e.compose(
        ["goose", "mdm"],
        f"""
        contacts:
          schedule: {{every: 1s}}
          source: {{connection: goose, tables: [CON_TRO], from: latest, imc: {str(imc).lower()}}}
          targets:
            mdm_people:
              connection: mdm
              crosswalk: {{type: GOOSE, value: "{{RECORD_ID}}"}}
              poll_interval: 0.1s
        back_to_goose:
          schedule: {{every: 1s}}
          source: {{pipeline: contacts, target: mdm_people}}
          targets:
            mirror:
              connection: goose
              table: CON_TRO
              id: "{{SYKEY}}"
        """,
    )


@pytest.mark.parametrize("imc", [True, False], ids=["imc-true", "imc-false"])
def test_the_engines_own_goose_delete_is_not_propagated_again(e2e: Env, imc: bool) -> None:
    seed = {"companies": {GOOSE_CODE: [GOOSE_ENGINE_KEY]}, "tables": {"CON_TRO": MIRRORS}}
    e2e.admin_post("goose", "/_admin/seed", seed)
    loop_config(e2e, imc)
    e2e.box.delete_in_goose("CON_TRO", ["0-90"])
    for _ in range(4):
        result = e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "10")
        assert result.returncode == 0, result.stderr

    deleted = [(d["RECORD_ID"], d["by_key"]) for d in e2e.admin("goose", "/_admin/deletions")]
    assert ("0-91", GOOSE_ENGINE_KEY) in deleted, "the mirror was deleted by the engine"
    assert [r for r, _ in deleted].count("0-90") == 1
    assert [r for r, _ in deleted].count("0-91") == 1

    status = e2e.status()
    contacts = next(p for p in status["pipelines"] if p["pipeline"] == "contacts")
    assert contacts["targets"][0]["done"] == 1, "only the user's deletion reached Reltio"
    assert contacts["deletions"] == (2 if imc else 1)

    trace = json.loads(e2e.cli("trace", "0-90", "-c", str(e2e.config), "-o", "json").stdout)
    [root] = trace
    [to_mdm] = root["deliveries"]
    [hop] = to_mdm["continued"]
    [mirror] = hop["deliveries"]
    assert mirror["target"] == "mirror" and mirror["status"] == "done"
    assert mirror["effect"] == f"goose:{GOOSE_CODE}:CON_TRO:0-91"
    echoes = [(e["pipeline"], e["key"]) for e in mirror["echoes"]]
    assert echoes == ([("contacts", "0-91")] if imc else [])
    if imc:
        [echo] = mirror["echoes"]
        assert echo["deliveries"] == [], "an echo gets no delivery"
        text = " ".join(e2e.cli("trace", "0-91", "-c", str(e2e.config)).stdout.split())
        assert "reported back to contacts CON_TRO 0-91" in text
        assert "made by this engine, not propagated again" in text
