"""Session fixtures for the broker-queue family: one RabbitMQ node and one ActiveMQ broker
per test session (each takes seconds to start), skipped with a reason where the machine
lacks the Debian package.

Not a conftest.py: tests/ has no packages, so a second conftest.py would take the module
name `conftest` from tests/conftest.py, which other tests import from. The test modules
load them with `pytest_plugins = ["mq_fixtures"]` instead."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from brokers import Broker, BrokerMissing, start_activemq, start_rabbitmq


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
