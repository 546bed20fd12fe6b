"""The README's Dagster recipe, run for real: `make dagster-check` installs Dagster in a
venv of its own (it is not a dependency of syncengine) and runs this script, which
starts the sandbox on free ports, deletes a contact in Goose and materializes the
asset. It exits non-zero when the asset fails or deletes nothing.

No `from __future__ import annotations` here: Dagster reads the asset's `context`
annotation as an object, as in the README's recipe."""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import dagster as dg

from connectors.kit.serving import free_port
from syncengine import api
from syncengine.config import load_config
from syncengine.sandbox import Sandbox, default_ports

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        shutil.copy(ROOT / "config.yaml", path)
        shipped = default_ports()
        ports = {name: free_port() for name in shipped}
        with Sandbox(ports) as box:
            config = load_config(
                path, env={}, moved_ports={shipped[n]: p for n, p in ports.items()}
            )
            box.delete_in_goose("CON_TRO", ["0-1", "0-2"])

            # The recipe, as the README gives it (the config is built above, on free ports).
            @dg.asset
            def contacts_deletions(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
                summary = api.run_once(config, pipeline="contacts", job_wait=30)
                summary.raise_for_failure()
                return dg.MaterializeResult(
                    metadata={"summary": dg.MetadataValue.json(summary.as_dict())}
                )

            result = dg.materialize([contacts_deletions])
            if not result.success:
                return 1
            (materialized,) = result.asset_materializations_for_node("contacts_deletions")
            summary = materialized.metadata["summary"].value
            print(json.dumps(summary, indent=2))
            (pipeline,) = summary["pipelines"]
            delivered = sum(t["delivered"] for t in pipeline["targets"])
            print(
                f"Dagster materialized contacts_deletions: pulled {pipeline['pulled']}, "
                f"delivered {delivered}"
            )
            return 0 if pipeline["pulled"] == 2 and delivered >= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
