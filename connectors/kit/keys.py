"""Key templates: how a target turns a deletion's fields into the key it deletes by.

A template is parsed once, at config time, so a typo fails `syncengine check`
instead of a run. Rendering refuses anything that is not a usable value
(missing, null, blank, or a type whose text form is a guess such as a float
or a dict): nothing is deleted unless the mapping produced a real key.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

_FORBIDDEN_IN_NAME = ".[]"


class UnmappedKey(Exception):
    """A delivery's fields do not produce a key; the delivery cannot be sent."""

    label = "no key"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def verdict(self) -> str:
        """The reason a target gives the delivery's dead outcome; one wording for every
        target, so an operator reads the same words whichever system refused."""
        return f"{self.label}: {self.reason}"


class UnsafeKey(UnmappedKey):
    """A key that, once written into a request, would change what the request addresses:
    a URL path step (`..`) or SQL text that widens a query. Never sent; no retry can
    make it safe."""

    label = "unsafe key"


class KeyTemplate:
    """`"{SYKEY}"`, `"USR-{RECORD_ID}"`: literal text and named fields, nothing more.

    Format specs, conversions and attribute or index access are refused: they
    would let a template reach into values in ways an integrator cannot see
    from the YAML, and a key must be the plain text of the source's fields.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self._parts = _parse(template)
        self.fields: tuple[str, ...] = tuple(
            dict.fromkeys(name for _, name in self._parts if name is not None)
        )
        # The common template is one bare field ("{SYKEY}"): rendered per record, so
        # it skips the join.
        only = self._parts[0][1] if len(self._parts) == 1 and not self._parts[0][0] else None
        self._only_field: str | None = only

    def render(self, fields: Mapping[str, Any]) -> str:
        if self._only_field is not None:
            return _value_text(self._only_field, fields)
        out: list[str] = []
        for literal, name in self._parts:
            out.append(literal)
            if name is not None:
                out.append(_value_text(name, fields))
        return "".join(out)

    def __repr__(self) -> str:
        return f"KeyTemplate({self.template!r})"

    def __str__(self) -> str:
        return self.template


def _parse(template: str) -> list[tuple[str, str | None]]:
    if not template.strip():
        raise ValueError("key template is empty; write e.g. '{SYKEY}' or 'USR-{RECORD_ID}'")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"key template {template!r}: {exc}; write fields as {{NAME}} and a literal "
            "brace as {{ or }}"
        ) from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            parts.append((literal, None))
            continue
        where = f"key template {template!r}: field {{{name}}}"
        if not name.strip():
            raise ValueError(f"{where}: a field needs a name, e.g. {{SYKEY}}")
        if name.isdigit():
            raise ValueError(f"{where}: positional fields are not allowed; name the field")
        if any(ch in name for ch in _FORBIDDEN_IN_NAME):
            raise ValueError(f"{where}: attribute or index access is not allowed")
        if conversion is not None:
            raise ValueError(f"{where}: conversions (!{conversion}) are not allowed")
        if spec:
            raise ValueError(f"{where}: format specs (:{spec}) are not allowed")
        parts.append((literal, name))
    if all(name is None for _, name in parts):
        raise ValueError(
            f"key template {template!r} uses no field, so every deletion would map to the "
            "same key; reference a field, e.g. {SYKEY}"
        )
    return parts


def _value_text(name: str, fields: Mapping[str, Any]) -> str:
    if name not in fields:
        known = ", ".join(sorted(map(str, fields))) or "none"
        raise UnmappedKey(f"field {name!r} is missing (fields: {known})")
    value = fields[name]
    if value is None:
        raise UnmappedKey(f"field {name!r} is null")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UnmappedKey(
            f"field {name!r} holds a {type(value).__name__}; only text and integers make keys"
        )
    text = str(value)
    if not text.strip():
        raise UnmappedKey(f"field {name!r} is blank")
    return text


__all__ = ["KeyTemplate", "UnmappedKey", "UnsafeKey"]
