"""The command line: refusals that protect a new user, and configuration errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "respond", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


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


def test_several_workers_need_upstream_models(tmp_path: Path) -> None:
    result = run("serve", "--workers", "2", "--data-dir", str(tmp_path))  # embedded default
    assert result.returncode == 2
    assert "--workers 2 needs every model on an upstream backend" in result.stderr
    assert run("serve", "--workers", "0", "--data-dir", str(tmp_path)).returncode == 2


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_several_workers_serve_one_port_and_share_state(tmp_path: Path) -> None:
    import concurrent.futures
    import signal
    import socket
    import time

    import openai

    from respond.testing.upstream import UpstreamServer

    with UpstreamServer() as upstream, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        config = tmp_path / "respond.toml"
        config.write_text(f'[models.up]\nbackend = "openai"\nbase_url = "{upstream.base_url}"\n')
        server = subprocess.Popen(
            [sys.executable, "-m", "respond", "serve", "--workers", "2", "--port", str(port),
             "--config", str(config), "--data-dir", str(tmp_path / "data"),
             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                                   max_retries=0, timeout=10)
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.models.list()
                    break
                except openai.APIConnectionError:
                    assert time.monotonic() < deadline, "respond did not start"
                    time.sleep(0.2)
            workers = _children(server.pid)
            assert len(workers) >= 2  # the workers (uvicorn may add a helper process)
            before = {pid: _cpu_ticks(pid) for pid in workers}

            def chain(n: int) -> bool:
                # fresh connections, so turns land on either worker
                fresh = client.with_options(http_client=None)
                first = fresh.responses.create(model="up", input=f"turn one of {n}")
                second = fresh.responses.create(model="up", input="and then?",
                                                previous_response_id=first.id)
                again = fresh.responses.retrieve(second.id)
                return again.previous_response_id == first.id and again.status == "completed"

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                assert all(pool.map(chain, range(40)))
            assert len(upstream.requests) == 80
            busy = [pid for pid in workers if _cpu_ticks(pid) - before[pid] >= 5]
            assert len(busy) >= 2, "the requests did not spread over the workers"
        finally:
            server.send_signal(signal.SIGINT)
            assert server.wait(timeout=30) == 0, server.stderr.read().decode() if server.stderr else ""
