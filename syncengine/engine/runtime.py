"""Runtime objects built from a validated `Config`: the store, sources and targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from connectors import load_registry
from connectors.contract import AsyncTarget, Capabilities, Source, Target, TaskSource
from state import RetryRule, Store
from syncengine.config import Config, PipelineConfig, TargetConfig
from syncengine.config.loader import run_order
from syncengine.engine.chain import ChainSource


@dataclass
class TargetRuntime:
    name: str
    connection: str
    target: Target | AsyncTarget
    rule: RetryRule
    config: TargetConfig
    capabilities: Capabilities = field(default_factory=Capabilities)
    """What the registry entry declares `target` can do besides sending."""

    @property
    def concurrency(self) -> int:
        """Batches push keeps in flight at once (`concurrency` of the target's block)."""
        return self.config.concurrency


@dataclass
class PipelineRuntime:
    name: str
    config: PipelineConfig
    source: Source
    targets: dict[str, TargetRuntime] = field(default_factory=dict)
    lease: float = 30.0
    """Seconds the pipeline's lease lasts unrenewed (`state.lease`)."""

    async def aclose(self) -> None:
        """Its source's and targets' clients (a reload closes a replaced pipeline alone)."""
        await self.source.aclose()
        for target in self.targets.values():
            await target.target.aclose()


@dataclass
class Runtime:
    config: Config
    store: Store
    pipelines: dict[str, PipelineRuntime]

    async def aclose(self) -> None:
        for pipe in self.pipelines.values():
            await pipe.aclose()
        self.store.close()


def build_source(config: Config, pipeline: PipelineConfig, store: Store) -> Source:
    src = pipeline.source
    if src.chain is not None:
        return ChainSource(pipeline.name, src.chain, store)
    assert src.connection is not None, "validated config: a chain or a connection"
    info = load_registry().get(src.connection_type)
    assert info.build_source is not None, "validated config guarantees a source type"
    source = info.build_source(src.connection, config.connections[src.connection], src.settings)
    assert src.follow_jobs_of is None or isinstance(source, TaskSource), (
        "validated config: only a task source follows jobs"
    )
    return source


async def follow_tasks(
    config: Config, pipeline: str, store: Store, task_ids: Sequence[str]
) -> list[tuple[str, bool]]:
    """Have a task-source pipeline read these tasks from its next run on: per id, its
    stream and whether it is new. ValueError, for the operator, when the pipeline reads
    no tasks or an id names none (nothing is registered then)."""
    pipe = config.pipelines[pipeline]
    source = build_source(config, pipe, store)
    try:
        if not isinstance(source, TaskSource):
            raise ValueError(
                f"pipeline {pipeline} reads a {pipe.source.connection_type} source, which has "
                "no tasks to follow; follow works for pipelines reading DMM executions or "
                "Reltio tasks"
            )
        streams = [source.task_stream(task_id.strip()) for task_id in task_ids]
    finally:
        await source.aclose()
    return [(stream, store.register_stream(pipeline, stream)) for stream in streams]


def build_pipeline(config: Config, pipeline: PipelineConfig, store: Store) -> PipelineRuntime:
    registry = load_registry()
    source = build_source(config, pipeline, store)
    targets: dict[str, TargetRuntime] = {}
    for name, spec in pipeline.targets.items():
        info = registry.get(spec.connection_type)
        assert info.build_target is not None, "validated config guarantees a target type"
        targets[name] = TargetRuntime(
            name=name,
            connection=spec.connection,
            target=info.build_target(
                spec.connection, config.connections[spec.connection], spec.settings
            ),
            rule=RetryRule(
                max_attempts=spec.retry.max_attempts,
                base_delay=spec.retry.backoff,
                max_delay=spec.retry.max_backoff,
            ),
            config=spec,
            capabilities=info.capabilities,
        )
    return PipelineRuntime(
        name=pipeline.name,
        config=pipeline,
        source=source,
        targets=targets,
        lease=config.state.lease,
    )


def build_runtime(config: Config, store: Store, only: str | None = None) -> Runtime:
    pipelines = {
        name: build_pipeline(config, config.pipelines[name], store)
        for name in run_order(config.pipelines)
        if (only is None and config.pipelines[name].enabled) or name == only
    }
    return Runtime(config=config, store=store, pipelines=pipelines)
