"""The engine: pull into the journal, push deliveries, one pipeline run at a time."""

from __future__ import annotations

from syncengine.engine.pipeline import RunReport, run_pipeline
from syncengine.engine.runtime import PipelineRuntime, Runtime, TargetRuntime, build_runtime
from syncengine.engine.stop import StopToken

__all__ = [
    "PipelineRuntime",
    "RunReport",
    "Runtime",
    "StopToken",
    "TargetRuntime",
    "build_runtime",
    "run_pipeline",
]
