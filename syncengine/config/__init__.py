"""Configuration: one YAML file, validated into typed models before anything runs."""

from __future__ import annotations

from syncengine.config.loader import ConfigError, ConfigIssue, load_config, parse_config
from syncengine.config.models import (
    Config,
    DeliveryRetry,
    JobSettings,
    PipelineConfig,
    Schedule,
    SourceConfig,
    TargetConfig,
    TargetRef,
)

__all__ = [
    "Config",
    "ConfigError",
    "ConfigIssue",
    "DeliveryRetry",
    "JobSettings",
    "PipelineConfig",
    "Schedule",
    "SourceConfig",
    "TargetConfig",
    "TargetRef",
    "load_config",
    "parse_config",
]
