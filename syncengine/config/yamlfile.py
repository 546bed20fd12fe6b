"""The one way the project reads YAML: safe, and a repeated key is an error.

YAML keeps the last of two equal keys in a mapping without a word, so a
second `guard:` under a target would silently drop the first (and a legal
hold with it). `UniqueKeyLoader` refuses that, naming both lines.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

_MERGE_TAG = "tag:yaml.org,2002:merge"


class RepeatedKeyError(ConstructorError):
    """A mapping holds the same key twice; `mapping` is the node, for finding its path."""

    def __init__(self, key: Any, mapping: MappingNode, first: Node, again: Node) -> None:
        super().__init__(
            context="while reading a mapping",
            context_mark=first.start_mark,
            problem=f"key {key!r} repeated (first at line {first.start_mark.line + 1})",
            problem_mark=again.start_mark,
        )
        self.key = key
        self.mapping = mapping
        self.first_line = first.start_mark.line + 1
        self.again_line = again.start_mark.line + 1


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that raises `RepeatedKeyError` on a key written twice in a mapping.

    Keys brought in by a merge (`<<: *anchor`) may still be overridden by the
    mapping's own keys, as YAML intends; only keys written twice are refused.
    """

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Hashable, Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, Hashable):
                    continue  # the base constructor reports an unhashable key itself
                if key in seen:
                    raise RepeatedKeyError(key, node, seen[key], key_node)
                seen[key] = key_node
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def compose(text: str) -> Node | None:
    """The node tree, which keeps every key's line (for messages and YAML paths).

    Raises `yaml.YAMLError` when the text is not YAML.
    """
    return yaml.compose(text, Loader=UniqueKeyLoader)


def construct(root: Node) -> Any:
    """The data of a composed tree. Raises `RepeatedKeyError`, whose `mapping` is a node
    of `root`."""
    loader = UniqueKeyLoader("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


def load(text: str) -> Any:
    """`yaml.safe_load` that refuses a repeated key."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
