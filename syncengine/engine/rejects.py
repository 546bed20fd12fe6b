"""Records a source could not use, in the journal's terms: redacted, keyed by content.

A malformed record has no key of its own, so it is keyed by a digest of its
redacted fields: the same row read again in an overlapping window is a
duplicate like any record, and two different rows are two dead letters.
Fields are redacted by the rule the logs follow (`scrub_mapping`): a field
whose name marks a secret (key, password, token, secret and the like) becomes
"***", and the value of every configured secret is cut out wherever it appears.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from connectors.contract import RejectedRecord
from state import NewRecord
from syncengine.logs import SECRETS, scrub_mapping

KEY_PREFIX = "malformed:"
"""Longer than any Goose RECORD_ID (25 characters) with the digest: never a real key."""


def rejected_records(rejected: Sequence[RejectedRecord]) -> list[NewRecord]:
    records = []
    for reject in rejected:
        fields = scrub_mapping(dict(reject.fields))
        text = json.dumps(fields, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        records.append(
            NewRecord(f"{KEY_PREFIX}{digest}", fields, rejected=SECRETS.scrub(reject.reason))
        )
    return records


__all__ = ["KEY_PREFIX", "rejected_records"]
