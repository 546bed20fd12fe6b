"""What a source or a target wrote reaches the operator's tables as written: rich reads
`[abc]` in a plain string as a style tag and drops it, which hid Mongoose ItemIds such
as `UserNames.ID=[ab12...]` from `plan`, and would hide a key like `[x]` in `dlq list`."""

from __future__ import annotations

import io

from rich.console import Console

from syncengine.engine.plan import PipelinePlan, PlannedItem, TargetPlan
from syncengine.status import render_deliveries, render_plans


def wide() -> tuple[io.StringIO, Console]:
    out = io.StringIO()
    return out, Console(file=out, width=300)


def test_plan_details_and_keys_are_shown_as_written() -> None:
    item = PlannedItem("CON_TRO", "[k]", "delete", "would delete UserNames.ID=[abc-1]")
    plan = PipelinePlan("contacts", targets=[TargetPlan("erp_users", [item])])
    out, console = wide()
    render_plans([plan], console)
    text = out.getvalue()
    assert "UserNames.ID=[abc-1]" in text
    assert "[k]" in text


def test_dead_letter_keys_and_reasons_are_shown_as_written() -> None:
    row = {
        "id": 1,
        "pipeline": "p",
        "target": "t",
        "stream": "[s]",
        "key": "[bold]",
        "attempts": 1,
        "reason": "refused [red] by the server",
    }
    out, console = wide()
    render_deliveries([row], console, "dead letters")
    text = out.getvalue()
    assert "[s]" in text and "[bold]" in text and "refused [red] by the server" in text
