"""Session fixtures for the broker-queue family: one RabbitMQ node and one ActiveMQ broker
per test session (each takes seconds to start), skipped with a reason where the machine
lacks the Debian package."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from brokers import Broker, BrokerMissing, start_activemq, start_rabbitmq  # noqa: E402


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[Broker]:
    try:
        broker = start_rabbitmq()
    except BrokerMissing as exc:
        pytest.skip(str(exc))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def activemq() -> Iterator[Broker]:
    try:
        broker = start_activemq()
    except BrokerMissing as exc:
        pytest.skip(str(exc))
    try:
        yield broker
    finally:
        broker.stop()
