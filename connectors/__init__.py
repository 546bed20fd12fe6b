"""Connectors: one package per external system, its source/target and its emulator.

`load_registry()` imports every built-in connector so each can register its
`type` name; the engine calls it once and looks connectors up by name.
"""

from __future__ import annotations

import importlib

from connectors.contract import Registry, registry

BUILTIN = ("goose", "mongoose", "adt", "reltio", "dmm")


def load_registry() -> Registry:
    for name in BUILTIN:
        importlib.import_module(f"connectors.{name}")
    return registry


__all__ = ["BUILTIN", "load_registry", "registry"]
