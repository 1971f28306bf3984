"""The command line: refusals that protect a new user, and configuration errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "respond", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_refuses_a_public_address_without_api_keys(tmp_path: Path) -> None:
    result = run("serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path))
    assert result.returncode != 0
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "--insecure" in result.stderr


def test_unknown_config_key_stops_start_up_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "respond.toml"
    config.write_text('[server]\napi_keys = ["k"]\ncolour = "blue"\n')
    result = run("serve", "--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "server.colour: unknown key" in result.stderr


def test_bad_model_value_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "respond.toml"
    config.write_text('[models.big]\nbackend = "openai"\nbase_url = "not a url"\n')
    result = run("serve", "--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "models.big.base_url" in result.stderr


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "respond.toml"
    config.write_text("[server\n")
    result = run("serve", "--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr
