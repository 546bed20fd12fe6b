"""The rooms import in one direction.

    syncengine -> connectors (contract, registry, kit) and state, never back;
    vendor packages -> kit, contract, and (emulators and sandbox specs only) emulation;
    kit -> contract only: never a vendor package, never the emulation side;
    emulation -> kit and contract; only the sandbox command brings it into the engine.

Each rule is checked on the modules' import statements, so a new file is held to it
the moment it exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from connectors import BUILTIN

ROOT = Path(__file__).resolve().parents[2]
VENDORS = {f"connectors.{name}" for name in BUILTIN}
EMULATION = "connectors.emulation"
SANDBOX_SIDE = {"emulator.py", "sandbox.py"}
"""The only files of a vendor package that may use the emulation side."""
ENGINE_SANDBOX = frozenset({"syncengine/sandbox.py"})
"""The sandbox command: the one place the engine starts emulators."""


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def under(module: str, packages: set[str] | str) -> bool:
    wanted = {packages} if isinstance(packages, str) else packages
    return any(module == p or module.startswith(f"{p}.") for p in wanted)


def offenders(
    folder: str, forbidden: set[str], *, spare: frozenset[str] = frozenset()
) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        if relative in spare:
            continue
        bad = sorted(m for m in imported_modules(path) if under(m, forbidden))
        if bad:
            found[relative] = bad
    return found


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [("connectors", {"syncengine", "state"}), ("state", {"syncengine", "connectors"})],
)
def test_room_does_not_import_upstream_or_sideways(room: str, forbidden: set[str]) -> None:
    assert offenders(room, forbidden) == {}


def test_kit_imports_neither_a_vendor_package_nor_the_emulation_side() -> None:
    assert offenders("connectors/kit", VENDORS | {EMULATION}) == {}


def test_contract_and_registry_import_no_vendor_package_and_no_emulation() -> None:
    for name in ("contract.py", "__init__.py"):
        bad = {
            m
            for m in imported_modules(ROOT / "connectors" / name)
            if under(m, VENDORS | {EMULATION})
        }
        assert bad == set(), name


def test_emulation_imports_no_vendor_package() -> None:
    assert offenders("connectors/emulation", VENDORS) == {}


def test_vendor_client_code_never_imports_the_emulation_side() -> None:
    found: dict[str, list[str]] = {}
    for vendor in sorted(VENDORS):
        folder = ROOT / vendor.replace(".", "/")
        for path in sorted(folder.rglob("*.py")):
            if path.name in SANDBOX_SIDE:
                continue
            bad = sorted(m for m in imported_modules(path) if under(m, EMULATION))
            if bad:
                found[str(path.relative_to(ROOT))] = bad
    assert found == {}


def test_vendor_packages_do_not_import_each_other() -> None:
    found: dict[str, list[str]] = {}
    for vendor in sorted(VENDORS):
        others = VENDORS - {vendor}
        hits = offenders(vendor.replace(".", "/"), others)
        found.update(hits)
    assert found == {}


def test_engine_uses_no_vendor_package_and_emulation_only_in_the_sandbox_command() -> None:
    assert offenders("syncengine", VENDORS) == {}
    assert offenders("syncengine", {EMULATION}, spare=ENGINE_SANDBOX) == {}


def test_the_checks_see_what_they_are_meant_to(tmp_path: Path) -> None:
    """A rule that reads no import would pass anything: prove the reader sees each form."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import connectors.goose.source\n"
        "from connectors.emulation.kit import Faults\n"
        "from connectors import goose\n"
        "from . import sibling\n",
        encoding="utf-8",
    )
    modules = imported_modules(sample)
    assert under("connectors.goose.source", VENDORS)
    assert any(under(m, EMULATION) for m in modules)
    assert "connectors.goose" in modules
    assert not under("connectors.goosey", VENDORS)
