"""Read a YAML file into a validated `Config`, or fail with every problem at once.

Each problem names the file, the line when known, the YAML path and what to
do about it, so an integrator can fix a file without reading code.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any, get_args

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from connectors import load_registry
from connectors.contract import ConsumesServerCursors, Registry, UnknownConnectorType
from connectors.kit.redact import SHORTEST_SAFE
from syncengine.config import yamlfile
from syncengine.config.interpolate import MissingVariable, Path, interpolate
from syncengine.config.models import (
    CHAIN,
    ENGINE_SOURCE_KEYS,
    ENGINE_TARGET_KEYS,
    NAME_PATTERN,
    Config,
    PipelineConfig,
    RawConfig,
    RawPipeline,
    RawSource,
    RawTarget,
    SourceConfig,
    StateSettings,
    TargetConfig,
    TargetRef,
)


@dataclass(frozen=True)
class ConfigIssue:
    path: Path
    message: str
    line: int | None = None

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        dotted = format_path(self.path) or "(top level)"
        return f"{where}: {dotted}: {self.message}"


class ConfigError(Exception):
    def __init__(self, file: str, issues: Sequence[ConfigIssue]) -> None:
        self.file = file
        self.issues = list(issues)
        super().__init__("\n".join(issue.render(file) for issue in self.issues))


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_map(root: yaml.Node | None) -> dict[Path, int]:
    """YAML path -> 1-based line, from the composed node tree."""
    lines: dict[Path, int] = {}

    def walk(node: yaml.Node, path: Path) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = str(key.value)
                lines[(*path, name)] = key.start_mark.line + 1
                walk(value, (*path, name))
                lines[(*path, name)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, value in enumerate(node.value):
                walk(value, (*path, index))

    if root is not None:
        walk(root, ())
    return lines


def _node_path(root: yaml.Node, target: yaml.Node) -> Path | None:
    """The YAML path of `target`, a node somewhere under `root`."""
    stack: list[tuple[yaml.Node, Path]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if isinstance(node, yaml.MappingNode):
            stack.extend((value, (*path, str(key.value))) for key, value in node.value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((value, (*path, index)) for index, value in enumerate(node.value))
    return None


def _line_for(lines: Mapping[Path, int], path: Path) -> int | None:
    for size in range(len(path), -1, -1):
        if path[:size] in lines:
            return lines[path[:size]]
    return None


def _pydantic_issues(
    error: ValidationError, prefix: Path, model: type[BaseModel] | None = None
) -> list[ConfigIssue]:
    items = [
        (tuple(p for p in item["loc"] if not str(p).startswith("function-after")), item)
        for item in error.errors(include_url=False)
    ]
    # A misspelt required key is two errors to pydantic (an unknown key, a missing one)
    # but one mistake to the user: report it once, where it is written, with the near name.
    meant = _misspelt_required(items)
    absorbed = {(*where[:-1], wanted) for where, wanted in meant.items()}
    issues = []
    for loc, item in items:
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = f"unknown key {loc[-1]!r}"
            known = (
                sorted((f.alias or name) for name, f in model.model_fields.items())
                if model is not None and len(loc) == 1
                else []
            )
            near = meant.pop(loc, None) or _near(str(loc[-1]), known)
            if near is not None:
                message += f"; did you mean {near!r}?"
            elif known:
                message += f"; valid keys here: {', '.join(known)}"
        elif item["type"] == "missing":
            if loc in absorbed:
                continue
            message = "required key is missing"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        issues.append(ConfigIssue((*prefix, *loc), _without_input(message, item["input"])))
    # A model that takes extra keys (a target block, before its connector is known) does
    # not call the misspelling unknown itself.
    issues.extend(
        ConfigIssue((*prefix, *where), f"unknown key {where[-1]!r}; did you mean {wanted!r}?")
        for where, wanted in meant.items()
    )
    return issues


def _near(written: str, known: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(written, known, n=1, cutoff=0.8)
    return close[0] if close else None


def _misspelt_required(items: Sequence[tuple[Path, Any]]) -> dict[Path, str]:
    """Each written key that is a near spelling of a required key reported missing beside
    it (`conection` for `connection`): its location -> the key it was meant to be."""
    meant: dict[Path, str] = {}
    for loc, item in items:
        given = item["input"]
        if item["type"] != "missing" or not loc or not isinstance(given, Mapping):
            continue
        written = [str(k) for k in given if (*loc[:-1], str(k)) not in meant]
        near = _near(str(loc[-1]), written)
        if near is not None:
            meant[(*loc[:-1], near)] = str(loc[-1])
    return meant


HIDDEN = "***"
"""What a settings error shows in place of the value it refused, as the logs do."""


def _without_input(message: str, given: Any) -> str:
    """The message with every text the refused input holds taken out: what was pasted
    in the wrong place (a password as a timeout) must not reach a terminal or a CI log,
    whichever validator, of whichever connector, quoted it, whole or a word of it (a
    cron parser quotes the field it could not read, a validator may quote the value
    it made of it). Quoted forms go first, then a text of 4 characters or more wherever
    it stands: shorter ones would hit the words of the message itself."""
    leaves = _texts(given)
    words = {word for leaf in leaves for word in leaf.split()}
    texts = sorted({t for t in (*leaves, *words) if t}, key=len, reverse=True)
    for text in texts:
        message = message.replace(repr(text), HIDDEN)
    for text in texts:
        if len(text) >= 4:
            message = message.replace(text, HIDDEN)
    return message


def _texts(given: Any) -> list[str]:
    """Every string in an input: the value, or the leaves of a block a model refused."""
    if isinstance(given, str):
        return [given]
    if isinstance(given, Mapping):
        return [t for value in given.values() for t in _texts(value)]
    if isinstance(given, list | tuple):
        return [t for value in given for t in _texts(value)]
    return []


def _secret_fields(models: Mapping[str, Any], prefix: Path) -> list[tuple[Path, str]]:
    """(YAML path, value) of every non-empty secret under `models`, keyed by name."""
    found: list[tuple[Path, str]] = []

    def walk(value: Any, path: Path) -> None:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            if secret:
                found.append((path, secret))
        elif isinstance(value, BaseModel):
            for name, field in type(value).model_fields.items():
                walk(getattr(value, name), (*path, field.alias or name))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*path, str(key)))
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(item, (*path, index))

    for name, model in models.items():
        walk(model, (*prefix, name))
    return found


def _empty_secrets(model: type[BaseModel], block: Mapping[str, Any]) -> list[str]:
    """The secret keys of a connection block that are given but empty (or blank): most
    often a variable exported empty, which would send no credential at all and fail
    only at the first call, or be taken as anonymous by a lenient server."""
    return [
        key
        for name, field in model.model_fields.items()
        if (SecretStr is field.annotation or SecretStr in get_args(field.annotation))
        and isinstance(value := block.get(key := field.alias or name), str)
        and not value.strip()
    ]


def _empty(written: Any) -> str:
    names = _VARIABLE.findall(written) if isinstance(written, str) else []
    if names:
        given = " and ".join(f"environment variable {n}" for n in dict.fromkeys(names))
        return f"this secret is empty: {given} gives an empty value; export it with the secret"
    return "this secret is empty; write it, or ${NAME} to read it from the environment"


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def collect_secrets(models: Sequence[Any]) -> tuple[str, ...]:
    found = _secret_fields({str(n): model for n, model in enumerate(models)}, ())
    return tuple(dict.fromkeys(secret for _, secret in found))


def _short_secrets(connections: Mapping[str, Any]) -> list[ConfigIssue]:
    return [
        ConfigIssue(
            path,
            f"this secret is {len(secret)} characters long; one shorter than "
            f"{SHORTEST_SAFE} cannot be scrubbed reliably from logs and errors (its base64 "
            "form is too short to look for), so use a longer one if the service allows it",
        )
        for path, secret in _secret_fields(connections, ("connections",))
        if len(secret) < SHORTEST_SAFE
    ]


def _unresolved(missing: MissingVariable) -> str:
    if missing.problem:
        return missing.problem
    if missing.bad_syntax:
        return (
            f"bad variable syntax ${{{missing.name}}}; write ${{NAME}}, ${{NAME:-default}} "
            "or ${file:PATH}"
        )
    return (
        f"environment variable {missing.name} is not set; "
        f"export it or write ${{{missing.name}:-default}}"
    )


def load_config(
    file: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    moved_ports: Mapping[int, int] | None = None,
) -> Config:
    """`moved_ports` (old -> new) rewrites every loopback `host:port` before parsing (the
    URLs and a purge's `confirm_purge`): the demo's emulators may listen elsewhere than
    the shipped file says."""
    name = str(file)
    try:
        text = FsPath(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            name, [ConfigIssue((), "file not found; pass -c PATH to your YAML")]
        ) from None
    except OSError as exc:
        raise ConfigError(name, [ConfigIssue((), f"cannot read: {exc.strerror}")]) from None
    for old, new in (moved_ports or {}).items():
        text = re.sub(rf"\b(127\.0\.0\.1|localhost):{old}\b", rf"\g<1>:{new}", text)
    return parse_config(text, name, os.environ if env is None else env)


def parse_config(text: str, name: str, env: Mapping[str, str]) -> Config:
    root: yaml.Node | None = None
    try:
        root = yamlfile.compose(text)
        tree = None if root is None else yamlfile.construct(root)
    except yamlfile.RepeatedKeyError as exc:
        assert root is not None
        where = _node_path(root, exc.mapping) or ()
        raise ConfigError(
            name,
            [
                ConfigIssue(
                    (*where, str(exc.key)),
                    f"key {str(exc.key)!r} is written twice, at lines {exc.first_line} and "
                    f"{exc.again_line}; YAML would keep only the second, so merge them into one",
                    exc.again_line,
                )
            ],
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(name, [ConfigIssue((), f"not valid YAML: {problem}", line)]) from None
    if not isinstance(tree, dict):
        raise ConfigError(
            name, [ConfigIssue((), "the file must be a mapping with connections and pipelines")]
        )
    lines = _line_map(root)
    written = tree
    tree, missing = interpolate(tree, env, base=FsPath(name).resolve().parent)
    issues = [ConfigIssue(m.path, _unresolved(m)) for m in missing]
    config: Config | None = None
    try:
        raw = RawConfig.model_validate(tree)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(exc, (), RawConfig))
    else:
        config, more = _second_pass(raw, name, written)
        issues.extend(more)
    if issues:
        # A missing variable already explains any complaint about the value it left empty.
        unset = {m.path for m in missing}
        issues = [i for n, i in enumerate(issues) if n < len(missing) or i.path not in unset]
        raise ConfigError(
            name,
            [ConfigIssue(i.path, i.message, i.line or _line_for(lines, i.path)) for i in issues],
        )
    assert config is not None
    warnings = [
        ConfigIssue(w.path, w.message, _line_for(lines, w.path)).render(name)
        for w in _short_secrets(config.connections)
    ]
    return config.model_copy(update={"warnings": tuple(warnings)}) if warnings else config


def _second_pass(
    raw: RawConfig, name: str, written: Mapping[str, Any]
) -> tuple[Config | None, list[ConfigIssue]]:
    registry = load_registry()
    issues: list[ConfigIssue] = []
    connections: dict[str, Any] = {}
    for conn_name, block in raw.connections.items():
        where: Path = ("connections", conn_name)
        if not re.fullmatch(NAME_PATTERN, conn_name):
            issues.append(ConfigIssue(where, "connection name: use letters, digits, _ . -"))
            continue
        kind = block.get("type")
        if not isinstance(kind, str):
            issues.append(
                ConfigIssue((*where, "type"), f"required; one of: {', '.join(registry.names())}")
            )
            continue
        try:
            info = registry.get(kind)
        except UnknownConnectorType as exc:
            known = ", ".join(exc.known)
            issues.append(ConfigIssue((*where, "type"), f"unknown connection type; known: {known}"))
            continue
        empty = _empty_secrets(info.connection_settings, block)
        as_written = written.get("connections", {}).get(conn_name, {})
        issues.extend(ConfigIssue((*where, key), _empty(as_written.get(key))) for key in empty)
        # Validated as if given, so the block's other problems are still told, and the
        # empty one once, here.
        block = {**block, **dict.fromkeys(empty, "x" * SHORTEST_SAFE)}
        try:
            connections[conn_name] = info.connection_settings.model_validate(block)
        except ValidationError as exc:
            issues.extend(_pydantic_issues(exc, where, info.connection_settings))

    pipelines: dict[str, PipelineConfig] = {}
    unscoped: dict[tuple[str, str], str] = {}
    for pipe_name, pipe in raw.pipelines.items():
        where = ("pipelines", pipe_name)
        if not re.fullmatch(NAME_PATTERN, pipe_name):
            issues.append(ConfigIssue(where, "pipeline name: use letters, digits, _ . -"))
            continue
        source = _source(connections, raw, pipe_name, pipe.source, (*where, "source"), issues)
        targets: dict[str, TargetConfig] = {}
        for target_name, target in pipe.targets.items():
            built = _block(
                connections,
                raw.connections,
                target.connection,
                target.model_extra or {},
                (*where, "targets", target_name),
                "target",
                issues,
            )
            probe = _probe(built, target, connections, registry)
            unscoped[(pipe_name, target_name)] = _unscoped(probe)
            fraction = _uncountable(built[0] if built else None, target, registry)
            concurrent = _concurrency_problem(built, target, probe)
            unguardable = _unguardable(probe, target, (*where, "targets", target_name))
            if fraction is not None:
                where_guard = (*where, "targets", target_name, "guard", "max_fraction")
                issues.append(ConfigIssue(where_guard, fraction))
            elif concurrent is not None:
                where_conc = (*where, "targets", target_name, "concurrency")
                issues.append(ConfigIssue(where_conc, concurrent))
            elif unguardable:
                issues.extend(unguardable)
            elif built is not None:
                targets[target_name] = TargetConfig(
                    name=target_name,
                    connection=target.connection,
                    connection_type=built[0],
                    retry=target.retry,
                    jobs=target.jobs,
                    guard=target.guard,
                    settings=built[1],
                    concurrency=target.concurrency,
                    slo=target.slo,
                )
        if source is not None and len(targets) == len(pipe.targets):
            pipelines[pipe_name] = PipelineConfig(
                name=pipe_name,
                schedule=pipe.schedule,
                alerts=pipe.alerts,
                slo=pipe.slo,
                enabled=pipe.enabled,
                source=source,
                targets=targets,
            )
    issues.extend(_loops(pipelines))
    issues.extend(_chains_on_unscoped(pipelines, unscoped))
    issues.extend(_shared_server_cursors(pipelines, connections))
    if issues:
        return None, issues
    config = Config(
        path=name,
        state=_anchored(raw.state, name),
        logging=raw.logging,
        metrics=raw.metrics,
        health=raw.health,
        alerts=raw.alerts,
        connections=connections,
        pipelines=pipelines,
        # A Slack webhook's URL and a webhook's signing key are credentials too.
        secrets=collect_secrets([*connections.values(), raw.alerts]),
    )
    return config, []


SQLITE_FILE = re.compile(r"sqlite(\+\w+)?:///(?!/)(?!:memory:)(?!file:)([^?]+)(\?.*)?")
"""A SQLite URL naming a relative file (four slashes would be an absolute one)."""


def _anchored(state: StateSettings, file: str) -> StateSettings:
    """Relative paths of the store are taken from the configuration file's folder, not
    from wherever the command runs: `status` run from / once created /data/my.db and
    said "never run", beside a daemon's real store."""
    base = FsPath(file).resolve().parent
    update: dict[str, str] = {}
    found = SQLITE_FILE.fullmatch(state.url)
    if found is not None:
        driver, path, query = found.group(1) or "", found.group(2), found.group(3) or ""
        update["url"] = f"sqlite{driver}:///{base / path}{query}"
    if not FsPath(state.artifacts).is_absolute():
        update["artifacts"] = str(base / state.artifacts)
    return state.model_copy(update=update) if update else state


def _uncountable(kind: str | None, target: RawTarget, registry: Registry) -> str | None:
    """A max_fraction on a target that cannot count its records would guard nothing."""
    if kind is None or target.guard.max_fraction is None or registry.get(kind).countable:
        return None
    able = ", ".join(name for name in registry.names() if registry.get(name).countable)
    return (
        f"a {kind} target cannot count its records, so max_fraction cannot guard it; "
        f"max_fraction works on targets of type {able}; use max_per_run or max_per_hour here"
    )


def _probe(
    built: tuple[str, Any] | None,
    target: RawTarget,
    connections: Mapping[str, Any],
    registry: Registry,
) -> object | None:
    """The target built to be asked what it is: whether it runs jobs, or deletes beyond
    its keys, can depend on its block (adt: twins or purge). A constructor makes no
    call, and an unused client holds no connection. None when it cannot be built: the
    run reports what keeps it from being built."""
    if built is None:
        return None
    from connectors.contract import ConnectorError

    kind, settings = built
    factory = registry.get(kind).build_target
    assert factory is not None, "a validated target block has a factory"
    try:
        return factory(target.connection, connections[target.connection], settings)
    except ConnectorError:
        return None


def _concurrency_problem(
    built: tuple[str, Any] | None, target: RawTarget, probe: object | None
) -> str | None:
    """`concurrency` pipelines the batches of a synchronous target; a job target is
    refused it rather than silently ignoring it (its submissions already return at once,
    and its jobs stay open between polls)."""
    if built is None or target.concurrency == 1:
        return None
    from connectors.contract import AsyncTarget

    if not isinstance(probe, AsyncTarget):
        return None
    return (
        f"a {built[0]} target of this kind runs asynchronous jobs, which are submitted "
        "without waiting for them; concurrency applies to synchronous targets only: remove it"
    )


def _unscoped(probe: object | None) -> str:
    """How far beyond its keys this target deletes ("" when it deletes by key)."""
    from connectors.contract import Unscoped

    return probe.unscoped if isinstance(probe, Unscoped) else ""


UNGUARDABLE = {
    "legal_hold": "a held key would be deleted with everything else",
    "max_per_run": "a count of deliveries cannot bound what one delivery deletes",
    "max_per_hour": "a count of deliveries cannot bound what one delivery deletes",
    "max_fraction": "a count of deliveries cannot bound what one delivery deletes",
}
"""The guards that weigh keys or count deliveries, and why each fails on an unscoped
target; what does guard a purge is its own confirmation and trigger keys."""


def _unguardable(probe: object | None, target: RawTarget, where: Path) -> list[ConfigIssue]:
    how = _unscoped(probe)
    if not how:
        return []
    return [
        ConfigIssue(
            (*where, "guard", name),
            f"this target is {how}, so {name} cannot hold ({why}); remove it "
            "(the purge is guarded by confirm_purge and trigger_keys)",
        )
        for name, why in UNGUARDABLE.items()
        if getattr(target.guard, name) is not None
    ]


def _chains_on_unscoped(
    pipelines: Mapping[str, PipelineConfig], unscoped: Mapping[tuple[str, str], str]
) -> list[ConfigIssue]:
    """A chain hands on what its upstream target really deleted; a target that deletes
    beyond its keys cannot say what that was, so nothing may be chained on it."""
    issues: list[ConfigIssue] = []
    for name, pipe in pipelines.items():
        ref = pipe.source.chain
        if ref is None:
            continue
        how = unscoped.get((ref.pipeline, ref.target), "")
        if how:
            issues.append(
                ConfigIssue(
                    ("pipelines", name, "source", "target"),
                    f"{ref.describe()} is {how}, so what it deleted cannot be listed "
                    "and handed on; chain on a target that deletes records by key",
                )
            )
    return issues


def _source(
    connections: Mapping[str, Any],
    raw: RawConfig,
    pipe_name: str,
    source: RawSource,
    where: Path,
    issues: list[ConfigIssue],
) -> SourceConfig | None:
    """A connection's source block, or a chain: another pipeline's target."""
    chained = source.pipeline is not None or source.target is not None
    if chained:
        if source.connection is not None or source.follow_jobs_of is not None:
            key = "connection" if source.connection is not None else "follow_jobs_of"
            issues.append(
                ConfigIssue(
                    (*where, key),
                    "a chained source reads another pipeline's target; write either "
                    "{pipeline: P, target: T} or {connection: C, ...}, not both",
                )
            )
            return None
        if source.model_extra:
            extra = ", ".join(sorted(source.model_extra))
            issues.append(
                ConfigIssue(
                    where,
                    f"a chained source takes only 'pipeline' and 'target'; remove {extra}",
                )
            )
            return None
        ref = _target_ref(raw, pipe_name, source.pipeline, source.target, where, issues)
        if ref is None:
            return None
        return SourceConfig(connection=None, connection_type=CHAIN, chain=ref)
    if source.connection is None:
        issues.append(
            ConfigIssue(
                (*where, "connection"),
                "required: a connection to read deletions from, or pipeline and target to "
                "chain on another pipeline's target",
            )
        )
        return None
    follow = source.follow_jobs_of
    if follow is not None:
        ref = _target_ref(
            raw, pipe_name, follow.pipeline, follow.target, (*where, "follow_jobs_of"), issues
        )
        if ref is None:
            return None
        theirs = raw.pipelines[ref.pipeline].targets[ref.target].connection
        if theirs != source.connection:
            issues.append(
                ConfigIssue(
                    (*where, "follow_jobs_of"),
                    f"{ref.describe()} deletes through connection {theirs!r}, but this source "
                    f"reads {source.connection!r}; a source can only follow the jobs of a "
                    "target on its own connection",
                )
            )
            return None
    block = _block(
        connections,
        raw.connections,
        source.connection,
        source.model_extra or {},
        where,
        "source",
        issues,
    )
    if block is None:
        return None
    if follow is not None and not load_registry().get(block[0]).task_source:
        issues.append(
            ConfigIssue(
                (*where, "follow_jobs_of"),
                f"a {block[0]} source reads no tasks, so it cannot follow jobs; remove "
                "follow_jobs_of (chain on the target with {pipeline: P, target: T} instead)",
            )
        )
        return None
    return SourceConfig(
        connection=source.connection,
        connection_type=block[0],
        settings=block[1],
        follow_jobs_of=follow,
    )


def _target_ref(
    raw: RawConfig,
    pipe_name: str,
    pipeline: str | None,
    target: str | None,
    where: Path,
    issues: list[ConfigIssue],
) -> TargetRef | None:
    if pipeline is None or target is None:
        missing = "pipeline" if pipeline is None else "target"
        issues.append(
            ConfigIssue(
                (*where, missing),
                "required key is missing; write {pipeline: P, target: T} naming another "
                "pipeline and one of its targets",
            )
        )
        return None
    if pipeline == pipe_name:
        issues.append(ConfigIssue((*where, "pipeline"), "a pipeline cannot read its own target"))
        return None
    upstream: RawPipeline | None = raw.pipelines.get(pipeline)
    if upstream is None:
        known = ", ".join(sorted(p for p in raw.pipelines if p != pipe_name)) or "none"
        issues.append(
            ConfigIssue((*where, "pipeline"), f"no pipeline named {pipeline!r}; defined: {known}")
        )
        return None
    if target not in upstream.targets:
        issues.append(
            ConfigIssue(
                (*where, "target"),
                f"pipeline {pipeline} has no target {target!r}; its targets: "
                f"{', '.join(upstream.targets)}",
            )
        )
        return None
    return TargetRef(pipeline=pipeline, target=target)


def _loops(pipelines: Mapping[str, PipelineConfig]) -> list[ConfigIssue]:
    """Chained pipelines must form no loop: each hop's deletions would feed themselves."""
    issues: list[ConfigIssue] = []
    reported: set[frozenset[str]] = set()

    def walk(name: str, path: list[str]) -> None:
        pipe = pipelines.get(name)
        if pipe is None:
            return
        for upstream in pipe.source.upstream():
            if upstream in path:
                loop = [*path[path.index(upstream) :], upstream]
                if frozenset(loop) not in reported:
                    reported.add(frozenset(loop))
                    issues.append(
                        ConfigIssue(
                            ("pipelines", loop[0], "source"),
                            "pipelines read each other in a loop: "
                            + " -> ".join(reversed(loop))
                            + "; break the chain at one of them",
                        )
                    )
                continue
            walk(upstream, [*path, upstream])

    for name in pipelines:
        walk(name, [name])
    return issues


def _shared_server_cursors(
    pipelines: Mapping[str, PipelineConfig], connections: Mapping[str, Any]
) -> list[ConfigIssue]:
    """One reader per server-side cursor: a second one would split its answers, and one of
    the two would read nothing, forever, reporting success."""
    issues: list[ConfigIssue] = []
    readers: dict[tuple[str, ...], str] = {}
    for name, pipe in pipelines.items():
        settings, connection = pipe.source.settings, pipe.source.connection
        if connection is None or not isinstance(settings, ConsumesServerCursors):
            continue
        for cursor in settings.server_cursors(connections[connection]):
            first = readers.setdefault(cursor.identity, name)
            if first != name:
                issues.append(
                    ConfigIssue(
                        ("pipelines", name, "source"),
                        f"pipelines {first} and {name} both read {cursor.description}; each "
                        "call moves it for both, so one would miss deletions the other took. "
                        f"Read it from one pipeline with several targets, or {cursor.instead} "
                        "in one of them",
                    )
                )
    return issues


def run_order(pipelines: Mapping[str, PipelineConfig]) -> list[str]:
    """Pipeline names with every upstream before the pipelines reading it, otherwise in
    the file's order, so one `run --once` carries a deletion through a whole chain."""
    ordered: list[str] = []

    def visit(name: str, seen: frozenset[str]) -> None:
        if name in ordered or name in seen or name not in pipelines:
            return
        for upstream in pipelines[name].source.upstream():
            visit(upstream, seen | {name})
        ordered.append(name)

    for name in pipelines:
        visit(name, frozenset())
    return ordered


def _block(
    connections: Mapping[str, Any],
    raw_connections: Mapping[str, Any],
    connection: str,
    extra: Mapping[str, Any],
    where: Path,
    role: str,
    issues: list[ConfigIssue],
) -> tuple[str, Any] | None:
    """Validate a pipeline's source or target block against its connector's model."""
    if connection not in raw_connections:
        known = ", ".join(sorted(raw_connections)) or "none"
        issues.append(
            ConfigIssue((*where, "connection"), f"no connection of that name; defined: {known}")
        )
        return None
    settings_owner = connections.get(connection)
    if settings_owner is None:
        return None  # the connection itself is invalid and already reported
    registry = load_registry()
    kind = str(settings_owner.type)
    info = registry.get(kind)
    model = info.source_settings if role == "source" else info.target_settings
    if model is None:
        can = [
            n
            for n in registry.names()
            if (
                registry.get(n).source_settings
                if role == "source"
                else registry.get(n).target_settings
            )
        ]
        issues.append(
            ConfigIssue(
                (*where, "connection"),
                f"connection {connection!r} is of type {kind}, which cannot be a {role}; "
                f"{role} types: {', '.join(can)}",
            )
        )
        return None
    reserved = ENGINE_SOURCE_KEYS if role == "source" else ENGINE_TARGET_KEYS
    block = {k: v for k, v in extra.items() if k not in reserved}
    try:
        settings = model.model_validate(
            block, context={"connection": settings_owner, "connection_name": connection}
        )
    except ValidationError as exc:
        issues.extend(_pydantic_issues(exc, where, model))
        return None
    return kind, settings
