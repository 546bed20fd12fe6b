"""syncengine: keep deletions consistent across business systems.

The command line is `syncengine` (syncengine.cli); from Python, for an orchestrator or
a script, use `syncengine.api` (run once, plan, status, with typed results and errors).
"""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """`syncengine.__version__`, read from the installed package's metadata on demand
    (so importing the package costs nothing for the commands that never ask)."""
    if name == "__version__":
        from importlib.metadata import version

        return version("syncengine")
    raise AttributeError(name)
