"""Configuration: one TOML file plus environment overrides for secrets, read once at start-up.

Library code never reads the environment; ``load_settings`` does, and passes the result down.
Unknown keys or bad values raise ``ConfigError`` with a message naming the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    api_keys: list[SecretStr] = Field(default_factory=list)
    database_url: str | None = None  # default: sqlite:///<data_dir>/respond.db
    max_body_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    max_file_bytes: int = Field(default=512 * 1024 * 1024, gt=0)  # one upload to POST /files
    retention_days: float = Field(default=30, gt=0)
    background_workers: int = Field(default=8, ge=0, le=1024)  # concurrent background jobs
    job_lease_seconds: float = Field(default=30, ge=1)  # a silent worker is declared dead after
    # seals MCP credentials of background jobs in the database; every replica needs the same
    # one. Default: a random key kept in <data-dir>/secret.key
    secret_key: SecretStr | None = None


class NetworkSettings(_Strict):
    """Where server-side fetches (MCP servers, image and file URLs) may go besides public
    addresses: CIDR networks or host names."""

    allow: list[str] = Field(default_factory=list)

    @field_validator("allow")
    @classmethod
    def _valid_entries(cls, v: list[str]) -> list[str]:
        from respond.network import EgressPolicy

        EgressPolicy(v)  # raises ValueError naming a bad entry
        return v


class LlamaCppModel(_Strict):
    """The embedded llama.cpp engine; ``path`` defaults to the bundled SmolLM2-135M-Instruct."""

    backend: Literal["llamacpp"]
    path: Path | None = None
    context: int = Field(default=8192, ge=256)
    parallel: int = Field(default=4, ge=1, le=64)
    threads: int | None = Field(default=None, ge=1)


class OpenAIModel(_Strict):
    """Any OpenAI-compatible Chat Completions server."""

    backend: Literal["openai"]
    base_url: str
    api_key: SecretStr | None = None
    model: str | None = None
    vision: bool = False
    timeout: float = Field(default=120, gt=0)
    context: int | None = Field(default=None, ge=256)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/")


ModelConfig = Annotated[LlamaCppModel | OpenAIModel, Field(discriminator="backend")]


class Settings(_Strict):
    server: ServerSettings = Field(default_factory=ServerSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    data_dir: Path = Path("data")

    def database_url(self) -> str:
        return self.server.database_url or f"sqlite:///{self.data_dir / 'respond.db'}"

    def model_configs(self) -> dict[str, LlamaCppModel | OpenAIModel]:
        if self.models:
            return dict(self.models)
        return {DEFAULT_MODEL_NAME: LlamaCppModel(backend="llamacpp")}


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        # drop discriminator tags pydantic inserts into the location
        loc = re.sub(r"\.(llamacpp|openai)(?=\.|$)", "", loc)
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{loc}: {msg}")
    return "invalid configuration: " + "; ".join(lines)


def _env_name(model: str) -> str:
    return "RESPOND_MODEL_" + re.sub(r"[^A-Za-z0-9]", "_", model).upper() + "_API_KEY"


def build_settings(
    raw: dict[str, Any], env: dict[str, str] | None = None, data_dir: Path | None = None
) -> Settings:
    """Validate a config mapping, applying environment overrides for secrets.

    ``RESPOND_API_KEYS`` (comma-separated) replaces ``server.api_keys``;
    ``RESPOND_DATABASE_URL`` replaces ``server.database_url``;
    ``RESPOND_SECRET_KEY`` replaces ``server.secret_key``;
    ``RESPOND_MODEL_<NAME>_API_KEY`` sets the ``api_key`` of model NAME.
    """
    env = env or {}
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    server = raw.setdefault("server", {})
    if not isinstance(server, dict):
        raise ConfigError("invalid configuration: server: must be a table")
    if env.get("RESPOND_API_KEYS"):
        server["api_keys"] = [k.strip() for k in env["RESPOND_API_KEYS"].split(",") if k.strip()]
    if env.get("RESPOND_DATABASE_URL"):
        server["database_url"] = env["RESPOND_DATABASE_URL"]
    if env.get("RESPOND_SECRET_KEY"):
        server["secret_key"] = env["RESPOND_SECRET_KEY"]
    models = raw.get("models") or {}
    if isinstance(models, dict):
        raw["models"] = {
            name: (
                {**cfg, "api_key": env[_env_name(name)]}
                if isinstance(cfg, dict) and env.get(_env_name(name))
                else cfg
            )
            for name, cfg in models.items()
        }
    if data_dir is not None:
        raw["data_dir"] = data_dir
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_settings(config_file: Path | None, data_dir: Path | None) -> Settings:
    raw: dict[str, Any] = {}
    if config_file is not None:
        try:
            raw = tomllib.loads(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
    return build_settings(raw, dict(os.environ), data_dir)
