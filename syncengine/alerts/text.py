"""What a person reads: what is wrong, where, since when, and the command that unsticks it.

Every sink carries the same sentence (a webhook in its `text`, Slack as its
fallback text and in blocks, a command in the JSON on its standard input), so
an alert read on a phone is enough to act on without opening a log.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from syncengine.health import human

TITLES = {
    "pipeline_failing": "pipeline failing",
    "pipeline_stopped": "pipeline stopped",
    "pipeline_overdue": "pipeline overdue",
    "target_stalled": "target stalled",
    "source_beyond_retention": "source beyond retention",
    "slo_breached": "SLO breached",
    "deliveries_held": "deliveries held by the guard",
    "dead_letters": "dead letters",
}


def title(kind: str) -> str:
    return TITLES.get(kind, kind.replace("_", " "))


def where(payload: dict[str, Any]) -> str:
    pipeline, target = payload.get("pipeline"), payload.get("target")
    if pipeline and target:
        return f"{pipeline}/{target}"
    return str(pipeline or target or "every pipeline")


def fallback_command(kind: str, pipeline: str | None, target: str | None, config: str) -> str:
    """A command to start from when the condition named none: every alert carries one."""
    p = f" -p {pipeline}" if pipeline else ""
    t = f" -t {target}" if target else ""
    c = f" -c {config}"
    return {
        "pipeline_stopped": f"syncengine check{c}",
        "deliveries_held": f"syncengine held{p}{c}",
        "dead_letters": f"syncengine dlq list{p}{t}{c}",
    }.get(kind, f"syncengine status{p}{c}")


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _at(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def since_text(payload: dict[str, Any], now: datetime) -> str:
    since = _moment(payload.get("since"))
    if since is None:
        return "since an unknown time"
    resolved = _moment(payload.get("resolved_at"))
    if payload.get("event") == "resolved" and resolved is not None:
        lasted = human((resolved - since).total_seconds())
        return f"since {_at(since)}, recovered at {_at(resolved)} (lasted {lasted})"
    return f"since {_at(since)} ({human((now - since).total_seconds())})"


def summary(payload: dict[str, Any], now: datetime) -> str:
    """One paragraph: the alert as plain text."""
    head = f"{title(str(payload.get('kind', '')))} at {where(payload)}"
    message = str(payload.get("message") or "").strip()
    for named in (f"target {where(payload)}: ", f"pipeline {where(payload)}: "):
        message = message.removeprefix(named)  # the head names the place already
    if payload.get("event") == "resolved":
        return f"syncengine RECOVERED: {head}, {since_text(payload, now)}. Was: {message}"
    return (
        f"syncengine ALERT: {head}: {message.rstrip('.')}, {since_text(payload, now)}. "
        f"To unstick: {payload.get('command', '')}"
    )


SLACK_SECTION = 3000
"""Slack refuses a section longer than this (a long error quoted in the message)."""


def _mrkdwn(text: str) -> str:
    """Slack reads &, < and > as markup: escaped, a message cannot ping @channel or
    hide a link. Clipped to what a section takes."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return escaped if len(escaped) <= SLACK_SECTION else escaped[: SLACK_SECTION - 1] + "…"


def slack_message(payload: dict[str, Any], now: datetime) -> dict[str, Any]:
    """An incoming-webhook message: `text` for notifications and clients without
    blocks, `blocks` laid out for reading."""
    resolved = payload.get("event") == "resolved"
    head = f"{title(str(payload.get('kind', '')))} at {where(payload)}"
    headline = (
        f":white_check_mark: *Recovered: {head}*" if resolved else f":rotating_light: *{head}*"
    )
    details = [
        f"*What:* {payload.get('message', '')}",
        f"*Where:* {where(payload)}",
        f"*When:* {since_text(payload, now)}",
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(headline)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn("\n".join(details))}},
    ]
    if not resolved:
        command = str(payload.get("command", "")).replace("`", "'")
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _mrkdwn(f"*To unstick:* `{command}`")},
            }
        )
    blocks.append(
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": _mrkdwn(f"syncengine · {payload.get('key', '')}")}
            ],
        }
    )
    return {"text": _mrkdwn(summary(payload, now)), "blocks": blocks}
