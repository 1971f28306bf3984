"""Configuration: defaults, environment overrides for secrets, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from respond.settings import (
    DEFAULT_MODEL_NAME,
    ConfigError,
    LlamaCppModel,
    OpenAIModel,
    build_settings,
)


def test_no_config_serves_the_embedded_model_on_sqlite(tmp_path: Path) -> None:
    settings = build_settings({}, {}, tmp_path)
    models = settings.model_configs()
    assert list(models) == [DEFAULT_MODEL_NAME]
    assert isinstance(models[DEFAULT_MODEL_NAME], LlamaCppModel)
    assert settings.database_url() == f"sqlite:///{tmp_path / 'respond.db'}"
    assert settings.server.max_body_bytes == 50 * 1024 * 1024
    assert settings.server.retention_days == 30


def test_environment_overrides_secrets() -> None:
    raw = {"models": {"big-one": {"backend": "openai", "base_url": "http://h:1/v1/"}}}
    env = {"RESPOND_API_KEYS": "a, b", "RESPOND_DATABASE_URL": "postgresql://x/y",
           "RESPOND_MODEL_BIG_ONE_API_KEY": "hunter2"}
    settings = build_settings(raw, env)
    assert [k.get_secret_value() for k in settings.server.api_keys] == ["a", "b"]
    assert settings.database_url() == "postgresql://x/y"
    model = settings.models["big-one"]
    assert isinstance(model, OpenAIModel)
    assert model.api_key is not None and model.api_key.get_secret_value() == "hunter2"
    assert model.base_url == "http://h:1/v1"
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(("raw", "named"), [
    ({"servr": {}}, "servr: unknown key"),
    ({"server": {"api_keys": "k"}}, "server.api_keys"),
    ({"models": {"m": {"backend": "openai"}}}, "models.m.base_url"),
    ({"models": {"m": {"backend": "llamacpp", "context": 10}}}, "models.m.context"),
    ({"models": {"m": {"backend": "vllm"}}}, "models.m"),
    ({"network": {"allow": "10.0.0.0/8"}}, "network.allow"),
])
def test_bad_configuration_names_the_key(raw: dict, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_settings(raw)
    assert named in str(caught.value)
