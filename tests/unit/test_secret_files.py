"""`${file:PATH}`: a Docker or Kubernetes secret mounted as a file, read into the YAML
like an environment variable, redacted like every other secret, and refused when it is
missing or readable by every user."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine.config import ConfigError, load_config
from tests.unit.test_config import VALID

SECRET = "file-secret-0123456789"


def write(folder: Path, secret_line: str, mode: int = 0o600) -> Path:
    secret = folder / "goose_key"
    secret.write_text(secret_line, encoding="utf-8")
    secret.chmod(mode)
    config = folder / "c.yaml"
    config.write_text(VALID.replace("${GOOSE_KEY}", "${file:goose_key}"), encoding="utf-8")
    return config


def problems(config: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(config, env={})
    return [issue.render(str(config)) for issue in info.value.issues]


def test_a_secret_file_is_read_without_its_trailing_newline_and_is_redacted(
    tmp_path: Path,
) -> None:
    config = load_config(write(tmp_path, SECRET + "\n"), env={})
    assert config.connections["goose"].key.get_secret_value() == SECRET
    assert SECRET in config.secrets, "scrubbed from logs and errors like any secret"
    assert SECRET not in repr(config.connections["goose"])


def test_an_absolute_path_works_from_anywhere(tmp_path: Path) -> None:
    config_path = write(tmp_path, SECRET)
    text = config_path.read_text("utf-8").replace(
        "${file:goose_key}", f"${{file:{tmp_path}/goose_key}}"
    )
    config_path.write_text(text, "utf-8")
    assert load_config(config_path, env={}).connections["goose"].key.get_secret_value() == SECRET


def test_a_missing_secret_file_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    config = write(tmp_path, SECRET)
    (tmp_path / "goose_key").unlink()
    (issue,) = problems(config)
    assert "connections.goose.key" in issue
    assert f"secret file {tmp_path / 'goose_key'} does not exist" in issue


def test_a_world_readable_secret_file_is_refused_without_showing_it(tmp_path: Path) -> None:
    (issue,) = problems(write(tmp_path, SECRET, mode=0o644))
    assert "connections.goose.key" in issue
    assert "readable by every user (mode 0644); chmod o-r it" in issue
    assert SECRET not in issue
