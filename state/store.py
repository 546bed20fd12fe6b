"""The only code that writes the durable state: one `Store`, made of its parts.

Every method is one short transaction. The order of writes is what keeps the
invariants: a source call is marked in flight before it is sent; its records,
their deliveries and the next cursor are committed together; a delivery is
claimed before its send and its outcome recorded after. Each concern lives in
its own module (`journal`, `deliveries`, `jobs`, `lease`, `runs`) over the same
engine; `Store` only opens the engine and puts them together.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from state.alerts import Alerts
from state.db import StoreError, make_engine, refuse_old_schema, upgrade
from state.deliveries import Deliveries
from state.health import HealthReads
from state.jobs import Jobs
from state.journal import Journal
from state.lease import Leases
from state.lineage import Lineage
from state.models import Scrub, scrub_error_text
from state.runs import Runs
from state.schema import at_head


class Store(Leases, Runs, Journal, Deliveries, Jobs, Alerts, HealthReads):
    """The durable state behind one SQLAlchemy URL."""

    def __init__(
        self, url: str, *, engine: Engine | None = None, scrub: Scrub | None = None
    ) -> None:
        """`scrub` cleans every error message before it is written (of secrets the
        process knows and the store does not)."""
        super().__init__(engine or make_engine(url))
        self.url = url
        if scrub is not None:
            scrub_error_text(self.engine, scrub)
        self.lineage = Lineage(self.engine)

    @classmethod
    def open(cls, url: str, *, scrub: Scrub | None = None, migrate: bool = True) -> Store:
        """`migrate=False` (state.migrate: manual) refuses a store behind the code's schema
        instead of upgrading it, for operators who upgrade deliberately (after a backup);
        a new, empty database is still created at the newest schema."""
        store = cls(url, scrub=scrub)
        try:
            if not at_head(store.engine):
                if not migrate:
                    refuse_old_schema(store.engine)
                upgrade(store.engine)
        except DBAPIError as exc:
            store.close()
            raise StoreError(f"state.url: cannot open the store: {exc.orig}") from None
        except StoreError:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()
