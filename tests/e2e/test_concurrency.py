"""`concurrency: 4` against the emulators: every record deleted exactly once, with
batches of one so that several are in flight, under latency and faults."""

from __future__ import annotations

import re

from syncengine.sandbox import PEOPLE
from tests.e2e.conftest import Env
from tests.e2e.test_faults import run_until_settled

CONTACTS = [f"0-{i}" for i in range(1, 13)]
EXPECTED = sorted(PEOPLE[i][0] for i in range(12))


def test_four_batches_in_flight_delete_each_record_exactly_once(e2e: Env) -> None:
    e2e.write_config(timeout="2", attempts=3)
    one_per_batch = r"\1batch_size: 1\n\1concurrency: 4"
    text, replaced = re.subn(
        r"^( +)batch_size: 3$", one_per_batch, e2e.config.read_text(), flags=re.M
    )
    assert replaced == 1
    e2e.config.write_text(text)
    e2e.faults(e2e.box.mongoose_url, latency=0.05, error_rate=0.1, drop_after_apply_rate=0.1)
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)

    first = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert first.returncode == 0, first.stderr
    assert '"batch_sent"' in first.stderr
    e2e.faults(e2e.box.mongoose_url, latency=0.05, error_rate=0.0, drop_after_apply_rate=0.0)
    counts = run_until_settled(e2e)

    assert counts["done"] == 12 and counts["dead"] == 0 and counts["in_flight"] == 0
    assert set(EXPECTED).isdisjoint(e2e.users())
    deleted = sorted(row["properties"]["Username"] for row in e2e.mongoose_deleted())
    assert deleted == EXPECTED, "each row deleted exactly once, nothing else"
