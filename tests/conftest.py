"""Fixtures shared by every test directory (no real broker here: see integration/)."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# `devtools` and `tests.support` are imported from the checkout, which pytest's default
# import mode does not put on sys.path by itself.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pyrallel._mock import MockCluster  # noqa: E402


def _unique_name(request: pytest.FixtureRequest, prefix: str) -> str:
    test = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-")[:40]
    return f"{prefix}-{test}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name(prefix) -> str``: random, Kafka-legal, and names the test (for logs)."""
    return lambda prefix: _unique_name(request, prefix)


@pytest.fixture
def group_id(unique_name: Callable[[str], str]) -> str:
    return unique_name("g")


@pytest.fixture
def mock_cluster() -> Iterator[str]:
    """Bootstrap servers ("host:port,...") of a fresh 3-broker librdkafka mock cluster."""
    with MockCluster(brokers=3) as cluster:
        yield cluster.bootstrap


# The real-broker fixtures (one broker per session, shared by every test directory).
pytest_plugins = ["tests.support.broker_fixtures"]
