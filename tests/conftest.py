"""Shared fixtures: a private PostgreSQL cluster, real RTSP test cameras, daemons to stop at teardown."""

from collections.abc import Iterator

import pytest
from util import DaemonProc

pytest_plugins = ["fixtures_pg", "fixtures_cam", "fixtures_storage", "fixtures_sources", "fixtures_s3"]


@pytest.fixture
def daemons() -> Iterator[list[DaemonProc]]:
    """Append each ``DaemonProc`` you start; every one is stopped at teardown, whatever happened."""
    made: list[DaemonProc] = []
    yield made
    for d in made:
        d.stop()
