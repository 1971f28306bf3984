"""Shared fixtures: real servers on loopback ports, driven with the official ``openai`` SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import RunningServer, serve


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The zero-configuration server: SQLite and the bundled embedded model."""
    with serve({}, tmp_path_factory.mktemp("embedded")) as server:
        yield server
