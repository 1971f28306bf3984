"""The ``respond`` command line: ``respond serve``."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from respond.settings import ConfigError, load_settings

log = logging.getLogger("respond")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


# A young collection every 50,000 net allocations instead of 700: one request over a long
# conversation builds tens of thousands of objects (its items as dicts), and with the default
# the collector ran dozens of times per request, each pass scanning every live object.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Collector settings for serving: objects that exist before serving (modules, settings,
    the app) are frozen out of every collection, and collections run less often."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="respond", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the Responses API server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--data-dir", type=Path, default=Path("data"),
                       help="where the SQLite database and files live (default: ./data)")
    serve.add_argument("--config", type=Path, default=None, help="a TOML configuration file")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback address with no API keys configured")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes sharing the port (default 1); more than one "
                            "needs every model on an upstream backend")
    return parser


# how ``respond serve --workers N`` tells its worker processes what to load
_WORKER_CONFIG = "RESPOND_SERVE_CONFIG"
_WORKER_DATA_DIR = "RESPOND_SERVE_DATA_DIR"


def worker_app() -> Any:
    """The app of one worker process of ``respond serve --workers N`` (a uvicorn factory)."""
    from respond.app import create_app

    config = os.environ.get(_WORKER_CONFIG)
    settings = load_settings(Path(config) if config else None,
                             Path(os.environ[_WORKER_DATA_DIR]))
    app = create_app(settings)
    tune_gc()
    return app


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config, args.data_dir)
    except ConfigError as exc:
        print(f"respond: {exc}", file=sys.stderr)
        return 2
    if not settings.server.api_keys and not _is_loopback(args.host) and not args.insecure:
        print(
            f"respond: refusing to listen on {args.host} with no API keys configured: anyone "
            "who can reach it could use it. Set [server] api_keys (or RESPOND_API_KEYS), "
            "bind to 127.0.0.1, or pass --insecure.",
            file=sys.stderr,
        )
        return 2

    if args.workers < 1:
        print("respond: --workers must be at least 1.", file=sys.stderr)
        return 2
    embedded = sorted(name for name, model in settings.model_configs().items()
                      if model.backend == "llamacpp")
    if args.workers > 1 and embedded:
        print(
            f"respond: --workers {args.workers} needs every model on an upstream backend: "
            f"each worker process would load its own copy of the embedded model(s) "
            f"{', '.join(embedded)} and they would fight over the same cores. Serve embedded "
            "models with one worker (it runs generations in parallel slots).",
            file=sys.stderr,
        )
        return 2

    import uvicorn

    from respond.app import create_app
    from respond.http.corking import CorkedHttpToolsProtocol

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # no proxy-headers middleware: nothing in respond depends on the client's address
    options: dict[str, Any] = {
        "host": args.host, "port": args.port, "log_level": args.log_level,
        "access_log": False, "proxy_headers": False, "http": CorkedHttpToolsProtocol,
        "timeout_graceful_shutdown": 10,
    }
    if args.workers > 1:
        # each worker builds its own app (its own store connections, background worker and
        # upstream sessions) from the same configuration; uvicorn shares the socket
        if args.config is not None:
            os.environ[_WORKER_CONFIG] = str(args.config.resolve())
        os.environ[_WORKER_DATA_DIR] = str(args.data_dir.resolve())
        uvicorn.run("respond.cli:worker_app", factory=True, workers=args.workers, **options)
        return 0
    app = create_app(settings)
    tune_gc()
    uvicorn.run(app, **options)
    return 0
