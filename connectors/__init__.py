"""Connectors: one package per external system, its source/target and its emulator.

`load_registry()` declares every built-in connector by its `type` name; the
engine looks connectors up by name, and a connector's package is imported (and
registers itself) the first time its name is looked up, so a configuration
that uses two connectors loads two.
"""

from __future__ import annotations

from connectors.contract import Registry, registry

BUILTIN = ("goose", "mongoose", "adt", "reltio", "dmm")


def load_registry() -> Registry:
    for name in BUILTIN:
        registry.declare(name, f"connectors.{name}")
    return registry


__all__ = ["BUILTIN", "load_registry", "registry"]
