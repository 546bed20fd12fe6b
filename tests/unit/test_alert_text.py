"""What an alert says, on every sink: what, where, since when, the command; Slack-safe."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from syncengine.alerts.text import SLACK_SECTION, slack_message, summary

NOW = datetime(2025, 3, 4, 9, 40, tzinfo=UTC)


def payload(**changes: Any) -> dict[str, Any]:
    return {
        "event": "opened",
        "key": "target_stalled:erp_users/mongoose",
        "kind": "target_stalled",
        "pipeline": "erp_users",
        "target": "mongoose",
        "since": "2025-03-04T09:12:00+00:00",
        "resolved_at": None,
        "message": "every send failed: unreachable",
        "command": "syncengine status -p erp_users",
    } | changes


def test_an_alert_says_what_where_since_and_the_command() -> None:
    assert summary(payload(), NOW) == (
        "syncengine ALERT: target stalled at erp_users/mongoose: every send failed: "
        "unreachable, since 2025-03-04 09:12:00 UTC (28 min). "
        "To unstick: syncengine status -p erp_users"
    )


def test_a_recovery_says_recovered_and_how_long_it_lasted() -> None:
    text = summary(payload(event="resolved", resolved_at="2025-03-04T11:02:00+00:00"), NOW)
    assert text.startswith("syncengine RECOVERED: target stalled at erp_users/mongoose")
    assert "recovered at 2025-03-04 11:02:00 UTC (lasted 1 h 50 min)" in text
    blocks = json.dumps(slack_message(payload(event="resolved"), NOW)["blocks"])
    assert "Recovered" in blocks and "To unstick" not in blocks


def test_slack_cannot_be_made_to_ping_or_link_and_long_messages_are_clipped() -> None:
    message = slack_message(payload(message="<!channel> see <http://x|here> & " + "x" * 5000), NOW)
    assert "<!channel>" not in json.dumps(message)
    assert "&lt;!channel&gt;" in message["text"]
    sections = [b["text"]["text"] for b in message["blocks"] if b["type"] == "section"]
    assert all(len(text) <= SLACK_SECTION for text in [message["text"], *sections])
