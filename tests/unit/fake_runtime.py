"""One pipeline with one target "t", built around a fake target (and a fake source, for
tests that run the whole pipeline), without a configuration file."""

from __future__ import annotations

from typing import Any

from state import RetryRule
from syncengine.config import (
    DeliveryRetry,
    JobSettings,
    PipelineConfig,
    Schedule,
    SourceConfig,
    TargetConfig,
)
from syncengine.config.models import GuardSettings
from syncengine.engine.runtime import PipelineRuntime, TargetRuntime


def fake_runtime(
    target: Any,
    rule: RetryRule | None = None,
    *,
    source: Any = None,
    guard: GuardSettings | None = None,
) -> tuple[PipelineRuntime, TargetRuntime]:
    spec = TargetConfig(
        name="t",
        connection="c",
        connection_type="fake",
        retry=DeliveryRetry(),
        jobs=JobSettings(),
        guard=guard or GuardSettings(),
        settings=None,
    )
    config = PipelineConfig(
        name="p",
        schedule=Schedule(every=60),
        enabled=True,
        source=SourceConfig(connection="c", connection_type="fake", settings=None),
        targets={"t": spec},
    )
    target_runtime = TargetRuntime("t", "c", target, rule or RetryRule(), spec)
    pipe = PipelineRuntime("p", config, source=source, targets={"t": target_runtime})
    return pipe, target_runtime
