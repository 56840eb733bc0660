"""Fixtures: a fresh replyd per test (it starts in tens of milliseconds),
killed at the end of the test whatever happens."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, List

import pytest

import replyd
from support import DEFAULT_CONFIG, ReplydServer

MakeServer = Callable[..., ReplydServer]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[MakeServer]:
    """Starts a replyd with the given config (default: the ``work`` and
    ``other`` pull queues and the ``demo`` queue) in a directory of its own."""
    started: List[ReplydServer] = []

    def make(config: str = DEFAULT_CONFIG) -> ReplydServer:
        home = tmp_path / f"replyd{len(started)}"
        home.mkdir()
        server = ReplydServer(home, config)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: MakeServer) -> ReplydServer:
    """A replyd with the default config."""
    return make_server()


@pytest.fixture
def client(server: ReplydServer) -> Iterator[replyd.Client]:
    """A client of ``server``."""
    with replyd.Client(server.url, timeout=30) as c:
        yield c
