"""Alerts that reach a person: the sinks, and the notifier that sends the store's outbox.

Which conditions raise an alert, and when, is decided elsewhere (`syncengine.health`
and `state.alerts`); this package only sends what was queued, to whom it was queued.
"""

from __future__ import annotations

from syncengine.alerts.notifier import Notifier, once_deadline
from syncengine.alerts.sinks import SendFailed, sink_names
from syncengine.alerts.text import summary

__all__ = ["Notifier", "SendFailed", "once_deadline", "sink_names", "summary"]
