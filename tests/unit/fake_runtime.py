"""One pipeline with one target "t", built around a fake target, for engine tests that
drive push or the job runner without a configuration file or a source."""

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
from syncengine.engine.runtime import PipelineRuntime, TargetRuntime


def fake_runtime(
    target: Any, rule: RetryRule | None = None
) -> tuple[PipelineRuntime, TargetRuntime]:
    spec = TargetConfig(
        name="t",
        connection="c",
        connection_type="fake",
        retry=DeliveryRetry(),
        jobs=JobSettings(),
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
    pipe = PipelineRuntime("p", config, source=None, targets={"t": target_runtime})  # type: ignore[arg-type]
    return pipe, target_runtime
