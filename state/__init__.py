"""The durable store: SQLModel tables and the only code that writes them."""

from __future__ import annotations

from state.alerts import Condition, Notice, Transition
from state.db import StoreError
from state.lease import Lease, LeaseLost
from state.lineage import DeletionNode, DeliveryNode, Handover, Lineage
from state.models import DeliveryStatus, RunOutcome
from state.records import (
    LAG_BOUNDS,
    MALFORMED,
    WITHDRAWN,
    ClaimedDelivery,
    CursorState,
    GuardCounts,
    HeldCountMismatch,
    JournalResult,
    LagCounts,
    NewRecord,
    OutcomeCounts,
    OutcomeRecord,
    QueueAge,
    ReadWindow,
    RetryRule,
    Screen,
    TargetCounts,
    Withdrawal,
)
from state.store import Store

__all__ = [
    "LAG_BOUNDS",
    "MALFORMED",
    "WITHDRAWN",
    "ClaimedDelivery",
    "Condition",
    "CursorState",
    "DeletionNode",
    "DeliveryNode",
    "DeliveryStatus",
    "GuardCounts",
    "Handover",
    "HeldCountMismatch",
    "JournalResult",
    "LagCounts",
    "Lease",
    "LeaseLost",
    "Lineage",
    "NewRecord",
    "Notice",
    "OutcomeCounts",
    "OutcomeRecord",
    "QueueAge",
    "ReadWindow",
    "RetryRule",
    "RunOutcome",
    "Screen",
    "Store",
    "StoreError",
    "TargetCounts",
    "Transition",
    "Withdrawal",
]
